#!/usr/bin/env bash
# Create (or refresh) .venv-controller: the environment that runs the Snakemake controller for
# cluster runs (Snakemake + snakemake-executor-plugin-slurm, exact pins in envs/controller.txt;
# why it is separate from .venv is written there). dialogclip's own code is made importable by
# a link to src/dialogclip, without installing its `dialogclip` command: the rules then find
# that command in the project's .venv (workflow/rules/common.smk), which scripts/setup.sh makes.
# Safe to rerun: it reinstalls only when envs/controller.txt or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/python_version.sh
source scripts/python_version.sh

VENV=${DIALOGCLIP_CONTROLLER_VENV:-.venv-controller}
STAMP="$VENV/.dialogclip-installed"
want=$(cat envs/controller.txt scripts/setup_controller.sh | sha256sum | cut -d' ' -f1)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi

# Before anything is downloaded: a supported interpreter (the same as scripts/setup.sh).
find_python
"$PYTHON" -m venv "$VENV"
pip_quiet() {
    # The machine's pip config lists local mirror folders that hold only some packages; pip warns
    # once per package it does not find there. Those lines are noise, everything else is shown.
    "$VENV/bin/python" -m pip --quiet "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
# --no-deps: exactly the pinned set; `pip check` below proves it is complete and consistent.
pip_quiet install --no-deps -r envs/controller.txt
# The package directory itself, linked (not src/ on the path): src/ may also hold the
# dialogclip.egg-info of .venv's editable install, whose requirements (torch, vLLM, numpy 2.3)
# are .venv's business; linked alone, the code imports and pip sees no such metadata.
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
ln -sfn "$PWD/src/dialogclip" "$site/dialogclip"
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -c "import snakemake_executor_plugin_slurm, dialogclip.core.config"
echo "$want" >"$STAMP"
echo "installed the Snakemake controller into $VENV" >&2
