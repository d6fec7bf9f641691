"""Backend resolution shared by both backends: device and dtype, per-request sampling, the
defaults of vLLM on CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from dialogclip.core.config import ConfigError
from dialogclip.generate.backend import (
    EngineTarget,
    resolve_device,
    resolve_dtype,
    resolve_engine,
)
from dialogclip.generate.config import (
    MachineSettings,
    VllmSettings,
    generate_config_from_dict,
    machine_settings,
)
from dialogclip.generate.hf_backend import SeededSampler, nucleus_mask
from dialogclip.generate.vllm_backend import CPU_KV_CACHE_BYTES, cpu_engine_defaults

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU resolution")


@CPU_ONLY
def test_auto_dtype_resolves_alike_in_both_backends() -> None:
    config, machine = generate_config_from_dict({}), MachineSettings()
    assert config.dtype == "auto"
    assert resolve_engine("vllm", config, machine) == EngineTarget("vllm", "cpu", "float32")
    assert resolve_engine("transformers", config, machine) == EngineTarget(
        "transformers", "cpu", "float32"
    )


@CPU_ONLY
def test_devices_resolve_to_the_cpu_here() -> None:
    assert resolve_device("vllm") == resolve_device("transformers", "auto") == "cpu"
    assert resolve_device("transformers", "cuda:1") == "cuda:1"  # an explicit device is kept


def test_dtype_names_resolve_to_torch_dtypes() -> None:
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert resolve_dtype("float16", "cuda") is torch.float16
    for bad in ("int8", "float33", "device"):
        with pytest.raises(ConfigError, match=rf"generate\.dtype: .*'{bad}'"):
            resolve_dtype(bad, "cpu")


def test_a_transformers_device_is_kept_and_vllm_follows_its_build() -> None:
    config = generate_config_from_dict({"dtype": "bfloat16"})
    machine = machine_settings(transformers_device="cpu")
    assert resolve_engine("transformers", config, machine) == EngineTarget(
        "transformers", "cpu", "bfloat16"
    )
    with pytest.raises(ValueError, match="unknown backend 'auto'"):
        resolve_engine("auto", config, machine)  # resolve_backend decides first


def _naive_nucleus(probs: list[float], top_p: float) -> set[int]:
    """The most probable tokens, in order, until their mass reaches ``top_p``."""
    order = sorted(range(len(probs)), key=lambda i: (-probs[i], i))
    kept, mass = set(), 0.0
    for token in order:
        kept.add(token)
        mass += probs[token]
        if mass >= top_p:
            break
    return kept


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.9, 0.999, 1.0])
def test_nucleus_mask_matches_a_naive_reference(top_p: float) -> None:
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        probs = torch.softmax(torch.randn(50, generator=generator, dtype=torch.float64) * 2, 0)
        mask = nucleus_mask(probs, top_p)
        expected = _naive_nucleus(probs.tolist(), top_p)
        assert set(torch.nonzero(mask).flatten().tolist()) == expected


def test_seeded_sampler_rows_depend_on_their_own_seed_only() -> None:
    """Row i's token sequence is the same alone or beside other rows, for any batch order."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 6, 40, generator=generator)  # (row, step, vocab)
    seeds = [11, 12, 13, 14, 15]

    def draw(rows: list[int]) -> dict[int, list[int]]:
        sampler = SeededSampler([seeds[r] for r in rows], temperature=0.7, top_p=0.9, device="cpu")
        drawn: dict[int, list[int]] = {row: [] for row in rows}
        for step in range(logits.shape[1]):
            scores = sampler(None, logits[rows, step].clone())  # (len(rows), vocab)
            for position, row in enumerate(rows):
                finite = torch.isfinite(scores[position]).nonzero().flatten().tolist()
                assert len(finite) == 1  # exactly the drawn token stays selectable
                drawn[row].append(finite[0])
        return drawn

    together = draw([0, 1, 2, 3, 4])
    assert draw([3, 1]) == {3: together[3], 1: together[1]}
    assert draw([4]) == {4: together[4]}
    assert len({tuple(tokens) for tokens in together.values()}) == 5
    for row, tokens in together.items():  # every draw lies in its step's nucleus
        for step, token in enumerate(tokens):
            probs = torch.softmax(logits[row, step] / 0.7, dim=-1)
            assert nucleus_mask(probs, 0.9)[token]


def test_vllm_cpu_defaults_bound_the_kv_cache_and_run_in_process() -> None:
    defaults = cpu_engine_defaults(VllmSettings(), environ={})
    assert defaults == {
        "env": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
        "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES,
        "distributed_executor_backend": "uni",
        "enforce_eager": True,
    }
    assert CPU_KV_CACHE_BYTES == 1 << 30


def test_vllm_cpu_defaults_yield_to_the_config_and_environment() -> None:
    configured = VllmSettings(
        kv_cache_memory_bytes=64 << 20, distributed_executor_backend="mp", enforce_eager=False
    )
    assert cpu_engine_defaults(configured, environ={}) == {"env": {}}
    # vLLM's own variables: a KV cache in GiB, multiprocessing switched on by the user.
    environ = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    assert cpu_engine_defaults(VllmSettings(), environ) == {"env": {}, "enforce_eager": True}
    # An explicit "uni" executor gets multiprocessing off (vLLM would turn it into "mp").
    assert cpu_engine_defaults(VllmSettings(distributed_executor_backend="uni"), {}) == {
        "env": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
        "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES,
        "enforce_eager": True,
    }
    # Tensor parallel needs vLLM's worker processes.
    assert "distributed_executor_backend" not in cpu_engine_defaults(
        VllmSettings(tensor_parallel_size=2), environ={}
    )


@pytest.mark.parametrize(("preset", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_a_job_process_makes_openmp_waits_passive_before_torch_loads(preset, expected) -> None:
    """Importing the runner (as ``dialogclip generate-dialogue`` does before torch) sets
    OMP_WAIT_POLICY=PASSIVE unless the environment chose a policy."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    code = (
        "import os, sys\n"
        "import dialogclip.generate.runner\n"
        "assert 'torch' not in sys.modules\n"
        "print(os.environ['OMP_WAIT_POLICY'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == expected


def test_the_eager_resource_is_auto_by_default() -> None:
    """vllm_enforce_eager: auto (the rules' default) leaves the choice to the device."""
    assert machine_settings().vllm.enforce_eager is None
    assert machine_settings(vllm_enforce_eager="auto").vllm.enforce_eager is None
    assert machine_settings(vllm_enforce_eager=0).vllm.enforce_eager is False
    assert machine_settings(vllm_enforce_eager="1").vllm.enforce_eager is True
    with pytest.raises(ConfigError, match="vllm_enforce_eager must be auto, 0 or 1, got 'yes'"):
        machine_settings(vllm_enforce_eager="yes")
