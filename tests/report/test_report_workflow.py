"""The report rules in the DAG: what an edit reruns, what a finished demo wrote, config errors."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest
import yaml
from workflow_helpers import REPO_ROOT, copy_demo, planned_jobs, snakemake

from dialogclip.core.io import read_json

pytestmark = pytest.mark.dag

DEMO_CONFIG = yaml.safe_load((REPO_ROOT / "resources" / "demo" / "config.yaml").read_text())


def _config(tmp_path: Path, report: dict | None = None, **entries: dict) -> str:
    """A copy of the demo's config (outside the demo folder) with its ``report`` section
    updated and evaluate.models entries edited by name; its path, for --configfile."""
    config = copy.deepcopy(DEMO_CONFIG)
    config["report"].update(report or {})
    for entry in config["evaluate"]["models"]:
        entry.update(entries.get(entry["name"], {}))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_finished_demo_has_the_report(finished_demo: Path) -> None:
    report = finished_demo / "results" / "report"
    tables = ["retrieval", "beta_ablation", "only_third", "vqa", "no_mmd", "dialogue_quality"]
    for name in tables:
        for suffix in (".md", ".csv", ".html"):
            assert (report / "tables" / f"{name}{suffix}").is_file(), f"{name}{suffix}"
    assert len(list((report / "plots").glob("*.png"))) == 8
    # each training run's curve once (not again from its work/ folder's copy of the metrics)
    runs = [run["name"] for run in DEMO_CONFIG["train"]["runs"]]
    log = (finished_demo / "logs" / "report" / "report.log").read_text()
    assert f"training curves of {len(runs)} runs: {', '.join(runs)}\n" in log
    # the gallery: report.gallery.samples (default 12) of the downloaded images, linked
    downloaded = read_json(finished_demo / "results" / "ingest" / "summary.json")
    n_downloaded = downloaded["status_counts"]["success"]
    gallery = (report / "gallery.html").read_text()
    assert f"12 of {n_downloaded} downloaded images" in gallery
    assert gallery.count('<div class="sample">') == 12
    assert (
        "[12 sample images with their dialogue](gallery.html)" in (report / "report.md").read_text()
    )
    retrieval = read_json(finished_demo / "results" / "eval" / "retrieval" / "tiny" / "coco.json")
    r1 = 100 * retrieval["metrics"]["image_retrieval_recall@1"]
    # the demo links `tiny` to the thesis' CLIP ViT-B-32 (LAION-400M) row (img R@1 34.2)
    assert (
        f"| CLIP ViT-B-32 (LAION-400M) | tiny | ours | {r1:.2f} |"
        in (report / "tables" / "retrieval.md").read_text()
    )
    for generator in ("blip2", "llava"):
        quality = read_json(report / "dialogue_quality" / f"{generator}.json")
        summary = read_json(finished_demo / "results" / "dialogue" / generator / "summary.json")
        assert quality["rows"]["generated"] == summary["rows"]["generated"]
        assert quality["parse"] == summary["parse"]
        # sample: null in the demo: every image with dialogue is scored
        assert quality["clipscore"]["n_images"] == quality["rows"]["with_dialogue"] > 0
        assert quality["clip"]["architecture"] == "tiny-clip"


def test_another_scoring_clip_reruns_dialogue_quality_and_report(
    finished_demo: Path, tmp_path: Path
) -> None:
    clip = {"architecture": "tiny-clip", "pretrained": "results/models/tiny-clip-1.safetensors"}
    config = _config(tmp_path, report={"clip": clip})
    assert planned_jobs(finished_demo, "--configfile", config) == Counter(
        {"dialogue_quality": 2, "report": 1}
    )


def test_linking_an_entry_to_the_thesis_reruns_only_the_report(
    finished_demo: Path, tmp_path: Path
) -> None:
    link = {"tiny-weight-blend": {"thesis_row": "draft-vitb32-laion400m"}}
    config = _config(tmp_path, **link)
    assert planned_jobs(finished_demo, "--configfile", config) == Counter({"report": 1})


def test_an_evaluation_beta_reruns_that_entry_and_the_report(
    finished_demo: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, **{"tiny-weight-blend": {"beta": 0.5}})
    assert planned_jobs(finished_demo, "--configfile", config) == Counter(
        {"eval_retrieval": 1, "eval_vqa": 1, "report": 1}
    )


def test_the_clip_batch_size_is_a_machine_setting(finished_demo: Path) -> None:
    assert planned_jobs(finished_demo, "--set-resources", "dialogue_quality:batch_size=7") == {}


def test_unknown_thesis_row_stops_the_workflow(finished_demo: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, tiny={"thesis_row": "clip-vitb32-laion4OOm"})
    result = snakemake(finished_demo, "--dry-run", "--configfile", config, timeout=300)
    assert result.returncode != 0
    assert (
        "evaluate.models: tiny has thesis_row 'clip-vitb32-laion4OOm', which is not a row of "
        f"{REPO_ROOT / 'resources' / 'thesis' / 'numbers.yaml'}" in result.stdout + result.stderr
    )


def test_a_thesis_row_without_comparison_stops_the_workflow(
    finished_demo: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, report={"compare_with_thesis": False})
    result = snakemake(finished_demo, "--dry-run", "--configfile", config, timeout=300)
    assert result.returncode != 0
    assert (
        "evaluate.models: tiny has thesis_row 'clip-vitb32-laion400m', but "
        "report.compare_with_thesis is false" in result.stdout + result.stderr
    )


def test_report_switched_off_plans_no_report_job(tmp_path: Path) -> None:
    workdir = copy_demo(tmp_path / "demo")
    planned = planned_jobs(workdir, "--configfile", _config(tmp_path, report={"activate": False}))
    assert planned["report"] == planned["dialogue_quality"] == 0
    assert planned["eval_retrieval"] == 14  # 3 entries + the 11 variants of the training runs
    no_quality = {"dialogue_quality": {"activate": False}}
    planned = planned_jobs(workdir, "--configfile", _config(tmp_path, report=no_quality))
    assert (planned["report"], planned["dialogue_quality"]) == (1, 0)
