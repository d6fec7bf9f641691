"""The whole report folder from synthetic result files: tables, plots, training curves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from report_helpers import write_retrieval, write_vqa

from dialogclip.report.build import PLOTS, quality_grid
from dialogclip.report.plots import read_training_metrics, training_loss

REPO = Path(__file__).resolve().parents[2]
NUMBERS = REPO / "resources" / "thesis" / "numbers.yaml"


def _write_metrics(path: Path, losses: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"step": i, "epoch": i // 2, "loss": loss, "lr": 1e-5 * (i + 1),
                    "samples_per_s": 100.0})
        for i, loss in enumerate(losses)
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def test_training_metrics_are_read_per_run(tmp_path: Path) -> None:
    runs_dir = tmp_path / "train" / "runs"
    _write_metrics(runs_dir / "c3m" / "metrics.jsonl", [2.0, 1.5, 1.2])
    _write_metrics(runs_dir / "draft" / "metrics.jsonl", [3.0, 2.0])
    runs = read_training_metrics([runs_dir / "draft" / "metrics.jsonl",
                                  runs_dir / "c3m" / "metrics.jsonl"])  # fmt: skip
    assert list(runs) == ["draft", "c3m"]  # named by the run's folder, in the given order
    assert [r["loss"] for r in runs["c3m"]] == [2.0, 1.5, 1.2]
    assert read_training_metrics([]) == {}


def test_a_run_given_twice_names_the_second_file(tmp_path: Path) -> None:
    first = tmp_path / "runs" / "draft" / "metrics.jsonl"
    work = tmp_path / "runs" / "draft" / "work" / "draft" / "metrics.jsonl"
    _write_metrics(first, [1.0])
    _write_metrics(work, [1.0])
    with pytest.raises(ValueError, match=rf"{work}: a second metrics file of run 'draft'"):
        read_training_metrics([first, work])


def test_a_bad_training_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "train" / "run" / "metrics.jsonl"
    _write_metrics(path, [1.0])
    path.write_text(path.read_text() + '{"step": 1, "loss": 0.5}\n')
    with pytest.raises(ValueError, match=rf"{path}:2: missing \['epoch', 'lr', 'samples_per_s'\]"):
        read_training_metrics([path])


def test_training_loss_plot_with_and_without_runs(tmp_path: Path) -> None:
    _write_metrics(tmp_path / "train" / "run" / "metrics.jsonl", [2.0, 1.0])
    training_loss(read_training_metrics([tmp_path / "train" / "run" / "metrics.jsonl"]),
                  tmp_path / "curves.png")  # fmt: skip
    training_loss({}, tmp_path / "none.png")
    with Image.open(tmp_path / "curves.png") as curves, Image.open(tmp_path / "none.png") as none:
        # two panels (loss, lr), 10 x 3.8 in at 100 dpi, and a row of legend (0.2 in) below
        assert curves.size == (1000, 400)
        assert none.size == (600, 250)  # the "no training run yet" notice


def _quality(generator: str) -> dict:
    describe = {"n": 2, "mean": 0.5, "std": 0.1, "min": 0.4, "median": 0.5, "p95": 0.6, "max": 0.6}
    lengths = {**describe, "beyond_context": 1, "share_beyond_context": 0.25,
               "histogram": {"20": 3, "80": 1}}  # fmt: skip
    return {
        "generator": generator,
        "clip": {"architecture": "tiny-clip", "pretrained": "x.safetensors"},
        "rows": {"generated": 4},
        "parse": {"ok": 3, "unparsed": 1},
        "parse_rate": 0.75,
        "finish_reasons": {"stop": 3, "length": 1},
        "finish_reason_shares": {"stop": 0.75, "length": 0.25},
        "clipscore": {
            "weight": 2.5, "n_images": 2, "dialogue": {**describe, "mean": 0.61},
            "caption": {**describe, "mean": 0.52},
            "dialogue_minus_caption": {**describe, "mean": 0.09},
            "histogram": {"edges": [0.0, 1.25, 2.5], "dialogue": [2, 0], "caption": [1, 1]},
        },
        "tokens": {"context_length": 77, "long_texts": "truncate", "dropped_pairs": 0,
                   "dialogue": lengths, "pair": {**lengths, "share_beyond_context": 0.0},
                   "caption": {**lengths, "share_beyond_context": 0.0},
                   "generated_per_image": describe},
    }  # fmt: skip


def test_dialogue_quality_table_per_generator() -> None:
    grid = quality_grid({"blip2": None, "llava": _quality("llava")})
    assert grid.rows[0] == ["blip2", *([None] * 14)]
    row = dict(zip(grid.headers, grid.rows[1], strict=True))
    assert row["parse ok %"] == "75.0" and row["finish length %"] == "25.0"
    assert (row["CLIPScore dialogue"], row["CLIPScore caption"]) == ("0.610", "0.520")
    assert row["dialogues > context %"] == "25.0" and row["pairs > context %"] == "0.0"
    assert "tiny-clip (x.safetensors)" in grid.note and "context = 77" in grid.note


def test_report_command_writes_every_table_and_plot(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_retrieval(results, "b32", [0.40, 0.66, 0.76, 0.57, 0.80, 0.875])
    write_retrieval(results, "blend", [0.41, 0.67, 0.77, 0.58, 0.81, 0.88])
    write_vqa(results, "b32", "vqa_real", 25.0, {"yes/no": 60.0, "number": 10.0, "other": 12.5})
    (results / "ingest").mkdir(parents=True)
    (results / "ingest" / "summary.json").write_text(json.dumps(
        {"status_counts": {"success": 7, "failed_to_download": 3}, "success_rate": 0.7,
         "error_kind_counts": {"http_404": 2, "timeout": 1}}))  # fmt: skip
    (results / "dialogue" / "llava").mkdir(parents=True)
    (results / "dialogue" / "llava" / "summary.json").write_text(
        json.dumps({"parse": {"ok": 3, "unparsed": 1}, "parse_rate": 0.75})
    )
    (results / "report" / "dialogue_quality").mkdir(parents=True)
    (results / "report" / "dialogue_quality" / "llava.json").write_text(
        json.dumps(_quality("llava"))
    )
    metrics = results / "train" / "runs" / "draft" / "metrics.jsonl"
    _write_metrics(metrics, [2.0, 1.0])
    params = {
        "models": [
            {"name": "b32", "architecture": "ViT-B-32", "pretrained": "laion2b_s34b_b79k",
             "thesis_row": "clip-vitb32-laion2b", "datasets": None},
            {"name": "blend", "architecture": "ViT-B-32", "pretrained": "laion2b_s34b_b79k",
             "text_variant": "weight_blend", "other": "d.safetensors", "beta": 0.9,
             "datasets": ["coco"]},
        ],
        "generators": ["blip2", "llava"],
        "decimals": 2,
        "note": "Numbers of a miniature world.",
    }  # fmt: skip
    out = results / "report"
    result = subprocess.run(
        [sys.executable, "-m", "dialogclip.cli", "report", "--params", json.dumps(params),
         "--thesis", str(NUMBERS), "--results-dir", str(results),
         "--metrics", str(metrics), "--output-dir", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    tables = ["retrieval", "beta_ablation", "only_third", "vqa", "no_mmd", "dialogue_quality"]
    assert sorted(p.name for p in (out / "tables").iterdir()) == sorted(
        f"{name}{suffix}" for name in tables for suffix in (".md", ".csv", ".html")
    )
    assert sorted(p.stem for p in (out / "plots").iterdir()) == sorted(PLOTS)
    for png in (out / "plots").iterdir():
        with Image.open(png) as image:
            image.load()
            assert image.size[0] > 0
    page = (out / "report.md").read_text()
    assert page.startswith("# DialogCLIP report\n\nNumbers of a miniature world.\n")
    assert "| CLIP ViT-B-32 (LAION-2B) | b32 | ours | 40.00 |" in page
    assert (
        "| ViT-B-32 (laion2b_s34b_b79k), weight_blend beta 0.9 | blend | ours | 0.9 | 41.00 |"
        in page
    )
    assert "| llava | 4 | 75.0 |" in page and "![training_loss](plots/training_loss.png)" in page
    vqa = (out / "tables" / "vqa.md").read_text()
    assert (
        "| CLIP ViT-B-32 (LAION-2B) | b32 | ours | - | - | - | - | - "
        "| 60.00 | 10.00 | 12.50 | 25.00 |" in vqa
    )
    with Image.open(out / "plots" / "training_loss.png") as curves:
        assert curves.size == (1000, 400)  # the run was drawn, not the "no run" notice
