"""One generation job: rows, errors, metadata, stats, empty shards, resume by chunk."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from generate_helpers import (
    CAPTION_MARKER,
    TINY_MACHINE,
    bad_images,
    ingest_row,
    mixed_rows,
    write_shard,
)

from dialogclip.core.io import read_json, read_parquet_metadata
from dialogclip.generate.backend import (
    Completion,
    EngineTarget,
    GenerationBackend,
    GenerationRequest,
)
from dialogclip.generate.chunk_store import ChunkStore
from dialogclip.generate.config import (
    SamplingSettings,
    TransformersSettings,
    generate_config_from_dict,
    machine_settings,
)
from dialogclip.generate.hf_backend import TransformersBackend
from dialogclip.generate.parsing import PARSE_OK, parse_qa_pairs
from dialogclip.generate.provenance import chunk_fingerprint, file_sha256, output_metadata
from dialogclip.generate.runner import generate_shard
from dialogclip.generate.schema import DIALOGUE_SCHEMA, STATUS_IMAGE_ERROR, STATUS_SUCCESS

SAMPLING = SamplingSettings()
UNUSABLE = {"truncated", "truncated_late", "one_pixel", "huge_header", "not_an_image", "empty"}


class CrashAfter(GenerationBackend):
    """A real backend that dies on its ``calls``-th generate call (a job killed mid-chunk)."""

    def __init__(self, inner: GenerationBackend, calls: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.remaining = calls

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        self.remaining -= 1
        if self.remaining == 0:
            raise RuntimeError("simulated crash")
        return self.inner.generate(requests)

    def chat_prompt(self, messages: Any) -> str:
        return self.inner.chat_prompt(messages)

    def settings(self) -> dict[str, Any]:
        return self.inner.settings()

    @property
    def target(self) -> EngineTarget:
        return self.inner.target


def _run(
    tmp: Path,
    shard: Path,
    generator: str,
    params: dict,
    backend=None,
    name: str = "out",
    **machine: Any,
):
    out = tmp / name
    stats = generate_shard(
        shard_path=shard,
        output_path=out / f"{generator}.parquet",
        stats_path=out / f"{generator}.json",
        work_dir=out / ".chunks",
        generator=generator,
        config=generate_config_from_dict(params),
        backend=backend,
        machine=machine_settings(**{**TINY_MACHINE, **machine}),
    )
    return pq.read_table(out / f"{generator}.parquet"), stats, out


@pytest.fixture(scope="module")
def mixed_shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shard(tmp_path_factory.mktemp("shards") / "00000.parquet", mixed_rows())


@pytest.fixture(scope="module")
def blip2_run(mixed_shard, tiny_params, hf_backends, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("blip2-run")
    return _run(tmp, mixed_shard, "blip2", tiny_params, hf_backends["blip2"])


def test_rows_follow_the_downloaded_images(blip2_run, mixed_shard) -> None:
    table, stats, _ = blip2_run
    source = pq.read_table(mixed_shard).to_pylist()
    downloaded = [row for row in source if row["status"] == "success"]
    assert table.schema.remove_metadata() == DIALOGUE_SCHEMA
    assert table["key"].to_pylist() == [row["key"] for row in downloaded]
    assert table["url"].to_pylist() == [row["url"] for row in downloaded]
    assert stats["rows"] == {
        "input": len(source),
        "downloaded": len(downloaded),
        "image_errors": len(UNUSABLE),
        "generated": len(downloaded) - len(UNUSABLE),
    }


def test_bad_images_are_error_rows_with_a_message(blip2_run) -> None:
    table, _, _ = blip2_run
    rows = table.to_pylist()
    cases = list(bad_images())
    by_case = dict(zip(cases, rows[-len(cases) :], strict=True))
    for case, row in by_case.items():
        if case in UNUSABLE:
            assert row["status"] == STATUS_IMAGE_ERROR, case
            assert row["error_message"], case
            assert row["responses"] is None and row["parse_status"] is None
        else:
            assert row["status"] == STATUS_SUCCESS, (case, row["error_message"])


def test_blip2_rows_hold_two_turns_and_never_the_caption(blip2_run) -> None:
    table, _, _ = blip2_run
    for row in table.to_pylist():
        assert CAPTION_MARKER not in str(row)
        if row["status"] != STATUS_SUCCESS:
            continue
        assert row["generator"] == "blip2" and row["backend"] == "transformers"
        assert len(row["prompts"]) == len(row["responses"]) == len(row["finish_reasons"]) == 2
        assert row["prompts"][1].startswith(row["prompts"][0])
        assert row["questions"] == [
            "What do you see in this image?",
            "What makes this image unique?",
        ]
        assert len(row["answers"]) == 2
        assert all(1 <= n <= 6 for n in row["generated_tokens"])


def test_metadata_holds_sampling_prompts_and_versions(blip2_run, tiny_params) -> None:
    _, _, out = blip2_run
    meta = read_parquet_metadata(out / "blip2.parquet")
    assert meta["generator"] == "blip2"
    assert meta["model"] == tiny_params["blip2"]["model"]
    assert meta["backend"] == "transformers"
    assert meta["sampling"] == {"temperature": 0.0, "top_p": 1.0, "seed": 0, "max_new_tokens": 6}
    assert meta["generator_settings"]["prompt_template"] == "Question: {question} Answer:"
    assert meta["versions"]["transformers"] and meta["versions"]["torch"]
    # The resolved engine, not the config's "auto": what produced the rows.
    assert meta["engine"] == {"backend": "transformers", "device": "cpu", "dtype": "float32"}
    assert not (out / ".chunks").exists()  # the work folder goes once the shard is written


def test_stats_match_a_naive_recount(blip2_run) -> None:
    table, stats, out = blip2_run
    assert read_json(out / "blip2.json") == stats
    rows = [row for row in table.to_pylist() if row["status"] == STATUS_SUCCESS]
    ok = sum(row["parse_status"] == PARSE_OK for row in rows)
    assert stats["parse"].get("ok", 0) == ok
    assert stats["parse_rate"] == pytest.approx(ok / len(rows))
    assert stats["tokens"]["generated"] == sum(sum(row["generated_tokens"]) for row in rows)
    assert sum(stats["finish_reasons"].values()) == 2 * len(rows)
    timing = stats["timing"]
    assert 0.0 <= timing["engine_wait_fraction"] <= 1.0
    assert timing["images_generated"] == len(rows)
    assert stats["chunks"]["computed"] == stats["chunks"]["total"] >= 5


@pytest.mark.parametrize("structured", [False, True])
def test_llava_rows_are_parsed_or_kept_with_a_status(
    mixed_shard, tiny_params, hf_backends, tmp_path, structured
) -> None:
    params = {**tiny_params, "llava": {**tiny_params["llava"], "structured_output": structured}}
    if structured:
        params["llava"]["max_new_tokens"] = 160  # room for three short JSON pairs
    table, stats, _ = _run(tmp_path, mixed_shard, "llava", params, hf_backends["llava"])
    rows = [row for row in table.to_pylist() if row["status"] == STATUS_SUCCESS]
    assert len(rows) == stats["rows"]["generated"] > 0
    for row in rows:
        (reply,) = row["responses"]
        assert reply  # the raw reply is kept, whatever its parse
        parsed = parse_qa_pairs(reply, expected=3)
        assert row["parse_status"] == parsed.status
        assert (row["questions"], row["answers"]) == (parsed.questions, parsed.answers)
    statuses = Counter(row["parse_status"] for row in rows)
    assert stats["parse"] == dict(statuses)
    if structured:  # constrained JSON always yields pairs, three for most images
        assert "unparsed" not in statuses and statuses["ok"] > len(rows) / 2
    else:  # random weights cannot write Q1/A1 text: no reply has three pairs, all are kept
        assert set(statuses) == {"unparsed", "wrong_count"}


@pytest.mark.parametrize("rows", [[], [ingest_row(0, None, status="failed_to_download")]])
def test_empty_shard_gives_an_empty_file_without_starting_an_engine(rows, tmp_path) -> None:
    shard = write_shard(tmp_path / "00001.parquet", rows)
    # A model that does not exist: building an engine would fail the test.
    params = {"blip2": {"model": str(tmp_path / "no-model")}}
    table, stats, _ = _run(tmp_path, shard, "blip2", params)
    assert table.num_rows == 0
    assert table.schema.remove_metadata() == DIALOGUE_SCHEMA
    assert stats["rows"]["generated"] == 0 and stats["parse_rate"] is None


def test_killed_job_resumes_after_the_last_chunk(
    mixed_shard, tiny_params, hf_backends, blip2_run, tmp_path, caplog
) -> None:
    reference, _, reference_dir = blip2_run
    crashing = CrashAfter(hf_backends["blip2"], calls=5)  # BLIP-2: 2 calls per chunk
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path, mixed_shard, "blip2", tiny_params, crashing)
    chunks = sorted(p.name for p in (tmp_path / "out" / ".chunks").glob("*.parquet"))
    assert chunks == ["00000.parquet", "00001.parquet"]
    assert not (tmp_path / "out" / "blip2.parquet").exists()

    with caplog.at_level(logging.INFO, logger="dialogclip.generate"):
        table, stats, out = _run(tmp_path, mixed_shard, "blip2", tiny_params, hf_backends["blip2"])
    assert "resuming after finished chunk(s) [0, 1]" in caplog.text
    assert stats["chunks"]["resumed"] == 2
    assert stats["chunks"]["computed"] == stats["chunks"]["total"] - 2
    assert table.equals(reference)
    assert read_parquet_metadata(out / "blip2.parquet") == read_parquet_metadata(
        reference_dir / "blip2.parquet"
    )


def test_a_generator_configured_by_data_resumes_after_the_last_chunk(
    mixed_shard, tiny_params, hf_backends, tmp_path, caplog
) -> None:
    """A generate.vlms entry (a chat-template dialogue on the tiny LLaVA) resumes as BLIP-2
    does: the chunks made before the crash are kept under its settings' fingerprint, and the
    shard equals an uninterrupted run's."""
    entry = {"model": tiny_params["llava"]["model"], "kind": "dialogue", "max_new_tokens": 4}
    entry["questions"] = ["What is this?", "Why?"]
    params = {**tiny_params, "generators": ["chat"], "vlms": {"chat": entry}}
    reference, _, reference_dir = _run(
        tmp_path, mixed_shard, "chat", params, hf_backends["llava"], name="reference"
    )
    crashing = CrashAfter(hf_backends["llava"], calls=5)  # a dialogue: 2 calls per chunk
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path, mixed_shard, "chat", params, crashing)
    chunks = sorted(p.name for p in (tmp_path / "out" / ".chunks").glob("*.parquet"))
    assert chunks == ["00000.parquet", "00001.parquet"]

    with caplog.at_level(logging.INFO, logger="dialogclip.generate"):
        table, stats, out = _run(tmp_path, mixed_shard, "chat", params, hf_backends["llava"])
    assert "resuming after finished chunk(s) [0, 1]" in caplog.text
    assert stats["chunks"]["resumed"] == 2
    assert table.equals(reference)
    metadata = read_parquet_metadata(out / "chat.parquet")
    assert metadata == read_parquet_metadata(reference_dir / "chat.parquet")
    assert metadata["generator_settings"]["kind"] == "dialogue"
    assert set(table.column("generator").to_pylist()) == {"chat"}


