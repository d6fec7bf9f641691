#!/usr/bin/env bash
# Debian packages that some make targets need beyond .venv, installed when missing:
#   bash scripts/system_deps.sh chromium   # `make test`: the report's HTML test drives
#                                          # /usr/bin/chromium with playwright (never
#                                          # `playwright install`)
#   bash scripts/system_deps.sh graphviz   # `make rulegraph`: graphviz's `dot`
# Installs with apt-get as root, or through `sudo -n` where that needs no password. Where it
# can do neither (or there is no apt-get), it installs nothing and stops with the one command
# to run. CHROMIUM overrides the browser's path (the tests' way to simulate a missing browser).
set -euo pipefail

present() {
    case "$1" in
        chromium) [[ -x ${CHROMIUM:-/usr/bin/chromium} ]] ;;
        graphviz) command -v dot >/dev/null 2>&1 ;;
        *) echo "system_deps.sh: unknown package '$1' (known: chromium, graphviz)" >&2; exit 2 ;;
    esac
}

missing=()
for name in "$@"; do
    present "$name" || missing+=("$name")
done
((${#missing[@]})) || exit 0

packages=("${missing[@]}" fonts-dejavu-core)
command_line="apt-get install -y --no-install-recommends ${packages[*]}"
give_up() {
    echo "make needs the Debian package(s) ${missing[*]}, which are missing and cannot be" \
        "installed from here ($1). Run, then retry: sudo $command_line" >&2
    exit 1
}

if [[ $(id -u) == 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    give_up "not root, and sudo needs a password or is missing"
fi
command -v apt-get >/dev/null 2>&1 || give_up "no apt-get on this machine"
echo "installing Debian package(s): ${packages[*]}" >&2
"${as_root[@]}" apt-get update -qq >/dev/null || give_up "apt-get update failed"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive $command_line -qq >/dev/null || give_up "apt-get install failed"
for name in "${missing[@]}"; do
    present "$name" || give_up "$name still missing after apt-get install"
done
