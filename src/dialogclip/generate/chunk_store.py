"""The finished chunks of one shard's generation in its work folder, each written atomically with
the fingerprint of what made it; on resume only the chunks of the same fingerprint are kept."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa

from dialogclip.core.io import (
    TMP_PREFIX,
    InputFileError,
    read_parquet,
    read_parquet_metadata,
    write_parquet_atomic,
)
from dialogclip.generate.schema import DIALOGUE_SCHEMA

log = logging.getLogger(__name__)


class ChunkStore:
    """The finished chunks of one job in ``work_dir``, valid only under one fingerprint."""

    def __init__(self, work_dir: str | os.PathLike[str], fingerprint: str) -> None:
        self.work_dir = Path(work_dir)
        self.fingerprint = fingerprint

    def path(self, index: int) -> Path:
        return self.work_dir / f"{index:05d}.parquet"

    def finished(self, n_chunks: int) -> set[int]:
        """Indices of the chunks already written under this fingerprint.

        Chunks from another configuration or input (a different fingerprint) are deleted:
        mixing them into this shard would be wrong.
        """
        if not self.work_dir.is_dir():
            return set()
        for leftover in self.work_dir.glob(TMP_PREFIX + "*"):
            leftover.unlink(missing_ok=True)  # a chunk write interrupted by a kill
        done = set()
        for path in sorted(self.work_dir.glob("*.parquet")):
            meta = _chunk_metadata(path)
            index = meta.get("chunk")
            if meta.get("fingerprint") != self.fingerprint or not (
                isinstance(index, int) and 0 <= index < n_chunks and path == self.path(index)
            ):
                log.warning("discarding stale chunk %s (other input or settings)", path)
                path.unlink()
                continue
            done.add(index)
        return done

    def write(self, index: int, table: pa.Table) -> None:
        write_parquet_atomic(
            table, self.path(index), {"fingerprint": self.fingerprint, "chunk": index}
        )

    def read_all(self, n_chunks: int) -> pa.Table:
        tables = [
            read_parquet(self.path(index), schema=DIALOGUE_SCHEMA) for index in range(n_chunks)
        ]
        if not tables:
            return DIALOGUE_SCHEMA.empty_table()
        return pa.concat_tables(tables).replace_schema_metadata(None)

    def remove(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


def _chunk_metadata(path: Path) -> dict[str, Any]:
    try:
        return read_parquet_metadata(path)
    except (OSError, InputFileError) as err:
        log.warning("unreadable chunk %s: %s", path, err)
        return {}
