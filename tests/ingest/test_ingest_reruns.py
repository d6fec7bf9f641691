"""What an edit reruns in the ingest stage, as `snakemake --dry-run` plans it on the finished
demo: machine settings and a touched TSV rerun nothing; a row-range change redoes the shards
whose rows move, and what depends on them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from workflow_helpers import copy_demo, edited_config, planned, planned_jobs

pytestmark = pytest.mark.dag

# One shard's images change: its retry pass, dialogue (one job per generator), frozen-tower
# caches and training rows, then every run (all shards feed each), their evaluations, the
# statistics and the report.
DOWNSTREAM_OF_ONE_SHARD = {
    "retry_failed_downloads": 1,
    "generate": 2,
    "ingest_summary": 1,
    "dialogue_summary": 2,
    "dialogue_quality": 2,
    "embed_train_images": 1,
    "embed_train_captions": 1,
    "train_rows": 2,
    "train_run": 3,
    "eval_retrieval": 11,
    "eval_vqa": 10,
    "report": 1,
}
PER_SHARD = ("retry_failed_downloads", "generate", "download_shard")
PER_SHARD += ("embed_train_images", "embed_train_captions", "train_rows")


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
    tsv = workdir / "cc3m" / "demo.tsv"
    tsv.write_bytes(tsv.read_bytes())  # a copy over the original: new mtime, same rows
    os.utime(tsv, (tsv.stat().st_atime + 3600, tsv.stat().st_mtime + 3600))
    assert planned_jobs(workdir) == {}


def test_a_new_limit_redoes_only_the_shard_whose_rows_change(
    finished_demo: Path, tmp_path: Path
) -> None:
    # 70 rows in shards of 32: 00000 = 0:32, 00001 = 32:64, 00002 = 64:70. A limit of 60 keeps
    # 00000, shortens 00001 to 32:60 and drops 00002.
    edited = edited_config(finished_demo, tmp_path, lambda c: c["cc3m"].update(limit=60))
    plan = planned(finished_demo, "--configfile", edited)
    assert plan.jobs == {"download_shard": 1, **DOWNSTREAM_OF_ONE_SHARD}
    assert plan.by("generate", "generator") == {"blip2": 1, "llava": 1}
    assert plan.by("generate", "shard") == {"00001": 2}


def test_an_ingest_setting_redoes_every_shard(finished_demo: Path, tmp_path: Path) -> None:
    edited = edited_config(finished_demo, tmp_path, lambda c: c["ingest"].update(encode_quality=90))
    plan = planned(finished_demo, "--configfile", edited)
    assert plan.jobs == {
        name: count * 3 if name in PER_SHARD else count
        for name, count in {"download_shard": 1, **DOWNSTREAM_OF_ONE_SHARD}.items()
    }
    assert plan.by("generate", "generator") == {"blip2": 3, "llava": 3}


def test_a_retry_setting_redoes_only_the_retry_pass(finished_demo: Path, tmp_path: Path) -> None:
    edited = edited_config(
        finished_demo,
        tmp_path,
        lambda c: c["ingest"]["retry_failed"].update(error_kinds=["timeout"]),
    )
    plan = planned(finished_demo, "--configfile", edited)
    assert plan.jobs == {
        name: count * 3 if name in PER_SHARD else count
        for name, count in DOWNSTREAM_OF_ONE_SHARD.items()
    }
    assert plan.by("generate", "generator") == {"blip2": 3, "llava": 3}
