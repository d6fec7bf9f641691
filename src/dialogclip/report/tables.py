"""The thesis' tables with our numbers: which result goes where, and the three file formats.

Placement is driven by the config and ``numbers.yaml``, never by entry names:

1. every row a table lists gets one line per evaluation entry whose ``thesis_row`` is (or, as a
   list, holds) that row (several entries may reproduce one row, e.g. with and without
   QuickGELU; one entry may reproduce a row of each table, e.g. DRAFT's retrieval and VQA
   rows), or one line with our numbers missing when none does;
2. then every other entry with a result on the table's evaluation sets that matches one of the
   table's ``include`` filters (its ``text_variant``, ``beta``, ...), in config order; its thesis
   numbers are those of its thesis row with numbers on the table's sets, else missing.

Each line shows three sub-rows: ours, the thesis', and the difference ours - thesis (in
percentage points), "-" wherever a number is missing. Markdown and HTML print "-", CSV leaves
the cell empty.

With ``report.compare_with_thesis: false`` (the demo's miniature world, whose numbers reproduce
no thesis row) a table holds only our entries, those matching its ``include`` filters, each on
one row of our numbers: no thesis row, no thesis number and no difference.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dialogclip.core.config import ConfigError
from dialogclip.core.io import atomic_path
from dialogclip.models.eval_entry import EVAL_DATASETS, EvalEntry
from dialogclip.report.results import Metrics, read_metrics
from dialogclip.report.settings import ReportSettings
from dialogclip.report.thesis import METRICS, TableLayout, ThesisNumbers, ThesisRow

MISSING = "-"
DATASET_SHORT = {"coco": "", "flickr30k": "", "vqa_abstract": "abstract ", "vqa_real": "real "}
METRIC_HEADERS = {
    "image_retrieval_recall@1": "img R@1",
    "image_retrieval_recall@5": "img R@5",
    "image_retrieval_recall@10": "img R@10",
    "text_retrieval_recall@1": "txt R@1",
    "text_retrieval_recall@5": "txt R@5",
    "text_retrieval_recall@10": "txt R@10",
    "yes/no": "yes/no",
    "number": "number",
    "other": "other",
    "overall": "overall",
}
KINDS = ("ours", "thesis", "diff")
KIND_LABELS = {"ours": "ours", "thesis": "thesis", "diff": "Δ"}

Results = Mapping[str, Mapping[str, Metrics | None]]  # entry name -> dataset -> metrics


@dataclass(frozen=True)
class Column:
    """One number column: a metric on one evaluation set."""

    dataset: str
    metric: str

    @property
    def header(self) -> str:
        return DATASET_SHORT[self.dataset] + METRIC_HEADERS[self.metric]


@dataclass
class Line:
    """One line of a table: a thesis row and/or one of our entries."""

    label: str
    row: ThesisRow | None
    entry: EvalEntry | None
    ours: dict[Column, float | None] = field(default_factory=dict)
    thesis: dict[Column, float | None] = field(default_factory=dict)

    def diff(self, column: Column) -> float | None:
        ours, thesis = self.ours.get(column), self.thesis.get(column)
        return None if ours is None or thesis is None else ours - thesis

    def value(self, kind: str, column: Column) -> float | None:
        if kind == "ours":
            return self.ours.get(column)
        if kind == "thesis":
            return self.thesis.get(column)
        return self.diff(column)

    def info(self, kind: str, key: str) -> Any:
        """A descriptive field (beta, epochs, ...): ours from the entry, the thesis' from the
        row."""
        if kind == "ours" and self.entry is not None:
            return self.entry.fields().get(key)
        if kind == "thesis" and self.row is not None:
            return self.row.fields.get(key)
        return None


@dataclass
class Table:
    """A table of lines over number columns, with descriptive ``info`` columns."""

    name: str
    title: str
    columns: list[Column]
    info: list[str]
    lines: list[Line]
    decimals: int = 2
    kinds: tuple[str, ...] = KINDS  # the sub-rows of a line: ours, thesis, diff; or ours alone

    def headers(self) -> list[str]:
        info = [key.replace("_", " ") for key in self.info]
        return ["model", "entry", "", *info, *(column.header for column in self.columns)]

    def grid(self, repeat_labels: bool = False) -> list[list[str | None]]:
        """The cells row by row (None = missing); a row per kind and line (ours, thesis, diff)."""
        rows: list[list[str | None]] = []
        for line in self.lines:
            for kind in self.kinds:
                first = kind == "ours" or repeat_labels
                label = line.label if first else ""
                entry = (line.entry.name if line.entry else None) if first else ""
                cells: list[str | None] = [label, entry, KIND_LABELS[kind]]
                cells += [_format_info(line.info(kind, key)) for key in self.info]
                cells += [self._format(kind, line.value(kind, c)) for c in self.columns]
                rows.append(cells)
        return rows

    def _format(self, kind: str, value: float | None) -> str | None:
        if value is None:
            return None
        if kind == "thesis":
            return repr(value)  # as the thesis prints it (39.7, 60.0, 9.88)
        if kind == "diff":
            return f"{value:+.{self.decimals}f}"
        return f"{value:.{self.decimals}f}"


def _format_info(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _matches(entry: EvalEntry, include: Sequence[Mapping[str, Any]]) -> bool:
    fields = entry.fields()
    return any(all(fields.get(key) == value for key, value in item.items()) for item in include)


def check_thesis_rows(settings: ReportSettings, thesis: ThesisNumbers) -> None:
    """Every entry's ``thesis_row`` must be a row of numbers.yaml, and there must be none when
    the report does not compare with the thesis (one line naming the entry)."""
    for entry in settings.models:
        if entry.thesis_rows and not settings.compare_with_thesis:
            raise ConfigError(
                f"evaluate.models: {entry.name} has thesis_row {entry.thesis_row!r}, but "
                "report.compare_with_thesis is false: remove the thesis_row or compare"
            )
        for row in entry.thesis_rows:
            if row not in thesis.rows:
                raise ConfigError(
                    f"evaluate.models: {entry.name} has thesis_row {row!r}, which is "
                    f"not a row of {thesis.path or 'numbers.yaml'}"
                )


def _row_for(entry: EvalEntry, layout: TableLayout, thesis: ThesisNumbers) -> ThesisRow | None:
    """The entry's thesis row with numbers on the table's sets (else its first row, if any)."""
    rows = [thesis.rows[rid] for rid in entry.thesis_rows if rid in thesis.rows]
    for row in rows:
        if any(dataset in row.numbers for dataset in layout.datasets):
            return row
    return rows[0] if rows else None


def build_table(
    layout: TableLayout,
    thesis: ThesisNumbers,
    settings: ReportSettings,
    results: Results,
) -> Table:
    """Lay out one of the thesis' tables with our ``results`` (see the module docstring)."""
    columns = [
        Column(dataset, metric) for dataset in layout.datasets for metric in METRICS[dataset]
    ]

    def line(row: ThesisRow | None, entry: EvalEntry | None) -> Line:
        label = row.label if row is not None else (entry.describe() if entry else "")
        new = Line(label=label, row=row, entry=entry)
        for column in columns:
            ours = results.get(entry.name, {}).get(column.dataset) if entry else None
            new.ours[column] = None if ours is None else ours.get(column.metric)
            new.thesis[column] = None if row is None else row.get(column.dataset, column.metric)
        return new

    lines: list[Line] = []
    placed: set[str] = set()
    compare = settings.compare_with_thesis
    for rid in layout.rows if compare else ():
        linked = [entry for entry in settings.models if rid in entry.thesis_rows]
        if not linked:
            lines.append(line(thesis.rows[rid], None))
        for entry in linked:
            lines.append(line(thesis.rows[rid], entry))
            placed.add(entry.name)
    for entry in settings.models:
        if entry.name in placed or not _matches(entry, layout.include):
            continue
        if not any(results.get(entry.name, {}).get(d) is not None for d in layout.datasets):
            continue
        lines.append(line(_row_for(entry, layout, thesis) if compare else None, entry))
    return Table(
        name=layout.name,
        title=layout.title,
        columns=columns,
        info=layout.info,
        lines=lines,
        decimals=settings.decimals,
        kinds=KINDS if compare else ("ours",),
    )


