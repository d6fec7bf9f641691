# Sourced by scripts/setup.sh and scripts/setup_controller.sh: the Python interpreter they build
# their virtual environment with, chosen and checked before anything is downloaded.
#
#   find_python            # sets PYTHON, or prints why not and exits 1
#
# Supported: CPython 3.11 and 3.12 (pyproject.toml's requires-python; current GPU images ship
# 3.12). $PYTHON, when set, is the only candidate; otherwise the first of python3.11, python3.12,
# python3 on PATH that is a supported version. Many wheels the install fetches (torch, vLLM: GBs)
# exist per Python version, so a wrong interpreter must fail here, not after the download.

SUPPORTED_PYTHONS=(3.11 3.12)

python_version_of() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null
}

find_python() {
    local candidates=() found=() candidate version supported
    if [[ -n ${PYTHON:-} ]]; then
        candidates=("$PYTHON")
    else
        candidates=(python3.11 python3.12 python3)
    fi
    for candidate in "${candidates[@]}"; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        version=$(python_version_of "$candidate") || version=""
        found+=("$candidate=${version:-unreadable}")
        for supported in "${SUPPORTED_PYTHONS[@]}"; do
            if [[ $version == "$supported" ]]; then
                PYTHON=$(command -v "$candidate")
                return 0
            fi
        done
    done
    local wanted
    wanted=$(printf ' or %s' "${SUPPORTED_PYTHONS[@]}")
    echo "$(basename "$0"): needs Python ${wanted# or } (found: ${found[*]:-none of ${candidates[*]}});" \
        "install one, or name it with PYTHON=/path/to/python3.12" >&2
    exit 1
}
