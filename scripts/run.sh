#!/usr/bin/env bash
# The documented way to run the workflow (`make demo`, `make run`, docs/cluster.md):
#   bash scripts/run.sh [SNAKEMAKE ARGS...]
# runs `snakemake ARGS` after clearing a stale lock left by a killed run, and refuses (exit 1)
# while another Snakemake is running on the same working directory
# (src/dialogclip/core/run_workflow.py says how both are detected).
# Python: $DIALOGCLIP_PYTHON when set; .venv-controller (scripts/setup_controller.sh) when the
# arguments ask for Slurm (the slurm workflow profile or --executor slurm); .venv otherwise.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

python=${DIALOGCLIP_PYTHON:-}
if [[ -z $python ]]; then
    python=$root/.venv/bin/python
    setup=scripts/setup.sh
    prev=""
    for arg in "$@"; do
        case "$prev $arg" in
            "--executor slurm" | "-e slurm" | *" --executor=slurm" | \
                "--workflow-profile slurm" | "--workflow-profile "*/slurm | \
                "--workflow-profile "*/slurm/ | *" --workflow-profile=slurm" | \
                *" --workflow-profile="*/slurm | *" --workflow-profile="*/slurm/)
                python=$root/.venv-controller/bin/python
                setup=scripts/setup_controller.sh
                ;;
        esac
        prev=$arg
    done
    if [[ ! -x $python ]]; then
        echo "run.sh: $python is missing: run 'bash $setup' first" >&2
        exit 1
    fi
fi
exec "$python" -m dialogclip.core.run_workflow "$@"
