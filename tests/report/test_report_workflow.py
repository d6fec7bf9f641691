"""The report rules in the DAG: what an edit reruns, what a finished demo wrote, config errors."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest
import yaml
from demo_blends import DRAFT_FINAL, blended_demo
from workflow_helpers import REPO_ROOT, copy_demo, edited_config, planned_jobs, snakemake

from dialogclip.core.io import read_json

pytestmark = pytest.mark.dag

DEMO_CONFIG = yaml.safe_load((REPO_ROOT / "resources" / "demo" / "config.yaml").read_text())
# The thesis' CLIP ViT-B-32 (LAION-400M) row (img R@1 34.2), to link the demo's `tiny` to: the
# demo compares with no thesis row (report.compare_with_thesis: false), a config may.
THESIS_ROW = "clip-vitb32-laion400m"
COMPARE = {"compare_with_thesis": True}


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
    # the demo compares with no thesis row: `tiny` on its own line, described by its model, and
    # no thesis or difference row anywhere
    (tiny,) = (entry for entry in DEMO_CONFIG["evaluate"]["models"] if entry["name"] == "tiny")
    table = (report / "tables" / "retrieval.md").read_text()
    assert f"| {tiny['architecture']} ({tiny['pretrained']}) | tiny | ours | {r1:.2f} |" in table
    assert "| thesis |" not in table and "| Δ |" not in table
    for generator in ("blip2", "llava"):
        quality = read_json(report / "dialogue_quality" / f"{generator}.json")
        summary = read_json(finished_demo / "results" / "dialogue" / generator / "summary.json")
        assert quality["rows"]["generated"] == summary["rows"]["generated"]
        assert quality["parse"] == summary["parse"]
        # sample: null in the demo: every image with dialogue is scored
        assert quality["clipscore"]["n_images"] == quality["rows"]["with_dialogue"] > 0
        clip = DEMO_CONFIG["report"]["clip"]
        assert {key: quality["clip"][key] for key in clip} == clip  # the configured scorer


def test_another_scoring_clip_reruns_dialogue_quality_and_report(
    finished_demo: Path, tmp_path: Path
) -> None:
    # the DRAFT run's CLIP (the demo's own output) scoring instead of the world's
    clip = {"architecture": "world-clip", "pretrained": DRAFT_FINAL}
    config = _config(tmp_path, report={"clip": clip})
    assert planned_jobs(finished_demo, "--configfile", config) == Counter(
        {"dialogue_quality": 2, "report": 1}
    )


def test_linking_an_entry_to_the_thesis_reruns_only_the_report(
    finished_demo: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, report=COMPARE, tiny={"thesis_row": THESIS_ROW})
    assert planned_jobs(finished_demo, "--configfile", config) == Counter({"report": 1})


def test_an_evaluation_beta_reruns_that_entry_and_the_report(
    finished_demo: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    demo = blended_demo(finished_demo, tmp_path_factory)  # tiny-weight-blend: coco, vqa_abstract

    def edit(config: dict) -> None:
        (blend,) = (e for e in config["evaluate"]["models"] if e["name"] == "tiny-weight-blend")
        blend["beta"] = 0.5

    config = edited_config(demo, tmp_path, edit)
    assert planned_jobs(demo, "--configfile", config) == Counter(
        {"eval_retrieval": 1, "eval_vqa": 1, "report": 1}
    )


def test_the_clip_batch_size_is_a_machine_setting(finished_demo: Path) -> None:
    assert planned_jobs(finished_demo, "--set-resources", "dialogue_quality:batch_size=7") == {}


def test_unknown_thesis_row_stops_the_workflow(finished_demo: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, report=COMPARE, tiny={"thesis_row": "clip-vitb32-laion4OOm"})
    result = snakemake(finished_demo, "--dry-run", "--configfile", config, timeout=300)
    assert result.returncode != 0
    assert (
        "evaluate.models: tiny has thesis_row 'clip-vitb32-laion4OOm', which is not a row of "
        f"{REPO_ROOT / 'resources' / 'thesis' / 'numbers.yaml'}" in result.stdout + result.stderr
    )


def test_a_thesis_row_without_comparison_stops_the_workflow(
    finished_demo: Path, tmp_path: Path
) -> None:
    no_comparison = {"compare_with_thesis": False}  # as in the demo
    config = _config(tmp_path, report=no_comparison, tiny={"thesis_row": THESIS_ROW})
    result = snakemake(finished_demo, "--dry-run", "--configfile", config, timeout=300)
    assert result.returncode != 0
    assert (
        f"evaluate.models: tiny has thesis_row '{THESIS_ROW}', but "
        "report.compare_with_thesis is false" in result.stdout + result.stderr
    )


def test_report_switched_off_plans_no_report_job(tmp_path: Path) -> None:
    workdir = copy_demo(tmp_path / "demo")
    full = planned_jobs(workdir)
    planned = planned_jobs(workdir, "--configfile", _config(tmp_path, report={"activate": False}))
    assert planned["report"] == planned["dialogue_quality"] == 0
    # everything else as with the report: generation, training, every evaluation
    assert planned == full - Counter({"report": 1, "dialogue_quality": 2})
    no_quality = {"dialogue_quality": {"activate": False}}
    planned = planned_jobs(workdir, "--configfile", _config(tmp_path, report=no_quality))
    assert (planned["report"], planned["dialogue_quality"]) == (1, 0)
