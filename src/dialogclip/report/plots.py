"""The report's PNG plots (matplotlib, Agg backend: no display needed).

Each function writes one PNG atomically. When there is nothing to plot (no training run yet,
no result on a table) the PNG still appears, saying so in words, so the report's file set is
always the same.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dialogclip.core.io import atomic_path
from dialogclip.report.tables import METRIC_HEADERS, Column, Table

log = logging.getLogger(__name__)

DPI = 100
OURS_COLOR = "#1f77b4"
THESIS_COLOR = "#222222"
TRAIN_FIELDS = ("step", "epoch", "loss", "lr", "samples_per_s")
LEGEND_FONT = 8
LEGEND_ROW_INCHES = 0.2  # height a row of the figure legend takes at LEGEND_FONT


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never look for a display
    import matplotlib.pyplot as plt

    return plt


def _figure(ncols: int, width: float, height: float, legend_rows: int = 0) -> tuple[Any, Any]:
    """A row of ``ncols`` axes laid out by matplotlib's constrained layout, ``legend_rows``
    rows of figure legend taller (the legend sits below the axes, never on them)."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, ncols, figsize=(width, height + LEGEND_ROW_INCHES * legend_rows), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    return fig, axes[0]


def _legend_rows(n_labels: int, ncol: int) -> int:
    return -(-n_labels // ncol)


def _legend_below(fig: Any, axes: Sequence[Any], ncol: int) -> None:
    """One legend for the whole figure, below its axes: each label once, in drawing order
    (a series drawn on several panels is one entry)."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside lower center",
                   ncol=min(ncol, len(entries)), fontsize=LEGEND_FONT, frameon=False)  # fmt: skip


def _save(fig: Any, path: Path) -> None:
    plt = _pyplot()
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        # metadata Software=None: the PNG bytes depend on the data only
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)


def _empty(path: Path, title: str, message: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, color="#555555")
    _save(fig, path)


def recall_bars(table: Table, path: Path) -> None:
    """COCO recall@k of every line with a result: bars = ours, black ticks = the thesis."""
    lines = [line for line in table.lines if any(v is not None for v in line.ours.values())]
    title = "MSCOCO 5k zero-shot retrieval"
    if not lines:
        _empty(path, title, "no retrieval result yet")
        return
    directions = ("image", "text")
    fig, axes = _figure(2, max(8, 0.9 * len(lines) + 4), 4.5, legend_rows=1)
    width = 0.8 / 3
    for ax, direction in zip(axes, directions, strict=True):
        columns = [c for c in table.columns if c.metric.startswith(direction)]
        for k, column in enumerate(columns):
            xs = [i + (k - 1) * width for i in range(len(lines))]
            ours = [line.ours.get(column) or 0.0 for line in lines]
            ax.bar(xs, ours, width, label=f"R@{column.metric.rsplit('@', 1)[1]}",
                   alpha=0.45 + 0.25 * k, color=OURS_COLOR)  # fmt: skip
            thesis = [(x, line.thesis.get(column)) for x, line in zip(xs, lines, strict=True)]
            thesis = [(x, v) for x, v in thesis if v is not None]
            if thesis:
                ax.scatter(*zip(*thesis, strict=True), marker="_", s=300, color=THESIS_COLOR,
                           label="thesis" if k == 0 else None, zorder=3)  # fmt: skip
        ax.set_xticks(range(len(lines)))
        ax.set_xticklabels([_line_name(line) for line in lines], rotation=30, ha="right")
        arrow = "text -> image" if direction == "image" else "image -> text"
        ax.set_title(f"{direction} retrieval ({arrow})")
        ax.set_ylabel("recall (%)")
    _legend_below(fig, axes, ncol=4)
    _save(fig, path)


def _line_name(line: Any) -> str:
    return line.entry.name if line.entry is not None else line.label


def beta_curve(table: Table, path: Path) -> None:
    """R@1 against the blend weight beta: the thesis' ablation and each of our blend families
    (entries on the same image tower and second text tower)."""
    title = "Blend weight beta (1 = original text tower only)"
    r1 = [c for c in table.columns if c.metric.endswith("recall@1")]
    thesis_points = {
        c: sorted(
            (line.row.fields["beta"], line.thesis[c])
            for line in table.lines
            if line.row is not None and line.row.fields.get("beta") is not None
            and line.thesis.get(c) is not None
        )
        for c in r1
    }  # fmt: skip
    families: dict[str, dict[Column, list[tuple[float, float]]]] = {}
    for line in table.lines:
        if line.entry is None:
            continue
        entry = line.entry
        family = f"{_checkpoint_name(entry.pretrained)} + {_checkpoint_name(entry.other)}"
        if entry.text_variant == "weight_blend":  # a curve of its own beside the embeddings'
            family += " (weights)"
        for column in r1:
            value = line.ours.get(column)
            if value is not None:
                point = (entry.blend_weight, value)  # a plain entry: beta 1, its own tower
                families.setdefault(family, {}).setdefault(column, []).append(point)
    if not families and not any(thesis_points.values()):
        _empty(path, title, "no blend result")
        return
    n_series = len(families) + any(thesis_points.values())
    fig, axes = _figure(len(r1), 10, 4, legend_rows=_legend_rows(n_series, 2))
    for ax, column in zip(axes, r1, strict=True):
        if thesis_points[column]:
            ax.plot(*zip(*thesis_points[column], strict=True), "o--", color=THESIS_COLOR,
                    label="thesis (C3M B-32, BLIP-2)")  # fmt: skip
        for name, points in families.items():
            if column in points:
                ax.plot(*zip(*sorted(points[column]), strict=True), "o-", label=f"ours: {name}")
        ax.set_xlabel("beta")
        ax.set_ylabel(f"{column.header} (%)")
        ax.set_title(column.header)
        ax.invert_xaxis()
    _legend_below(fig, axes, ncol=2)
    fig.suptitle(title)
    _save(fig, path)


def _checkpoint_name(checkpoint: str | None) -> str:
    """A short name for a legend: a training run's tower by its run, a checkpoint file by its
    stem, a pretrained tag as it is; no second tower is the entry's own."""
    if checkpoint is None:
        return "own tower"
    path = Path(checkpoint)
    if path.suffix not in {".safetensors", ".pt", ".bin", ".pth"}:
        return checkpoint  # a pretrained tag (laion2b_s34b_b79k)
    return path.parent.name if path.stem == "final" else path.stem


def vqa_answer_types(table: Table, path: Path) -> None:
    """VQA accuracy per answer type for each line with a result (ticks: the thesis' overall)."""
    title = "VQA v1 multiple choice per answer type"
    lines = [line for line in table.lines if any(v is not None for v in line.ours.values())]
    datasets = list(dict.fromkeys(c.dataset for c in table.columns))
    if not lines:
        _empty(path, title, "no VQA result yet")
        return
    fig, axes = _figure(
        len(datasets), 6 * len(datasets), 4.5, legend_rows=_legend_rows(len(lines), 3)
    )
    for ax, dataset in zip(axes, datasets, strict=True):
        columns = [c for c in table.columns if c.dataset == dataset]
        width = 0.8 / max(len(lines), 1)
        for i, line in enumerate(lines):
            xs = [k + (i - (len(lines) - 1) / 2) * width for k in range(len(columns))]
            ax.bar(xs, [line.ours.get(c) or 0.0 for c in columns], width, label=_line_name(line))
            for x, column in zip(xs, columns, strict=True):
                if line.thesis.get(column) is not None:
                    ax.scatter([x], [line.thesis[column]], marker="_", s=200, color=THESIS_COLOR,
                               zorder=3)  # fmt: skip
        if not any(line.ours.get(c) is not None for line in lines for c in columns):
            ax.text(0.5, 0.5, "no result", transform=ax.transAxes, ha="center", color="#555555")
        ax.set_ylim(bottom=0)
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels([METRIC_HEADERS[c.metric] for c in columns])
        ax.set_ylabel("accuracy (%)")
        ticks = any(line.thesis.get(c) is not None for line in lines for c in columns)
        ax.set_title(dataset.replace("_", " ") + (" (ticks: thesis)" if ticks else ""))
    _legend_below(fig, axes, ncol=3)
    fig.suptitle(title)
    _save(fig, path)


def download_errors(summary: Mapping[str, Any] | None, path: Path) -> None:
    """Download outcome of every CC3M row: successes and each error kind."""
    title = "CC3M download: rows per outcome"
    if not summary:
        _empty(path, title, "no ingestion summary")
        return
    counts = {"success": summary.get("status_counts", {}).get("success", 0)}
    counts.update(summary.get("error_kind_counts", {}))
    labels = list(counts)[::-1]
    values = [counts[label] for label in labels]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.5))
    colors = ["#2ca02c" if label == "success" else "#d62728" for label in labels]
    ax.barh(labels, values, color=colors)
    for y, value in enumerate(values):
        ax.text(value, y, f" {value}", va="center", fontsize=8)
    ax.set_xlabel("rows")
    rate = summary.get("success_rate")
    ax.set_title(f"{title} (success {100 * rate:.1f} %)" if rate is not None else title)
    _save(fig, path)


