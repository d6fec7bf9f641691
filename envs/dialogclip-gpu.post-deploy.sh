#!/usr/bin/env bash
# Run by Snakemake inside the new dialogclip-gpu conda environment, once, after it is created:
# install this checkout without dependencies (see dialogclip-gpu.yaml for why). Snakemake copies
# this script into .snakemake/conda/, so the repository is found through DIALOGCLIP_ROOT.
set -euo pipefail
: "${DIALOGCLIP_ROOT:?DIALOGCLIP_ROOT must name the repository root (the workflow exports it)}"
python -m pip install --no-deps -e "$DIALOGCLIP_ROOT"
python -c "import dialogclip, torch, vllm"