def test_chunks_of_other_settings_are_discarded(
    mixed_shard, tiny_params, hf_backends, blip2_run, tmp_path
) -> None:
    reference, _, _ = blip2_run
    other = {**tiny_params, "blip2": {**tiny_params["blip2"], "max_new_tokens": 2}}
    crashing = CrashAfter(hf_backends["blip2"], calls=3)
    with pytest.raises(RuntimeError):
        _run(tmp_path, mixed_shard, "blip2", other, crashing)
    assert (tmp_path / "out" / ".chunks" / "00000.parquet").exists()
    table, stats, _ = _run(tmp_path, mixed_shard, "blip2", tiny_params, hf_backends["blip2"])
    assert stats["chunks"]["resumed"] == 0
    assert table.equals(reference)


def test_chunks_of_another_dtype_are_discarded(
    mixed_shard, tiny_models, tiny_params, hf_backends, blip2_run, tmp_path, caplog
) -> None:
    """A shard started in bfloat16 is not finished in float32: its chunks are deleted and the
    whole shard is generated again in float32 (even where, as on these short tiny replies,
    bfloat16 happened to give the same tokens)."""
    reference, _, _ = blip2_run
    settings = TransformersSettings(batch_size=4, device="cpu")
    model = str(tiny_models["blip2"])
    bf16 = TransformersBackend("blip2", model, None, settings, SAMPLING, dtype="bfloat16")
    assert bf16.target == EngineTarget("transformers", "cpu", "bfloat16")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path, mixed_shard, "blip2", tiny_params, CrashAfter(bf16, calls=5))
    chunks = tmp_path / "out" / ".chunks"
    started = sorted(chunks.glob("*.parquet"))
    assert [path.name for path in started] == ["00000.parquet", "00001.parquet"]

    with caplog.at_level(logging.INFO, logger="dialogclip.generate"):
        table, stats, out = _run(tmp_path, mixed_shard, "blip2", tiny_params, hf_backends["blip2"])
    for path in started:
        assert f"discarding stale chunk {path} (other input or settings)" in caplog.text
    assert "resuming" not in caplog.text
    assert stats["chunks"]["resumed"] == 0
    assert stats["chunks"]["computed"] == stats["chunks"]["total"]
    assert table.equals(reference)
    assert read_parquet_metadata(out / "blip2.parquet")["engine"]["dtype"] == "float32"
    assert stats["engine"]["dtype"] == "float32" and stats["engine"]["device"] == "cpu"


