"""The whole DAG, end to end, on the embedded demo: exactly what `make demo` runs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from workflow_helpers import DEMO_RUNS, demo_tsv, planned_jobs

from dialogclip.core.io import read_json

pytestmark = pytest.mark.dag


@pytest.fixture(scope="module")
def demo_run(finished_demo: Path) -> Path:
    """The demo after one full snakemake run (shared with the other workflow tests)."""
    return finished_demo


def test_ingestion_summary_counts_every_tsv_row(demo_run: Path) -> None:
    summary = read_json(demo_run / "results" / "ingest" / "summary.json")
    n_rows = len(demo_tsv(demo_run).read_bytes().splitlines())
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


def test_a_finished_pipeline_has_nothing_left_to_do(demo_run: Path) -> None:
    assert planned_jobs(demo_run) == {}


def test_evaluation_results_have_clip_benchmark_fields(demo_run: Path) -> None:
    retrieval = read_json(demo_run / "results" / "eval" / "retrieval" / "tiny" / "coco.json")
    assert {"dataset", "model", "pretrained", "task", "metrics"} <= set(retrieval)
    assert set(retrieval["metrics"]) == {
        f"{kind}_retrieval_recall@{k}" for kind in ("image", "text") for k in (1, 5, 10)
    }
    # Every image of the Karpathy test split and its five captions (the world's set).
    coco = read_json(demo_run / "eval" / "coco" / "dataset_coco.json")["images"]
    test = [image for image in coco if image["split"] == "test"]
    n_captions = sum(len(image["sentences"]) for image in test)
    assert (retrieval["n_images"], retrieval["n_texts"]) == (len(test), n_captions)
    assert n_captions == 5 * len(test) > 0
    config = yaml.safe_load((demo_run / "config.yaml").read_text())["evaluate"]
    for dataset in ("vqa_real", "vqa_abstract"):
        questions = read_json(demo_run / config[dataset]["questions"])["questions"]
        ids = sorted(question["question_id"] for question in questions)
        vqa = read_json(demo_run / "results" / "eval" / "vqa" / "tiny" / f"{dataset}.json")
        assert vqa["task"] == "vqa_multiple_choice"
        assert vqa["metrics"]["n_questions"] == len(ids) > 0
        answers = read_json(
            demo_run / "results" / "eval" / "vqa" / "tiny" / f"{dataset}_results.json"
        )
        assert sorted(a["question_id"] for a in answers) == ids


def test_every_training_run_leaves_a_tower_metrics_and_its_evaluations(demo_run: Path) -> None:
    from safetensors import safe_open

    # The embedding blends {run}-beta{beta}: six betas of a third tower, two of a DRAFT run.
    runs = {
        "tiny-c3m-blip2": 6,
        "tiny-c3m-llava": 6,
        "tiny-draft-llava": 2,
        "tiny-draft-llava-nommd": 2,
    }
    config = yaml.safe_load((demo_run / "config.yaml").read_text())
    assert [run["name"] for run in config["train"]["runs"]] == list(runs) == list(DEMO_RUNS)
    for run, n_betas in runs.items():
        final = demo_run / "results" / "train" / "runs" / run / "final.safetensors"
        with safe_open(str(final), framework="pt") as handle:
            assert "transformer.resblocks.0.attn.in_proj_weight" in set(handle.keys())
        lines = (final.parent / "metrics.jsonl").read_text().splitlines()
        assert lines and all(
            {"step", "loss", "lr", "samples_per_s"} <= set(json.loads(line)) for line in lines
        )
        variants = sorted(
            p.name
            for p in (demo_run / "results" / "eval" / "retrieval").iterdir()
            if p.name.startswith(f"{run}-beta")
        )
        assert len(variants) == n_betas, variants
    draft = [
        json.loads(line)
        for line in (demo_run / "results/train/runs/tiny-draft-llava/metrics.jsonl")
        .read_text()
        .splitlines()
    ]
    assert all({"contrastive", "mmd"} <= set(line) for line in draft)
    for dataset in ("vqa_real", "vqa_abstract"):
        record = read_json(demo_run / f"results/eval/vqa/tiny-draft-llava-beta0.9/{dataset}.json")
        assert record["text_variant"] == "embedding_blend" and record["beta"] == 0.9
        assert record["other"] == "results/train/runs/tiny-draft-llava/final.safetensors"
    # The weight blend of the first DRAFT run, on the same sets (resources/demo/config.yaml).
    for dataset, kind in (("coco", "retrieval"), ("vqa_real", "vqa"), ("vqa_abstract", "vqa")):
        record = read_json(
            demo_run / f"results/eval/{kind}/tiny-draft-llava-wblend-beta0.9/{dataset}.json"
        )
        assert (record["text_variant"], record["beta"]) == ("weight_blend", 0.9)
