#!/usr/bin/env bash
# The GPU figures of issue 11 in one command for a small borrowed GPU machine, within a budget
# of command time (GPU_CHECK_BUDGET_S, 480 s), the most valuable first. The machine's known
# shape: one GPU, Python 3.12 with torch 2.11 (CUDA 13), transformers, accelerate, numpy,
# pyarrow, pandas, safetensors; no vLLM, open_clip or jsonschema; no network. Before lending it
# the working tree, fetch the few wheels it lacks, here:
#   bash bench/fetch_gpu_wheels.sh        # -> bench/wheels/ (~16 MiB, git-ignored)
# then, there:
#   bash bench/gpu_check.sh
# In order, each step with a time limit (and never past the budget):
#   1. setup     pip install --no-deps --target of bench/wheels/ (open_clip, torchvision,
#                pillow, jsonschema, ...) into bench/out/gpu_check/site;
#   2. train     the third tower's update at batch 1024 and the CC3M epoch it projects
#                (bench_generate_gpu.py --sections train);
#   3. draft     a DRAFT step at the thesis' batch 1536 in bf16 and its 3-epoch projection
#                (bench_draft.py -> bench/results/bench_draft_gpu.json);
#   4. embed     ViT-B-32 image embedding, tower alone and the stage's path (--sections embed);
#   5. generate  transformers generation of the real LLaVA-1.5-7B and BLIP-2 OPT-2.7B
#                architectures with dummy weights (--sections generate, half the images:
#                GPU_CHECK_IMAGES_SCALE). The vLLM cases need vLLM, which this machine lacks
#                (its wheels, ~300 MiB, cannot travel): they are recorded as skipped, and the
#                vLLM figures stay for a cluster run (`make install-gpu`, then
#                `python bench/bench_generate_gpu.py`);
#   6. tests     `pytest -m gpu tests/gpu` (vLLM CUDA parity): last, and only when vLLM and
#                pytest are importable and budget is left (GPU_CHECK_TESTS=0 skips it).
# Figures go to bench/results/bench_generate_gpu.json as each case finishes, the steps' exit
# status and times to bench/results/gpu_check.json, logs to bench/out/gpu_check/. With $OUT set
# (the device runner's folder) all of them are copied there after every step.
# GPU_CHECK_SMOKE=1 rehearses the script on a CPU machine: the same steps on the CPU with tiny
# sizes (--smoke), CPU limits (a 1500 s budget), results under bench/out/ instead of
# bench/results/. Give it an interpreter of the GPU machine's shape to rehearse the wheel
# install too (PYTHON=.../python3.12; docs/gpu.md, "Checking a GPU machine").
# Exit status 1 when a step failed or ran out of time.
set -uo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

# The GPU install's Python if there is one (a cluster), else the machine's.
PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=$(command -v python3 || command -v python)
SMOKE=${GPU_CHECK_SMOKE:-0}
# The GPU's 8 minutes; a CPU rehearsal of the same steps on 2 shared cores needs longer.
BUDGET_S=${GPU_CHECK_BUDGET_S:-$([[ $SMOKE == 1 ]] && echo 1500 || echo 480)}
SCALE=${GPU_CHECK_IMAGES_SCALE:-0.5}
LOGS=bench/out/gpu_check
SITE=$LOGS/site
SUMMARY=bench/results/gpu_check.json
RESULT=bench/results/bench_generate_gpu.json
DRAFT_OUT=bench/results/bench_draft_gpu.json
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export PYTHONPATH="$PWD/src:$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"
# Each step's own limit (s): train, draft, embed, generate, setup; tests take what is left.
if [[ $SMOKE == 1 ]]; then
    limits=(240 300 300 420 240)
    smoke=(--smoke)
    # --accuracy-n 0: the MMD estimator's error check runs on the CPU and does not depend on
    # the machine (bench/results/bench_draft.json has it); no GPU time goes to it.
    draft=(--device cpu --batch 4 --loss-batch 64 --steps 1 --threads 2 --accuracy-n 0)
    SUMMARY=$LOGS/gpu_check.json
    RESULT=bench/out/generate_gpu/smoke.json
    DRAFT_OUT=$LOGS/draft.json
else
    limits=(60 90 70 210 60)
    smoke=()
    draft=(--device cuda --batch 1536 --loss-batch 1536 --steps 3 --accuracy-n 0)
    if ! nvidia-smi -L >&2; then
        echo "gpu_check.sh: no GPU here (nvidia-smi -L failed); GPU_CHECK_SMOKE=1 checks the" \
            "script on the CPU" >&2
        exit 2
    fi
fi
mkdir -p "$LOGS" "$(dirname "$SUMMARY")"

