"""The dialogue-enriched CC3M as a shareable dataset folder.

One Parquet file per CC3M shard under ``data/`` with one row per downloaded image (the rows the
generators ran on), joined on ``key``::

    key, url, caption, image_sha256,
    <generator>: struct<status, error_message, model, revision, backend, prompts, responses,
                        questions, answers, parse_status, finish_reasons>   (one per generator)

and a dataset card (``README.md`` with the Hugging Face card header, :mod:`.card`), so that
``datasets.load_dataset(folder)`` loads it and pandas / DuckDB / pyarrow read the shards directly.
Images are not included: CC3M is distributed as URLs, and so is this.

The join is checked, never assumed: a generator's shard must hold exactly the downloaded rows of
its ingested shard, in order (a shard from another run or another TSV is an error naming both
files), and every shard of one generator must carry the same science in its metadata (model,
revision, prompts, sampling, ...), which the card then states once.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from dialogclip import __version__
from dialogclip.core.io import (
    InputFileError,
    atomic_dir,
    read_parquet,
    read_parquet_metadata,
    write_parquet_atomic,
)
from dialogclip.export.card import render_card
from dialogclip.export.settings import DatasetExport

log = logging.getLogger(__name__)

# Columns taken from the ingested shard (renamed: the hash is of the downloaded image's bytes).
INGEST_COLUMNS = {"key": "key", "url": "url", "caption": "caption", "sha256": "image_sha256"}
# Columns of a dialogue shard kept in the generator's struct (``key`` is the join's).
DIALOGUE_FIELDS = (
    "status",
    "error_message",
    "model",
    "revision",
    "backend",
    "prompts",
    "responses",
    "questions",
    "answers",
    "parse_status",
    "finish_reasons",
)
# The science of a dialogue shard's metadata (dialogclip.generate): equal on every shard of one
# generator, or the dataset would mix two experiments under one name.
SCIENCE_KEYS = ("model", "revision", "dtype", "generator_settings", "sampling", "decode")


@dataclass
class GeneratorRecord:
    """What the card says about one generator: its science, once, and what its rows hold."""

    science: dict[str, Any]
    first_shard: Path
    backends: set[str] = field(default_factory=set)
    versions: list[dict[str, Any]] = field(default_factory=list)
    status: Counter[str] = field(default_factory=Counter)
    parse_status: Counter[str] = field(default_factory=Counter)

    def add_versions(self, versions: dict[str, Any] | None) -> None:
        if versions is not None and versions not in self.versions:
            self.versions.append(versions)


@dataclass
class DatasetSummary:
    """Totals over the written shards, for the card."""

    n_rows: int = 0
    n_bytes: int = 0  # the Parquet files
    arrow_bytes: int = 0  # the tables in memory (the card's split size, as Hugging Face counts)
    shards: list[str] = field(default_factory=list)
    generators: dict[str, GeneratorRecord] = field(default_factory=dict)


def enriched_shard(ingested: Path, dialogue: Mapping[str, Path]) -> pa.Table:
    """The dataset rows of one shard: the downloaded rows of ``ingested`` (n rows), each with
    one struct column per generator of ``dialogue`` (name -> that generator's shard).

    Returns a table of n rows: ``key, url, caption, image_sha256, <generator>...``.
    """
    table = read_parquet(ingested, columns=[*INGEST_COLUMNS, "status"], what="ingested shard")
    table = table.filter(pc.equal(table["status"], "success")).drop_columns(["status"])
    table = table.rename_columns([INGEST_COLUMNS[name] for name in table.column_names])
    keys = table["key"]
    for name, path in dialogue.items():
        rows = read_parquet(path, columns=["key", *DIALOGUE_FIELDS], what="dialogue shard")
        if not rows["key"].equals(keys):
            raise InputFileError(path, _join_error(path, ingested, rows["key"], keys))
        struct = pa.StructArray.from_arrays(
            [rows[column].combine_chunks() for column in DIALOGUE_FIELDS],
            names=list(DIALOGUE_FIELDS),
        )
        table = table.append_column(name, struct)
    return table


def check_shard_names(ingested: Sequence[Path], dialogue: Mapping[str, Sequence[Path]]) -> None:
    """Each generator's shards must be the ingested shards' names, in order (one dialogue shard
    per ingested shard); an :class:`InputFileError` naming the generator otherwise."""
    names = [Path(path).name for path in ingested]
    for generator, paths in dialogue.items():
        if [Path(path).name for path in paths] != names:
            raise InputFileError(
                paths[0] if paths else (ingested[0] if ingested else "-"),
                f"the dialogue shards of {generator} ({[Path(p).name for p in paths]}) are not "
                f"the ingested shards ({names}): pass one dialogue shard per ingested shard, in "
                "order",
            )


def _join_error(path: Path, ingested: Path, got: pa.ChunkedArray, want: pa.ChunkedArray) -> str:
    got_keys, want_keys = got.to_pylist(), want.to_pylist()
    first = next(
        (i for i, (a, b) in enumerate(zip(got_keys, want_keys, strict=False)) if a != b),
        min(len(got_keys), len(want_keys)),
    )
    return (
        f"dialogue shard {path} does not hold the downloaded rows of {ingested} in order "
        f"({len(got_keys)} rows vs {len(want_keys)} downloaded; first difference at row {first}):"
        " it was made from another ingested shard; delete it so that its generate job runs again"
    )


def _record(summary: DatasetSummary, name: str, path: Path, table: pa.Table) -> None:
    """Check ``path``'s science against the generator's first shard and count its rows."""
    metadata = read_parquet_metadata(path, what="dialogue shard")
    science = {key: metadata.get(key) for key in SCIENCE_KEYS}
    record = summary.generators.setdefault(name, GeneratorRecord(science, path))
    for key in SCIENCE_KEYS:
        if science[key] != record.science[key]:
            raise InputFileError(
                path,
                f"dialogue shard {path} was generated with another {key} than "
                f"{record.first_shard} ({json.dumps(science[key])} vs "
                f"{json.dumps(record.science[key])}): one dataset holds one experiment; rerun "
                f"the generate jobs of {name} so that every shard has the configured {key}",
            )
    if metadata.get("backend"):
        record.backends.add(metadata["backend"])
    record.add_versions(metadata.get("versions"))
    column = table[name]
    record.status.update(pc.struct_field(column, "status").to_pylist())
    record.parse_status.update(
        status for status in pc.struct_field(column, "parse_status").to_pylist() if status
    )


def export_dataset(
    ingested: Sequence[Path],
    dialogue: Mapping[str, Sequence[Path]],
    output: Path,
    settings: DatasetExport,
    progress: bool = True,
) -> DatasetSummary:
    """Write the dataset folder ``output`` (``data/<shard>.parquet`` + ``README.md``).

    ``ingested``: the ingested shards; ``dialogue``: per generator, its shards with the same
    file names. The folder is assembled beside ``output`` and renamed into place at the end, so
    a killed export leaves no half dataset (it is redone whole: it only reads and joins).
    """
    if not ingested:
        raise InputFileError(output, f"no ingested shards given for the dataset {output}")
    check_shard_names(ingested, dialogue)
    summary = DatasetSummary()
    with atomic_dir(output) as staging:
        (staging / "data").mkdir()
        schema = None
        for index, path in enumerate(tqdm(ingested, desc="dataset shards", disable=not progress)):
            shard = {generator: Path(paths[index]) for generator, paths in dialogue.items()}
            table = enriched_shard(path, shard)
            for generator, shard_path in shard.items():
                _record(summary, generator, shard_path, table)
            target = staging / "data" / path.name
            write_parquet_atomic(table, target, metadata={"dataset": {"dialogclip": __version__}})
            schema = table.schema
            summary.n_rows += table.num_rows
            summary.n_bytes += target.stat().st_size
            summary.arrow_bytes += table.nbytes
            summary.shards.append(path.name)
            log.info("%s: %d rows", target.name, table.num_rows)
        assert schema is not None  # at least one shard (checked above)
        (staging / "README.md").write_text(render_card(settings, summary, schema))
    log.info(
        "dataset %s: %d rows in %d shards (%.1f MB), generators %s",
        output,
        summary.n_rows,
        len(summary.shards),
        summary.n_bytes / 1e6,
        ", ".join(summary.generators) or "none",
    )
    return summary
