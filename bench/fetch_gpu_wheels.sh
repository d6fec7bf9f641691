#!/usr/bin/env bash
# Fetch the wheels bench/gpu_check.sh installs on a borrowed GPU machine that cannot reach the
# network (bench/gpu_wheels.txt says which and why) into bench/wheels/, for CPython 3.12 on
# x86_64 Linux, without dependencies (the machine has the rest). Run it here, once:
#   bash bench/fetch_gpu_wheels.sh
# It fails when they would not fit what travels with the working tree (MAX_MIB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=$(command -v python3)
MAX_MIB=${GPU_WHEELS_MAX_MIB:-40}
rm -rf bench/wheels
# --isolated: the machine's pip configuration (local wheel folders, a torch cap) plays no part.
"$PY" -m pip download --isolated --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d bench/wheels -r bench/gpu_wheels.txt
ls -1 bench/wheels
kib=$(du -sk bench/wheels | cut -f1)
echo "bench/wheels: $(ls bench/wheels | wc -l) wheels, $((kib / 1024)) MiB" >&2
if ((kib > MAX_MIB * 1024)); then
    echo "fetch_gpu_wheels.sh: bench/wheels is over ${MAX_MIB} MiB; the working tree that travels holds 64 MiB" >&2
    exit 1
fi
