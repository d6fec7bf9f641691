"""The report's plots fit their figures: every series once, short labels, legends off the axes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from report_helpers import write_retrieval, write_vqa

from dialogclip.report import plots
from dialogclip.report.settings import report_settings_from_params
from dialogclip.report.tables import build_tables, collect_results
from dialogclip.report.thesis import load_thesis_numbers

REPO = Path(__file__).resolve().parents[2]
NUMBERS = REPO / "resources" / "thesis" / "numbers.yaml"
MAX_LABEL = 40  # characters of a legend label
BASE = "results/models/world-clip.safetensors"
RUN_TOWER = "results/train/runs/{run}/final.safetensors"


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plot functions draw, kept open (they are still written as PNG)."""
    drawn: list[Any] = []
    save = plots._save

    def keep(fig: Any, path: Path) -> None:
        drawn.append(fig)
        save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return drawn


def _tables(tmp_path: Path) -> dict:
    """A baseline, a third tower's beta sweep and a DRAFT run's blends, as the demo's."""
    base = {"architecture": "world-clip", "pretrained": BASE}
    third = {**base, "text_variant": "embedding_blend", "other": RUN_TOWER.format(run="c3m")}
    draft = {**base, "text_variant": "weight_blend", "other": RUN_TOWER.format(run="draft")}
    models = [{**base, "name": "world", "thesis_row": "clip-vitb32-laion2b"}]
    models += [{**third, "name": f"c3m-beta{b}", "beta": b} for b in (0.9, 0.6, 0.0)]
    models += [{**draft, "name": f"draft-beta{b}", "beta": b} for b in (0.9, 0.0)]
    settings = report_settings_from_params({"models": models, "generators": [], "decimals": 2})
    results = tmp_path / "results"
    for k, model in enumerate(models):
        r1 = 0.30 + 0.01 * k
        write_retrieval(results, model["name"], [r1, 0.6, 0.7, r1, 0.6, 0.7])
        write_vqa(results, model["name"], "vqa_real", 20.0 + k,
                  {"yes/no": 50.0, "number": 10.0, "other": 15.0})  # fmt: skip
    thesis = load_thesis_numbers(NUMBERS)
    return build_tables(thesis, settings, collect_results(settings, results))


def _legend_labels(fig: Any) -> list[str]:
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def _assert_legends_off_the_axes(fig: Any) -> None:
    canvas = FigureCanvasAgg(fig)  # pyplot let go of the figure when it was saved
    canvas.draw()  # laid out as the saved PNG
    renderer = canvas.get_renderer()
    assert fig.legends, "no figure legend"
    for ax in fig.axes:
        assert ax.get_legend() is None, f"a legend on the axes {ax.get_title()!r}"
        for legend in fig.legends:
            assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def test_beta_curve_names_each_family_once_and_briefly(tmp_path: Path, figures: list) -> None:
    plots.beta_curve(_tables(tmp_path)["beta_ablation"], tmp_path / "beta.png")
    (fig,) = figures
    labels = _legend_labels(fig)
    assert labels == [
        "thesis (C3M B-32, BLIP-2)",
        "ours: world-clip + c3m",
        "ours: world-clip + draft (weights)",
    ]
    assert all(len(label) <= MAX_LABEL and "/" not in label for label in labels), labels
    _assert_legends_off_the_axes(fig)
    c3m = [line for line in fig.axes[0].get_lines() if line.get_label().endswith("+ c3m")]
    assert [list(c3m[0].get_xdata())] == [[0.0, 0.6, 0.9]]


def test_training_loss_draws_each_run_once(tmp_path: Path, figures: list) -> None:
    metrics = []
    for run in ("c3m", "draft"):
        path = tmp_path / "runs" / run / "metrics.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text(
            '{"step": 1, "epoch": 0, "loss": 2.0, "lr": 1e-4, "samples_per_s": 9}\n'
            '{"step": 2, "epoch": 0, "loss": 1.5, "lr": 5e-5, "samples_per_s": 9}\n'
        )
        # the run's in-progress copy, which a folder search would plot a second time
        (path.parent / "work" / "abc").mkdir(parents=True)
        (path.parent / "work" / "abc" / "metrics.jsonl").write_text(path.read_text())
        metrics.append(path)
    plots.training_loss(plots.read_training_metrics(metrics), tmp_path / "loss.png")
    (fig,) = figures
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["c3m", "draft"]
    assert _legend_labels(fig) == ["c3m", "draft"]
    _assert_legends_off_the_axes(fig)


@pytest.mark.parametrize("plot", ["recall_bars", "vqa_answer_types"])
def test_bar_legends_sit_below_the_bars(tmp_path: Path, figures: list, plot: str) -> None:
    table = _tables(tmp_path)["retrieval" if plot == "recall_bars" else "vqa"]
    getattr(plots, plot)(table, tmp_path / f"{plot}.png")
    (fig,) = figures
    labels = _legend_labels(fig)
    assert len(labels) == len(set(labels)) > 1
    assert all(len(label) <= MAX_LABEL for label in labels), labels
    _assert_legends_off_the_axes(fig)
