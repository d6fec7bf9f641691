"""Uncompressed Arrow IPC files read through a memory map: the training stage's file format.

Training reads its inputs (embedding caches, tokenised rows) by random row access, millions of
times per epoch. An uncompressed Arrow IPC *file* with one record batch stores every column as
one contiguous buffer at a known offset, so :func:`read_arrow` maps the file and hands out
numpy views of those buffers without copying or decoding anything: opening a file costs only
its footer, a row costs one page fault the first time, and the operating system's page cache is
shared by every worker process and every run on the machine. (Parquet is smaller but compressed
and encoded page by page: every read decodes; safetensors maps tensors too, but has no string
column for the keys and no per-row metadata.) A fixed-size-list column (``fixed_size_list<float16,
D>``, ``fixed_size_list<int32, L>``) is a plain row-major [N, D] block: :func:`matrix` views it.

Files are written atomically (``core.io.atomic_path``) with the provenance JSON in the schema
metadata under ``dialogclip:<name>`` keys, as the Parquet outputs of the other stages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dialogclip.core.io import atomic_path, encode_metadata

METADATA_PREFIX = b"dialogclip:"


def write_arrow_atomic(
    table: pa.Table, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None
) -> None:
    """Write ``table`` as one uncompressed record batch to the Arrow IPC file ``path``."""
    # One chunk per column: a reader's numpy views then cover the whole column.
    table = table.combine_chunks()
    if metadata:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), **encode_metadata(metadata)}
        )
    options = pa.ipc.IpcWriteOptions(compression=None)
    with (
        atomic_path(path) as tmp,
        pa.OSFile(str(tmp), "wb") as sink,
        pa.ipc.new_file(sink, table.schema, options=options) as writer,
    ):
        writer.write_table(table, max_chunksize=max(table.num_rows, 1))


def read_arrow(path: str | os.PathLike[str], made_by: str = "") -> pa.Table:
    """The table in the Arrow IPC file ``path``, memory-mapped (no copy of its buffers).

    ``made_by`` names the command that writes such files, for the error messages.
    """
    path = Path(path)
    hint = f" (written by `dialogclip {made_by}`)" if made_by else ""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found{hint}")
    try:
        # Not closed here: the table's buffers point into the map, which lives as long as they.
        source = pa.memory_map(str(path), "r")
        return pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid as err:
        raise ValueError(
            f"{path}: not a readable Arrow IPC file ({err}); "
            f"delete it so that it is rewritten{hint}"
        ) from err


def arrow_metadata(table: pa.Table) -> dict[str, Any]:
    """The ``dialogclip:`` metadata stored by :func:`write_arrow_atomic`."""
    raw = table.schema.metadata or {}
    return {
        key[len(METADATA_PREFIX) :].decode(): json.loads(value)
        for key, value in raw.items()
        if key.startswith(METADATA_PREFIX)
    }


def matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A ``fixed_size_list<T, D>`` column as a read-only [N, D] numpy view (zero copy)."""
    width = column.type.list_size
    value_type = column.type.value_type.to_pandas_dtype()
    if column.num_chunks == 0:
        return np.empty((0, width), dtype=value_type)
    if column.num_chunks != 1:
        raise ValueError(f"expected one chunk, got {column.num_chunks}: rewrite the file")
    array = column.chunk(0)
    if array.null_count:
        raise ValueError("a fixed-size-list column with nulls cannot be viewed as a matrix")
    # flatten() honours the array's offset and, without nulls, slices the child buffer.
    return array.flatten().to_numpy(zero_copy_only=True).reshape(-1, width)


def column_array(column: pa.ChunkedArray) -> pa.Array:
    """A column as one array without copying (``combine_chunks`` copies even a single chunk)."""
    if column.num_chunks == 1:
        return column.chunk(0)
    return column.combine_chunks()