def test_fingerprint_holds_the_resolved_device_and_dtype(mixed_shard, tiny_params, tmp_path):
    """A chunk written on CPU in float32 is not kept by a job that runs on CUDA in bfloat16
    (or on CUDA in float32); a job on the same device and dtype keeps it."""
    config = generate_config_from_dict(tiny_params)
    input_sha = file_sha256(mixed_shard)

    def fingerprint(device: str, dtype: str) -> str:
        target = EngineTarget("transformers", device, dtype)
        metadata = output_metadata("blip2", target, config)
        return chunk_fingerprint(metadata, 3, input_sha)

    cpu_fp32 = fingerprint("cpu", "float32")
    assert len({cpu_fp32, fingerprint("cuda", "bfloat16"), fingerprint("cuda", "float32")}) == 3
    assert fingerprint("cpu", "float32") == cpu_fp32

    work = tmp_path / "chunks"
    table = pq.read_table(mixed_shard).slice(0, 0)  # any table: the fingerprint decides
    ChunkStore(work, cpu_fp32).write(0, table)
    assert ChunkStore(work, cpu_fp32).finished(n_chunks=1) == {0}
    assert ChunkStore(work, fingerprint("cuda", "bfloat16")).finished(n_chunks=1) == set()
    assert not (work / "00000.parquet").exists()  # discarded, not mixed into the new shard


