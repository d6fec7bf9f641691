"""One shard's generation as planned: its usable rows, its chunks, which are already finished."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from dialogclip.core.io import read_parquet
from dialogclip.generate.chunk_store import ChunkStore
from dialogclip.generate.config import GenerateConfig, MachineSettings, generator_settings
from dialogclip.generate.engine import LazyEngine
from dialogclip.generate.provenance import chunk_fingerprint, file_sha256, output_metadata
from dialogclip.generate.schema import RowContext

log = logging.getLogger(__name__)


INPUT_COLUMNS = ("key", "url", "status", "jpg")


INGEST_SUCCESS = "success"


INGESTED_SHARD = "ingested shard (Parquet)"  # names the input in errors


@dataclass(frozen=True)
class ShardRows:
    """The usable rows of an ingested shard (``status == "success"``), in shard order."""

    keys: list[str]
    urls: list[str | None]
    images: list[bytes | None]
    n_input_rows: int  # all rows of the shard, failed downloads included


def read_ingested_shard(path: str | os.PathLike[str]) -> ShardRows:
    """Read the columns generation needs from an ingested shard; keep downloaded rows only.

    The caption is not read: the generator must never see it. A missing, unreadable or foreign
    file raises an error whose one line names it.
    """
    table = read_parquet(path, columns=INPUT_COLUMNS, what=INGESTED_SHARD)
    usable = table.filter(pc.equal(table["status"], INGEST_SUCCESS))
    return ShardRows(
        keys=[str(key) for key in usable["key"].to_pylist()],
        urls=usable["url"].to_pylist(),
        images=usable["jpg"].to_pylist(),
        n_input_rows=table.num_rows,
    )


def chunk_ranges(n_rows: int, chunk_size: int) -> list[range]:
    """Row ranges of the chunks (the last may be shorter); none for an empty shard."""
    return [range(start, min(start + chunk_size, n_rows)) for start in range(0, n_rows, chunk_size)]


@dataclass
class ShardWork:
    """One shard's generation as planned: its usable rows, its chunks, which are finished."""

    rows: ShardRows
    chunks: list[range]
    store: ChunkStore
    done: set[int]
    metadata: dict[str, Any]  # the dialogue shard's Parquet metadata (what makes the rows)
    ctx: RowContext

    @property
    def pending(self) -> list[int]:
        return [index for index in range(len(self.chunks)) if index not in self.done]


def plan_shard(
    shard_path: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    generator: str,
    config: GenerateConfig,
    machine: MachineSettings,
    engine: LazyEngine,
) -> ShardWork:
    """Read an ingested shard, cut it into chunks and find the chunks already finished in
    ``work_dir`` under the fingerprint of this job's settings and ``engine``'s target (others
    are discarded). Starts no engine."""
    shard_path = Path(shard_path)
    rows = read_ingested_shard(shard_path)  # first: a bad input fails before anything else
    target = engine.target
    log.info("engine: %s on %s in %s", target.backend, target.device, target.dtype)
    settings = generator_settings(generator, config)
    metadata = output_metadata(generator, target, config)
    fingerprint = chunk_fingerprint(metadata, machine.chunk_size, file_sha256(shard_path))
    chunks = chunk_ranges(len(rows.keys), machine.chunk_size)
    store = ChunkStore(work_dir, fingerprint)
    done = store.finished(len(chunks))
    log.info(
        "%s %s: %d downloaded of %d rows, %d chunk(s) of <= %d; %d already finished",
        generator,
        shard_path.name,
        len(rows.keys),
        rows.n_input_rows,
        len(chunks),
        machine.chunk_size,
        len(done),
    )
    ctx = RowContext(
        generator=generator,
        model=settings.model,
        revision=settings.revision,
        backend=target.backend,
    )
    return ShardWork(rows, chunks, store, done, metadata, ctx)