steps=()
collect() {
    # Copy what exists so far to the runner's folder: a later kill keeps it.
    [[ -n ${OUT:-} ]] || return 0
    mkdir -p "$OUT/logs"
    cp -f "$RESULT" "$SUMMARY" "$DRAFT_OUT" "$OUT/" 2>/dev/null || true
    cp -f "$LOGS"/*.log "$LOGS"/*.json "$OUT/logs/" 2>/dev/null || true
}
write_summary() {
    local joined
    joined=$(IFS=,; echo "${steps[*]}")
    printf '{"budget_s": %s, "elapsed_s": %s, "device": %s, "steps": [%s]}\n' "$BUDGET_S" \
        "$((SECONDS - started))" "$("$PY" -c 'import json, subprocess
try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
except OSError:
    out = ""
print(json.dumps(out.strip().splitlines()))')" "$joined" > "$SUMMARY"
}
record() {  # name exit seconds limit timed_out [note]
    steps+=("{\"step\": \"$1\", \"exit\": $2, \"seconds\": $3, \"limit_s\": $4, \"timed_out\": $5${6:+, \"note\": \"$6\"}}")
    write_summary
    collect
}
skip() {  # name why
    echo "== $1: skipped ($2)" >&2
    steps+=("{\"step\": \"$1\", \"skipped\": \"$2\"}")
    write_summary
    collect
}
step() {  # name limit command...: runs within the step's limit and what is left of the budget
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - (SECONDS - started) - 5))
    ((left < limit)) && limit=$left
    if ((limit < 15)); then
        skip "$name" "out of budget: $((SECONDS - started)) of $BUDGET_S s used"
        return
    fi
    local begin=$SECONDS
    echo "== $name (limit ${limit} s, $((SECONDS - started)) s used): $*" >&2
    timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    local took=$((SECONDS - begin))
    local timed_out=false
    [[ $rc == 124 || $rc == 137 ]] && timed_out=true
    echo "== $name: exit $rc after ${took} s (timed out: $timed_out)" >&2
    tail -n 5 "$LOGS/$name.log" >&2
    record "$name" "$rc" "$took" "$limit" "$timed_out"
}

# 1. What the machine lacks, from the wheels fetched beforehand (nothing to fetch there).
install_wheels() {
    if ! compgen -G "bench/wheels/*.whl" >/dev/null; then
        echo "no bench/wheels/: run 'bash bench/fetch_gpu_wheels.sh' where there is network;" \
            "using what this Python has" >&2
    elif [[ $("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') != 3.12 ]]; then
        echo "bench/wheels/ holds CPython 3.12 wheels; $PY is not 3.12: using what it has" >&2
    else
        rm -rf "$SITE"
        "$PY" -m pip install --quiet --no-deps --no-index --disable-pip-version-check \
            --target "$SITE" bench/wheels/*.whl || return 1
    fi
    # What the wheels bring imports, and the machine it runs on.
    "$PY" - <<'PYCODE'
import importlib.metadata as md, importlib.util, torch
for name in ("open_clip", "torchvision", "PIL", "jsonschema", "dialogclip.core.config"):
    __import__(name)
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available())
print({n: md.version(n) for n in ("transformers", "torchvision", "open_clip_torch")})
print("vllm:", "installed" if importlib.util.find_spec("vllm") else
      "not installed: the vLLM cases are skipped and stay for a cluster run")
PYCODE
}
export PY SITE
export -f install_wheels
step setup "${limits[4]}" bash -c install_wheels
if [[ ${steps[-1]} != *'"exit": 0'* ]]; then
    echo "gpu_check.sh: setup failed ($LOGS/setup.log)" >&2
    exit 1
fi

# 2-5. The figures, most valuable first.
step train "${limits[0]}" "$PY" bench/bench_generate_gpu.py "${smoke[@]}" --output "$RESULT" \
    --sections train
step draft "${limits[1]}" "$PY" bench/bench_draft.py "${draft[@]}" --out "$DRAFT_OUT"
step embed "${limits[2]}" "$PY" bench/bench_generate_gpu.py "${smoke[@]}" --output "$RESULT" \
    --sections embed
step generate "${limits[3]}" "$PY" bench/bench_generate_gpu.py "${smoke[@]}" --output "$RESULT" \
    --sections generate --images-scale "$SCALE" --case-timeout "${limits[3]}"
if grep -q '"skipped": "vllm is not installed' "$RESULT" 2>/dev/null; then
    echo "== vLLM: not installed here; its generation figures (LLaVA-1.5-7B, BLIP-2 through" \
        "vLLM, engine start-up) stay for a cluster run: make install-gpu, then" \
        "python bench/bench_generate_gpu.py --sections generate" >&2
fi

# 6. Tests last, and only where they can run.
if [[ ${GPU_CHECK_TESTS:-1} == 0 ]]; then
    skip tests "GPU_CHECK_TESTS=0"
elif ! "$PY" -c 'import vllm, pytest' 2>/dev/null; then
    skip tests "vllm or pytest not installed: the vLLM CUDA tests stay for a cluster run"
else
    tests_env=()
    [[ $SMOKE == 1 ]] && tests_env=(env DIALOGCLIP_GPU_TESTS_DEVICE=cpu)
    step tests "$BUDGET_S" "${tests_env[@]}" "$PY" -m pytest -m gpu tests/gpu -q \
        -p no:cacheprovider -rA --junitxml="$LOGS/tests.xml"
fi
echo "written $SUMMARY, $RESULT and $DRAFT_OUT in $((SECONDS - started)) s of $BUDGET_S" >&2
# Any step that failed or ran out of time fails the check (the JSON says which).
[[ $(IFS=; echo "${steps[*]}") != *'"exit": '[1-9]* ]]
