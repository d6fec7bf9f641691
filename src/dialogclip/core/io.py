"""Atomic, resumable file writing shared by every stage.

Every output a stage produces appears under its final name only once it is complete:
we write to a temporary sibling (same directory, so the final ``os.replace`` is an atomic
rename on POSIX file systems) and rename at the end. A job killed at any moment therefore
leaves either no output or a complete one, never a truncated file that a resumed run would
mistake for finished work.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` if the block succeeds.

    On an exception the temporary file is removed and ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX + final.name + ".", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        # mkstemp creates 0600 files; give the output the mode a plain open() would (umask).
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    # Without fsync a power loss after the rename can leave a complete name over empty data.
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_parquet_atomic(
    table: pa.Table,
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write ``table`` to ``path`` atomically.

    ``metadata`` (JSON-serialisable values) is stored in the Parquet schema metadata under
    ``dialogclip:<name>`` keys, so provenance travels with the file.
    """
    if metadata:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), **encode_metadata(metadata)}
        )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def encode_metadata(metadata: Mapping[str, Any]) -> dict[bytes, bytes]:
    """Encode a mapping as Parquet key/value metadata (``dialogclip:<key>`` -> JSON)."""
    return {
        f"dialogclip:{key}".encode(): json.dumps(value, sort_keys=True).encode()
        for key, value in metadata.items()
    }


def read_parquet_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the ``dialogclip:`` metadata stored by :func:`write_parquet_atomic`."""
    raw = pq.read_schema(path).metadata or {}
    prefix = b"dialogclip:"
    return {
        key[len(prefix) :].decode(): json.loads(value)
        for key, value in raw.items()
        if key.startswith(prefix)
    }


def write_json_atomic(data: Any, path: str | os.PathLike[str]) -> None:
    """Write ``data`` as indented, key-sorted JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())
