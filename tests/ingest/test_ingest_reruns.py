"""What an edit reruns in the ingest stage, as `snakemake --dry-run` plans it on the finished
demo: machine settings and a touched TSV rerun nothing; a row-range change redoes the shards
whose rows move, and what depends on them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from workflow_helpers import (
    DEMO_BLOCKS,
    DEMO_RUNS,
    DEMO_SHARDS,
    copy_demo,
    demo_after_runs,
    demo_tsv,
    edited_config,
    planned,
    planned_jobs,
)

pytestmark = pytest.mark.dag

# One shard's images change: its retry pass, dialogue (one job per generator), the frozen-tower
# caches of its block (one image tower, one caption tower: every run starts from the world's
# CLIP), then every run's rows of that block (all shards feed each run), the runs, their
# evaluations, the statistics and the report.
DOWNSTREAM_OF_ONE_SHARD = {
    "retry_failed_downloads": 1,
    "generate": 2,
    "ingest_summary": 1,
    "dialogue_summary": 2,
    "dialogue_quality": 2,
    "embed_train_images": 1,
    "embed_train_captions": 1,
    **demo_after_runs(list(DEMO_RUNS), blocks=1),
    "report": 1,
}
PER_SHARD = ("retry_failed_downloads", "generate", "download_shard")
PER_BLOCK = ("embed_train_images", "embed_train_captions", "train_rows")


def _every_shard(jobs: dict[str, int]) -> dict[str, int]:
    """``jobs`` (those of one shard) for every shard of the demo and every block."""
    factor = dict.fromkeys(PER_SHARD, DEMO_SHARDS) | dict.fromkeys(PER_BLOCK, DEMO_BLOCKS)
    return {name: count * factor.get(name, 1) for name, count in jobs.items()}


def test_download_threads_rerun_nothing(finished_demo: Path) -> None:
    assert planned_jobs(finished_demo, "--set-resources", "download_shard:download_threads=3") == {}
    assert (
        planned_jobs(
            finished_demo,
            "--set-resources",
            "retry_failed_downloads:download_threads=5",
            "--set-threads",
            "download_shard=1",
        )
        == {}
    )


def test_touching_or_copying_the_tsv_reruns_nothing(finished_demo: Path, tmp_path: Path) -> None:
    workdir = copy_demo(tmp_path / "demo", source=finished_demo)
    tsv = demo_tsv(workdir)
    tsv.write_bytes(tsv.read_bytes())  # a copy over the original: new mtime, same rows
    os.utime(tsv, (tsv.stat().st_atime + 3600, tsv.stat().st_mtime + 3600))
    assert planned_jobs(workdir) == {}


def test_a_new_limit_redoes_only_the_shard_whose_rows_change(
    finished_demo: Path, tmp_path: Path
) -> None:
    # Shards 00000, 00001, 00002, ... of shard_size rows: a limit half-way into 00001 keeps
    # 00000, shortens 00001 and drops the others (00000-00001 stays the first block of 2).
    shard_size = yaml.safe_load((finished_demo / "config.yaml").read_text())["cc3m"]["shard_size"]
    assert DEMO_SHARDS >= 3
    limit = shard_size + shard_size // 2
    edited = edited_config(finished_demo, tmp_path, lambda c: c["cc3m"].update(limit=limit))
    plan = planned(finished_demo, "--configfile", edited)
    assert plan.jobs == {"download_shard": 1, **DOWNSTREAM_OF_ONE_SHARD}
    assert plan.by("generate", "generator") == {"blip2": 1, "llava": 1}
    assert plan.by("generate", "shard") == {"00001": 2}


def test_an_ingest_setting_redoes_every_shard(finished_demo: Path, tmp_path: Path) -> None:
    edited = edited_config(finished_demo, tmp_path, lambda c: c["ingest"].update(encode_quality=90))
    plan = planned(finished_demo, "--configfile", edited)
    assert plan.jobs == _every_shard({"download_shard": 1, **DOWNSTREAM_OF_ONE_SHARD})
    assert plan.by("generate", "generator") == {"blip2": DEMO_SHARDS, "llava": DEMO_SHARDS}


def test_a_retry_setting_redoes_only_the_retry_pass(finished_demo: Path, tmp_path: Path) -> None:
    edited = edited_config(
        finished_demo,
        tmp_path,
        lambda c: c["ingest"]["retry_failed"].update(error_kinds=["timeout"]),
    )
    plan = planned(finished_demo, "--configfile", edited)
    assert plan.jobs == _every_shard(DOWNSTREAM_OF_ONE_SHARD)
    assert plan.by("generate", "generator") == {"blip2": DEMO_SHARDS, "llava": DEMO_SHARDS}
