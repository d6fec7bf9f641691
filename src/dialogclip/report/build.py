"""Build the whole report folder from the files the other stages wrote.

``results/report/`` (``output_dir``):

- ``tables/{name}.md|.csv|.html``: one per table of ``numbers.yaml`` (the thesis' layouts) and
  ``dialogue_quality`` (one line per generator);
- ``plots/{name}.png``: :data:`PLOTS`;
- ``report.md``: every table and plot on one page.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dialogclip.core.io import atomic_path, read_json
from dialogclip.report import plots
from dialogclip.report.gallery import write_gallery
from dialogclip.report.settings import ReportSettings
from dialogclip.report.tables import (
    Grid,
    Table,
    build_tables,
    collect_results,
    table_grid,
    write_grid,
    write_table,
)
from dialogclip.report.thesis import ThesisNumbers

log = logging.getLogger(__name__)

QUALITY_TABLE = "dialogue_quality"
GALLERY = "gallery.html"  # the gallery page, beside report.md
PLOTS = (
    "recall_bars",
    "beta_curve",
    "vqa_answer_types",
    "download_errors",
    "parse_rates",
    "training_loss",
    "dialogue_clipscore",
    "dialogue_tokens",
)
TABLE_FORMATS = (".md", ".csv", ".html")


@dataclass(frozen=True)
class ReportInputs:
    """Where the report reads (every path under ``results_dir`` by the stages' conventions)."""

    results_dir: Path  # results/
    thesis: ThesisNumbers
    settings: ReportSettings

    def ingest_summary(self) -> dict[str, Any] | None:
        return _maybe_json(self.results_dir / "ingest" / "summary.json")

    def dialogue_summary(self, generator: str) -> dict[str, Any] | None:
        return _maybe_json(self.results_dir / "dialogue" / generator / "summary.json")

    def dialogue_quality(self, generator: str) -> dict[str, Any] | None:
        return _maybe_json(quality_path(self.results_dir, generator))


def quality_path(results_dir: Path, generator: str) -> Path:
    """The dialogue-quality summary of one generator."""
    return Path(results_dir) / "report" / "dialogue_quality" / f"{generator}.json"


def _maybe_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); rerun the rule that writes it") from err


def _pct(value: float | None, decimals: int = 1) -> str | None:
    return None if value is None else f"{100 * value:.{decimals}f}"


def _num(value: float | None, decimals: int = 3) -> str | None:
    return None if value is None else f"{value:.{decimals}f}"


def quality_grid(quality: Mapping[str, Mapping[str, Any] | None]) -> Grid:
    """One line per generator: parse success, finish reasons, CLIPScore, lengths."""
    headers = [
        "generator",
        "images",
        "parse ok %",
        "finish stop %",
        "finish length %",
        "CLIPScore dialogue",
        "CLIPScore caption",
        "dialogue - caption",
        "scored images",
        "dialogue tokens median",
        "dialogue tokens p95",
        "dialogues > context %",
        "pairs > context %",
        "captions > context %",
        "generated tokens / image",
    ]
    rows = []
    for generator, q in quality.items():
        if not q:
            rows.append([generator, *([None] * (len(headers) - 1))])
            continue
        score, tokens, shares = q["clipscore"], q["tokens"], q["finish_reason_shares"]
        rows.append(
            [
                generator,
                str(q["rows"]["generated"]),
                _pct(q["parse_rate"]),
                _pct(shares.get("stop", 0.0) if shares else None),
                _pct(shares.get("length", 0.0) if shares else None),
                _num(score["dialogue"]["mean"]),
                _num(score["caption"]["mean"]),
                _num(score["dialogue_minus_caption"]["mean"], 3),
                str(score["n_images"]),
                _num(tokens["dialogue"]["median"], 1),
                _num(tokens["dialogue"]["p95"], 1),
                _pct(tokens["dialogue"]["share_beyond_context"]),
                _pct(tokens["pair"]["share_beyond_context"]),
                _pct(tokens["caption"]["share_beyond_context"]),
                _num(tokens["generated_per_image"]["mean"], 1),
            ]
        )
    context = {q["tokens"]["context_length"] for q in quality.values() if q}
    clip = {
        f"{q['clip']['architecture']} ({q['clip']['pretrained']})" for q in quality.values() if q
    }
    note = (
        "CLIPScore = 2.5 * max(cos, 0) of the text (prefixed 'A photo depicts') and the image "
        f"(Hessel et al. 2021) with {', '.join(sorted(clip)) or '-'}; tokens = the CLIP "
        f"tokenizer's, start/end included; context = {', '.join(map(str, sorted(context))) or '-'}."
    )
    return Grid(title="Dialogue quality per generator", headers=headers, rows=rows, note=note)


def build_report(
    inputs: ReportInputs,
    output_dir: Path,
    metrics: Sequence[Path] = (),
    ingested: Sequence[Path] = (),
    dialogue: Mapping[str, Sequence[Path]] | None = None,
) -> None:
    """Write every table, plot, the gallery and ``report.md`` into ``output_dir``.

    ``metrics``: each training run's ``metrics.jsonl``; ``ingested`` and ``dialogue`` (per
    generator, its shards): the gallery's images and dialogue.
    """
    output_dir = Path(output_dir)
    settings, thesis = inputs.settings, inputs.thesis
    results = collect_results(settings, inputs.results_dir)
    tables = build_tables(thesis, settings, results)
    for name, table in tables.items():
        write_table(table, output_dir / "tables" / name)
    quality = {g: inputs.dialogue_quality(g) for g in settings.generators}
    quality_table = quality_grid(quality)
    write_grid(quality_table, output_dir / "tables" / QUALITY_TABLE)

    plot_dir = output_dir / "plots"
    empty = Table(name="", title="", columns=[], info=[], lines=[])
    plots.recall_bars(tables.get("retrieval", empty), plot_dir / "recall_bars.png")
    plots.beta_curve(tables.get("beta_ablation", empty), plot_dir / "beta_curve.png")
    plots.vqa_answer_types(tables.get("vqa", empty), plot_dir / "vqa_answer_types.png")
    plots.download_errors(inputs.ingest_summary(), plot_dir / "download_errors.png")
    summaries = {g: inputs.dialogue_summary(g) for g in settings.generators}
    plots.parse_rates(summaries, quality, plot_dir / "parse_rates.png")
    runs = plots.read_training_metrics(metrics)
    plots.training_loss(runs, plot_dir / "training_loss.png")
    plots.dialogue_clipscore(quality, plot_dir / "dialogue_clipscore.png")
    plots.dialogue_tokens(quality, plot_dir / "dialogue_tokens.png")

    page = ["# DialogCLIP report", ""]
    if settings.note:
        page += [settings.note.strip(), ""]
    page += [table_grid(table).markdown() for table in tables.values()]
    page += [quality_table.markdown(), "## Plots", ""]
    page += [f"![{name}](plots/{name}.png)\n" for name in PLOTS]
    samples = write_gallery(ingested, dialogue or {}, settings.gallery.samples,
                            output_dir / GALLERY)  # fmt: skip
    page += ["## Gallery", "", f"[{len(samples)} sample images with their dialogue]({GALLERY})", ""]
    with atomic_path(output_dir / "report.md") as tmp:
        tmp.write_text("\n".join(page))
    log.info(
        "report: %d tables, %d plots, %d evaluation entries, %d training runs -> %s",
        len(tables) + 1, len(PLOTS), len(settings.models), len(runs), output_dir,
    )  # fmt: skip
