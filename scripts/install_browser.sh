#!/usr/bin/env bash
# Debian's headless browser and graphviz for the report checks: chromium opens the Snakemake
# report in tests/report/test_report_html.py (driven by playwright with
# executable_path=/usr/bin/chromium; `playwright install` is never used), graphviz's `dot`
# renders the rule graph (`make rulegraph`). Needs root (CI runs as root). Skips what is there.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v dot >/dev/null 2>&1 || missing+=(graphviz)
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" fonts-dejavu-core
fi
chromium --version
dot -V