def parse_rates(
    summaries: Mapping[str, Mapping[str, Any] | None],
    quality: Mapping[str, Mapping[str, Any] | None],
    path: Path,
) -> None:
    """Per generator: the share of each parse status, and of each finish reason."""
    title = "Dialogue parsing and finish reasons"
    generators = [g for g, s in summaries.items() if s]
    if not generators:
        _empty(path, title, "no dialogue summary")
        return
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), squeeze=False)
    _stacked(axes[0][0], {g: summaries[g].get("parse", {}) for g in generators}, "parse status")
    reasons = {g: (quality.get(g) or {}).get("finish_reasons", {}) for g in generators}
    _stacked(axes[0][1], reasons, "finish reason (per request)")
    for row, generator in enumerate(generators):
        rate = summaries[generator].get("parse_rate")
        if rate is not None:
            axes[0][0].text(1.0, row, f" {100 * rate:.1f} % ok", va="center", fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def _stacked(ax: Any, counts: Mapping[str, Mapping[str, int]], what: str) -> None:
    kinds = sorted({kind for c in counts.values() for kind in c})
    names = list(counts)
    left = [0.0] * len(names)
    for kind in kinds:
        shares = []
        for name in names:
            total = sum(counts[name].values())
            shares.append(counts[name].get(kind, 0) / total if total else 0.0)
        ax.barh(names, shares, left=left, label=kind)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set_xlim(0, 1.3)
    ax.set_xlabel("share")
    ax.set_title(what)
    if kinds:
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center")


def read_training_metrics(paths: Sequence[Path]) -> dict[str, list[dict[str, float]]]:
    """{run: records} from each run's ``metrics.jsonl`` (``results/train/runs/{run}/``; the run
    is the file's folder); each line a JSON object with at least step, epoch, loss, lr,
    samples_per_s. Given the files, not a folder to search: a run's ``work/`` folder holds an
    in-progress copy of the same records, which a search would plot a second time."""
    runs: dict[str, list[dict[str, float]]] = {}
    for path in map(Path, paths):
        run = path.parent.name
        if run in runs:
            raise ValueError(f"{path}: a second metrics file of run {run!r}")
        records = []
        for number, text in enumerate(path.read_text().splitlines(), start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err
            missing = [key for key in TRAIN_FIELDS if key not in record]
            if missing:
                raise ValueError(f"{path}:{number}: missing {missing}")
            records.append(record)
        runs[run] = records
    return runs


def training_loss(runs: Mapping[str, Sequence[Mapping[str, float]]], path: Path) -> None:
    """Loss and learning rate against the step, one line per training run."""
    title = "Training loss"
    runs = {name: records for name, records in runs.items() if records}
    if not runs:
        _empty(path, title, "no training run yet (results/train/**/metrics.jsonl)")
        return
    log.info("training curves of %d runs: %s", len(runs), ", ".join(runs))
    fig, axes = _figure(2, 10, 3.8, legend_rows=_legend_rows(len(runs), 3))
    for name, records in runs.items():
        steps = [r["step"] for r in records]
        axes[0].plot(steps, [r["loss"] for r in records], label=name)
        axes[1].plot(steps, [r["lr"] for r in records], label=name)
    axes[0].set_title("loss")
    axes[1].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("step")
    _legend_below(fig, axes, ncol=3)
    fig.suptitle(title)
    _save(fig, path)


def dialogue_clipscore(quality: Mapping[str, Mapping[str, Any] | None], path: Path) -> None:
    """CLIPScore histograms of dialogue and caption against the image, per generator."""
    title = "CLIPScore against the image (Hessel et al. 2021)"
    generators = [g for g, q in quality.items() if q and q["clipscore"]["n_images"]]
    if not generators:
        _empty(path, title, "no dialogue scored")
        return
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(generators), figsize=(5 * len(generators), 3.5), squeeze=False)
    for ax, generator in zip(axes[0], generators, strict=True):
        score = quality[generator]["clipscore"]
        edges = score["histogram"]["edges"]
        for what, color in (("dialogue", OURS_COLOR), ("caption", "#ff7f0e")):
            mean = score[what]["mean"]
            ax.stairs(score["histogram"][what], edges, label=f"{what} (mean {mean:.3f})",
                      color=color)  # fmt: skip
        ax.set_xlabel(f"CLIPScore (w = {score['weight']:g})")
        ax.set_ylabel("images")
        ax.set_title(f"{generator} ({score['n_images']} images)")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def dialogue_tokens(quality: Mapping[str, Mapping[str, Any] | None], path: Path) -> None:
    """CLIP token lengths of dialogues, single pairs and captions, with the context limit."""
    title = "Text lengths in CLIP tokens"
    generators = [g for g, q in quality.items() if q]
    if not generators:
        _empty(path, title, "no dialogue statistics")
        return
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(generators), figsize=(5 * len(generators), 3.5), squeeze=False)
    for ax, generator in zip(axes[0], generators, strict=True):
        tokens = quality[generator]["tokens"]
        for what in ("dialogue", "pair", "caption"):
            hist = tokens[what]["histogram"]
            if not hist:
                continue
            xs = [int(k) for k in hist]
            share = tokens[what]["share_beyond_context"] or 0.0
            ax.plot(xs, list(hist.values()), drawstyle="steps-mid",
                    label=f"{what} ({100 * share:.1f} % > {tokens['context_length']})")  # fmt: skip
        ax.axvline(tokens["context_length"], color="#d62728", linestyle=":", label="context")
        ax.set_xlabel("tokens")
        ax.set_ylabel("texts")
        ax.set_title(generator)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path)