def test_sampled_replies_do_not_depend_on_the_chunking(
    mixed_shard, tiny_params, hf_backends, tmp_path
) -> None:
    """temperature > 0: each image's reply depends on its own seed only, not on which batch
    or chunk it lands in; another base seed changes the replies."""
    llava = hf_backends["llava"]

    def sampled_run(name: str, chunk_size: int, batch_size: int, seed: int = 7):
        sampling = SamplingSettings(temperature=1.0, top_p=0.9, seed=seed)
        settings = TransformersSettings(batch_size=batch_size, device="cpu")
        backend = TransformersBackend.from_loaded(llava.model, llava.processor, settings, sampling)
        params = {**tiny_params, "sampling": asdict(sampling)}
        table, _, _ = _run(
            tmp_path, mixed_shard, "llava", params, backend, name, chunk_size=chunk_size
        )
        return table.column("responses").to_pylist()

    reference = sampled_run("a", chunk_size=3, batch_size=4)
    assert sampled_run("b", chunk_size=7, batch_size=3) == reference
    assert sampled_run("c", chunk_size=100, batch_size=1) == reference
    greedy, _, _ = _run(tmp_path, mixed_shard, "llava", tiny_params, llava, "greedy")
    replies = [reply for reply in reference if reply]
    assert len(set(map(tuple, replies))) > 1
    assert reference != greedy.column("responses").to_pylist()  # it did sample
    assert sampled_run("d", chunk_size=3, batch_size=4, seed=8) != reference


@pytest.mark.vllm
def test_vllm_shard_equals_transformers_shard(
    mixed_shard, tiny_params, hf_backends, vllm_backends, tmp_path
) -> None:
    for generator in ("blip2", "llava"):
        hf_table, _, _ = _run(
            tmp_path, mixed_shard, generator, tiny_params, hf_backends[generator], "hf"
        )
        vllm_table, vllm_stats, _ = _run(
            tmp_path, mixed_shard, generator, tiny_params, vllm_backends[generator], "vllm"
        )
        assert set(vllm_table["backend"].to_pylist()) == {"vllm"}
        assert hf_table.drop_columns(["backend"]).equals(vllm_table.drop_columns(["backend"]))
        assert vllm_stats["backend"] == "vllm"
