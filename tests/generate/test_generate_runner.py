"""One generation job: rows, errors, metadata, stats, empty shards, resume by chunk."""

from __future__ import annotations

import logging
from collections.abc import Sequence
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
from dialogclip.generate.backend import Completion, GenerationBackend, GenerationRequest
from dialogclip.generate.config import generate_config_from_dict, machine_settings
from dialogclip.generate.parsing import PARSE_OK
from dialogclip.generate.runner import generate_shard
from dialogclip.generate.schema import DIALOGUE_SCHEMA, STATUS_IMAGE_ERROR, STATUS_SUCCESS

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

    def settings(self) -> dict[str, Any]:
        return self.inner.settings()


def _run(tmp: Path, shard: Path, generator: str, params: dict, backend=None, name: str = "out"):
    out = tmp / name
    stats = generate_shard(
        shard_path=shard,
        output_path=out / f"{generator}.parquet",
        stats_path=out / f"{generator}.json",
        work_dir=out / ".chunks",
        generator=generator,
        config=generate_config_from_dict(params),
        backend=backend,
        machine=machine_settings(**TINY_MACHINE),
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


def test_llava_rows_are_parsed_or_kept_with_a_status(
    mixed_shard, tiny_params, hf_backends, tmp_path
) -> None:
    table, stats, _ = _run(tmp_path, mixed_shard, "llava", tiny_params, hf_backends["llava"])
    rows = [row for row in table.to_pylist() if row["status"] == STATUS_SUCCESS]
    assert rows and all(len(row["responses"]) == 1 for row in rows)
    for row in rows:
        assert row["parse_status"] in ("ok", "wrong_count", "unparsed")
        assert row["responses"][0] is not None  # the raw reply is always kept
        if row["parse_status"] == "unparsed":
            assert row["questions"] == [] and row["answers"] == []
    assert sum(stats["parse"].values()) == len(rows)


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

    with caplog.at_level(logging.INFO, logger="dialogclip.generate.runner"):
        table, stats, out = _run(tmp_path, mixed_shard, "blip2", tiny_params, hf_backends["blip2"])
    assert "resuming after finished chunk(s) [0, 1]" in caplog.text
    assert stats["chunks"]["resumed"] == 2
    assert stats["chunks"]["computed"] == stats["chunks"]["total"] - 2
    assert table.equals(reference)
    assert read_parquet_metadata(out / "blip2.parquet") == read_parquet_metadata(
        reference_dir / "blip2.parquet"
    )


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