def collect_results(settings: ReportSettings, results_dir: Path) -> dict[str, dict[str, Any]]:
    """{entry name: {dataset: metrics in percent, or None}} for every configured entry."""
    return {
        entry.name: {
            dataset: read_metrics(results_dir, entry.name, dataset)
            for dataset in (entry.datasets or EVAL_DATASETS)
        }
        for entry in settings.models
    }


def build_tables(
    thesis: ThesisNumbers, settings: ReportSettings, results: Results
) -> dict[str, Table]:
    """Every table of numbers.yaml, in its order."""
    check_thesis_rows(settings, thesis)
    return {
        name: build_table(layout, thesis, settings, results)
        for name, layout in thesis.tables.items()
    }


# ---------------------------------------------------------------------------- rendering


@dataclass
class Grid:
    """A plain table (headers and cells) in the three formats; ``group`` rows share a label."""

    title: str
    headers: list[str]
    rows: list[list[str | None]]
    group: int = 1  # HTML: rows per line whose first two cells span the group
    note: str = ""

    def markdown(self) -> str:
        def cell(value: str | None) -> str:
            return MISSING if value is None else value.replace("|", "\\|")

        out = [f"### {self.title}", ""]
        if self.note:
            out += [self.note, ""]
        out.append("| " + " | ".join(cell(h) for h in self.headers) + " |")
        out.append("|" + "|".join("---" for _ in self.headers) + "|")
        out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join(out) + "\n"

    def csv(self, rows: list[list[str | None]] | None = None) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.headers)
        for row in self.rows if rows is None else rows:
            writer.writerow(["" if value is None else value for value in row])
        return buffer.getvalue()

    def html(self) -> str:
        """A standalone page (inline style, no external resource)."""
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = []
        for index, row in enumerate(self.rows):
            first_of_group = index % self.group == 0
            cells = []
            for position, value in enumerate(row):
                if self.group > 1 and position < 2:
                    if not first_of_group:
                        continue
                    attrs = f' rowspan="{self.group}" class="label"'
                else:
                    attrs = ' class="missing"' if value is None else ""
                text = MISSING if value is None else html.escape(value)
                cells.append(f"<td{attrs}>{text}</td>")
            css = ' class="group-start"' if first_of_group and self.group > 1 else ""
            body.append(f"<tr{css}>{''.join(cells)}</tr>")
        note = f"<p>{html.escape(self.note)}</p>" if self.note else ""
        return HTML_PAGE.format(
            title=html.escape(self.title),
            note=note,
            head=head,
            body="\n".join(body),
        )


HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; font-size: 13px; margin: 1em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
td.label, th {{ text-align: left; background: #f6f6f6; }}
td.missing {{ color: #999; text-align: center; }}
tr.group-start td {{ border-top: 2px solid #666; }}
</style></head>
<body><h3>{title}</h3>{note}
<table><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table></body></html>
"""

OURS_ONLY_NOTE = (
    "Percent; this pipeline's results alone (report.compare_with_thesis is false: they are not "
    "set beside the thesis' numbers); - = no result."
)
TABLE_NOTE = (
    "Percent; ours = this pipeline's result, thesis = the thesis' number, Δ = ours - thesis "
    "(points); - = no result."
)


def table_grid(table: Table) -> Grid:
    """The thesis-style table as a grid: three rows (ours, thesis, Δ) per line, or our row
    alone when the report does not compare with the thesis."""
    return Grid(
        title=table.title,
        headers=table.headers(),
        rows=table.grid(),
        group=len(table.kinds),
        note=TABLE_NOTE if table.kinds == KINDS else OURS_ONLY_NOTE,
    )


def write_grid(grid: Grid, stem: Path, csv_rows: list[list[str | None]] | None = None) -> None:
    """Write ``stem``.md, .csv and .html atomically."""
    for suffix, text in (
        (".md", grid.markdown()),
        (".csv", grid.csv(csv_rows)),
        (".html", grid.html()),
    ):
        with atomic_path(stem.with_suffix(suffix)) as tmp:
            tmp.write_text(text)


def write_table(table: Table, stem: Path) -> None:
    """Write one thesis-style table; its CSV repeats the labels on every row (one record per
    row, for machines)."""
    write_grid(table_grid(table), stem, csv_rows=table.grid(repeat_labels=True))
