"""The whole DAG, end to end, on the embedded demo: exactly what `make demo` runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dialogclip.core.io import read_json

GENERATED = ("results", "logs", "benchmarks", ".snakemake")


@pytest.fixture(scope="module")
def demo_run(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of resources/demo (without earlier outputs) after one full snakemake run."""
    workdir = tmp_path_factory.mktemp("e2e") / "demo"
    shutil.copytree(
        repo_root / "resources" / "demo", workdir, ignore=shutil.ignore_patterns(*GENERATED)
    )
    result = _snakemake(repo_root, workdir)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    return workdir


def _snakemake(repo_root: Path, workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    venv_bin = repo_root / ".venv" / "bin"
    return subprocess.run(
        [
            str(venv_bin / "snakemake"),
            "--snakefile",
            str(repo_root / "Snakefile"),
            "--directory",
            str(workdir),
            "--cores",
            "2",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=1500,  # a hang (misconfiguration) must fail the test, not CI
        env={**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"},
    )


def test_ingestion_summary_counts_every_tsv_row(demo_run: Path) -> None:
    summary = read_json(demo_run / "results" / "ingest" / "summary.json")
    n_rows = len((demo_run / "cc3m" / "demo.tsv").read_bytes().splitlines())
    assert summary["n_rows"] == n_rows
    assert 0 < summary["status_counts"]["success"] < n_rows  # the demo has dead/broken rows


def test_every_downloaded_image_has_dialogue_from_both_generators(demo_run: Path) -> None:
    shards = sorted((demo_run / "results" / "ingest" / "shards").glob("*.parquet"))
    assert len(shards) >= 2
    for generator in ("blip2", "llava"):
        for shard in shards:
            ingested = pq.read_table(shard, columns=["key", "status"]).to_pylist()
            expected = sorted(row["key"] for row in ingested if row["status"] == "success")
            dialogue = demo_run / "results" / "dialogue" / generator / shard.name
            assert sorted(pq.read_table(dialogue, columns=["key"])["key"].to_pylist()) == expected


def test_a_finished_pipeline_has_nothing_left_to_do(repo_root: Path, demo_run: Path) -> None:
    result = _snakemake(repo_root, demo_run, "--dry-run")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Nothing to be done" in result.stdout + result.stderr


def test_evaluation_results_have_clip_benchmark_fields(demo_run: Path) -> None:
    retrieval = read_json(demo_run / "results" / "eval" / "retrieval" / "tiny" / "coco.json")
    assert {"dataset", "model", "pretrained", "task", "metrics"} <= set(retrieval)
    assert set(retrieval["metrics"]) == {
        f"{kind}_retrieval_recall@{k}" for kind in ("image", "text") for k in (1, 5, 10)
    }
    assert (retrieval["n_images"], retrieval["n_texts"]) == (8, 40)
    for dataset in ("vqa_real", "vqa_abstract"):
        vqa = read_json(demo_run / "results" / "eval" / "vqa" / "tiny" / f"{dataset}.json")
        assert vqa["task"] == "vqa_multiple_choice" and vqa["metrics"]["n_questions"] == 12
        answers = read_json(
            demo_run / "results" / "eval" / "vqa" / "tiny" / f"{dataset}_results.json"
        )
        assert sorted(a["question_id"] for a in answers) == list(range(1, 13))
