"""The thesis' reference numbers (``resources/thesis/numbers.yaml``), read and checked.

The file has two parts: ``rows`` (one per model the thesis measured, keyed by a stable id, with
its description and its numbers per evaluation set, in percent) and ``tables`` (the thesis'
tables as the report lays them out). A malformed file fails with one line naming the file and
the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dialogclip.core.config import ConfigError, load_yaml
from dialogclip.models.eval_entry import EVAL_DATASETS

RETRIEVAL_METRICS = tuple(
    f"{direction}_retrieval_recall@{k}" for direction in ("image", "text") for k in (1, 5, 10)
)
VQA_METRICS = ("yes/no", "number", "other", "overall")
METRICS = {"coco": RETRIEVAL_METRICS, "flickr30k": RETRIEVAL_METRICS}
METRICS.update(vqa_real=VQA_METRICS, vqa_abstract=VQA_METRICS)
# Descriptive fields a row may carry (anything else is a typo).
ROW_FIELDS = {
    "label",
    "source",
    "architecture",
    "pretrained",
    "method",
    "generator",
    "beta",
    "epochs",
    "batch_size",
    "mmd",
}
TABLE_FIELDS = {"title", "datasets", "rows", "include", "info"}
# Fields of an evaluation entry that a table's `include` filters may test.
INCLUDE_KEYS = {"name", "architecture", "pretrained", "text_variant", "beta", "thesis_row"}


@dataclass(frozen=True)
class ThesisRow:
    """One model the thesis measured: its description and numbers {dataset: {metric: %}}."""

    id: str
    label: str
    fields: dict[str, Any]  # architecture, pretrained, method, generator, beta, epochs, ...
    numbers: dict[str, dict[str, float]]

    def get(self, dataset: str, metric: str) -> float | None:
        return self.numbers.get(dataset, {}).get(metric)


@dataclass(frozen=True)
class TableLayout:
    """One of the thesis' tables: which rows, on which evaluation sets, and which of our
    entries without a thesis row join it (``include``: filters on the entry's fields; an entry
    joins if every key of one filter matches; ``[{}]`` = every entry with a result)."""

    name: str
    title: str
    datasets: list[str]
    rows: list[str]
    include: list[dict[str, Any]] = field(default_factory=list)
    info: list[str] = field(default_factory=list)  # descriptive columns (beta, epochs, ...)


@dataclass(frozen=True)
class ThesisNumbers:
    rows: dict[str, ThesisRow]
    tables: dict[str, TableLayout]
    path: str = ""


def _fail(path: Path, where: str, what: str) -> ConfigError:
    return ConfigError(f"{path}: {where}: {what}")


def load_thesis_numbers(path: str | Path) -> ThesisNumbers:
    """Read and check ``numbers.yaml`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"thesis numbers not found: {path} (the repository's resources/thesis/numbers.yaml)"
        )
    data = load_yaml(path)
    if not isinstance(data, dict) or set(data) != {"rows", "tables"}:
        raise _fail(path, "<top level>", "expected exactly the keys 'rows' and 'tables'")
    rows = {rid: _row(path, rid, raw) for rid, raw in (data["rows"] or {}).items()}
    tables = {name: _table(path, name, raw, rows) for name, raw in (data["tables"] or {}).items()}
    return ThesisNumbers(rows=rows, tables=tables, path=str(path))


def _row(path: Path, rid: str, raw: Any) -> ThesisRow:
    where = f"rows.{rid}"
    if not isinstance(raw, dict):
        raise _fail(path, where, "expected a mapping")
    unknown = sorted(set(raw) - ROW_FIELDS - set(EVAL_DATASETS))
    if unknown:
        raise _fail(path, where, f"unknown key(s) {unknown}")
    if "label" not in raw:
        raise _fail(path, where, "missing 'label'")
    numbers: dict[str, dict[str, float]] = {}
    for dataset in EVAL_DATASETS:
        if dataset not in raw:
            continue
        values = raw[dataset]
        bad = sorted(set(values) - set(METRICS[dataset]))
        if bad:
            raise _fail(path, f"{where}.{dataset}", f"unknown metric(s) {bad}")
        for metric, value in values.items():
            if not isinstance(value, int | float) or not 0 <= value <= 100:
                raise _fail(path, f"{where}.{dataset}.{metric}", f"not a percentage: {value!r}")
        numbers[dataset] = {metric: float(value) for metric, value in values.items()}
    fields = {key: value for key, value in raw.items() if key in ROW_FIELDS and key != "label"}
    return ThesisRow(id=rid, label=raw["label"], fields=fields, numbers=numbers)


def _table(path: Path, name: str, raw: Any, rows: dict[str, ThesisRow]) -> TableLayout:
    where = f"tables.{name}"
    if not isinstance(raw, dict):
        raise _fail(path, where, "expected a mapping")
    unknown = sorted(set(raw) - TABLE_FIELDS)
    if unknown:
        raise _fail(path, where, f"unknown key(s) {unknown}")
    datasets = raw.get("datasets") or []
    if not datasets or not set(datasets) <= set(EVAL_DATASETS):
        raise _fail(
            path, f"{where}.datasets", f"expected some of {list(EVAL_DATASETS)}: {datasets}"
        )
    missing = [rid for rid in raw.get("rows") or [] if rid not in rows]
    if missing:
        raise _fail(path, f"{where}.rows", f"no such row(s) {missing}")
    include = raw.get("include") or []
    if not all(isinstance(item, dict) for item in include):
        raise _fail(path, f"{where}.include", "expected a list of mappings")
    bad_keys = sorted({key for item in include for key in item} - INCLUDE_KEYS)
    if bad_keys:
        raise _fail(
            path, f"{where}.include", f"unknown key(s) {bad_keys}; allowed {sorted(INCLUDE_KEYS)}"
        )
    bad_info = sorted(set(raw.get("info") or []) - ROW_FIELDS)
    if bad_info:
        raise _fail(path, f"{where}.info", f"unknown field(s) {bad_info}")
    return TableLayout(
        name=name,
        title=raw.get("title", name),
        datasets=list(datasets),
        rows=list(raw.get("rows") or []),
        include=list(include),
        info=list(raw.get("info") or []),
    )
