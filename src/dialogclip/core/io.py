"""Atomic, resumable file writing and checked file reading, shared by every stage.

Every output a stage produces appears under its final name only once it is complete:
we write to a temporary sibling (same directory, so the final ``os.replace`` is an atomic
rename on POSIX file systems) and rename at the end. A job killed at any moment therefore
leaves either no output or a complete one, never a truncated file that a resumed run would
mistake for finished work.

Every input goes through a reader here (:func:`read_json`, :func:`read_parquet`,
:func:`read_safetensors`...) that turns a missing file into ``FileNotFoundError`` and an
unreadable one into :class:`CorruptFileError`, both naming the file; ``dialogclip.cli`` reports
them as one line (exit status 2) instead of a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TMP_PREFIX = ".tmp-"
CORRUPT_HINT = "delete it so that the job that wrote it runs again, or restore the original"


class InputFileError(ValueError):
    """An input file exists but cannot be used; the message names it and what to do."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = Path(path)
        super().__init__(message)


class CorruptFileError(InputFileError):
    """An input file is not valid ``what`` (JSON, Parquet, safetensors): truncated, damaged or
    of another kind. ``detail`` is the parser's own reason."""

    def __init__(
        self, path: str | os.PathLike[str], what: str, detail: str, hint: str = CORRUPT_HINT
    ) -> None:
        self.what = what
        self.detail = detail
        super().__init__(path, f"corrupt {what} file: {path} ({_one_line(detail)}); {hint}")


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")


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


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging folder beside ``final``; it replaces ``final`` if the block
    succeeds. A killed run's staging folder is cleared by the next; on an exception it is
    removed and ``final`` is left untouched."""
    final = Path(final)
    staging = final.parent / f"{TMP_PREFIX}{final.name}.dir"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


def read_parquet_schema(path: str | os.PathLike[str], what: str = "Parquet") -> pa.Schema:
    """The schema of a Parquet file (its footer only)."""
    path = Path(path)
    _require_file(path, what)
    try:
        return pq.read_schema(path)
    except PermissionError:
        raise
    except (pa.ArrowException, OSError) as err:
        raise CorruptFileError(path, what, str(err)) from err


def read_parquet(
    path: str | os.PathLike[str],
    columns: Sequence[str] | None = None,
    schema: pa.Schema | None = None,
    what: str = "Parquet",
) -> pa.Table:
    """Read a Parquet file (``columns`` only, cast to ``schema`` if given).

    A missing column is an :class:`InputFileError` naming it; damaged data a
    :class:`CorruptFileError`.
    """
    path = Path(path)
    names = read_parquet_schema(path, what).names
    missing = [name for name in columns or () if name not in names]
    if missing:
        raise InputFileError(path, f"{what} file {path} lacks column(s) {missing}")
    try:
        return pq.read_table(
            path, columns=list(columns) if columns is not None else None, schema=schema
        )
    except PermissionError:
        raise
    except (pa.ArrowException, OSError) as err:
        raise CorruptFileError(path, what, str(err)) from err


def read_parquet_metadata(path: str | os.PathLike[str], what: str = "Parquet") -> dict[str, Any]:
    """Return the ``dialogclip:`` metadata stored by :func:`write_parquet_atomic`."""
    raw = read_parquet_schema(path, what).metadata or {}
    prefix = b"dialogclip:"
    try:
        return {
            key[len(prefix) :].decode(): json.loads(value)
            for key, value in raw.items()
            if key.startswith(prefix)
        }
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise CorruptFileError(path, what, f"metadata: {err}") from err


def write_json_atomic(data: Any, path: str | os.PathLike[str], indent: int | None = 2) -> None:
    """Write ``data`` as key-sorted JSON atomically, indented by ``indent`` (None: compact, on
    one line, as large published data files come)."""
    separators = None if indent is not None else (",", ":")
    with atomic_path(path) as tmp:
        tmp.write_text(
            json.dumps(data, indent=indent, sort_keys=True, separators=separators) + "\n"
        )


def read_json(path: str | os.PathLike[str], what: str = "JSON", hint: str = CORRUPT_HINT) -> Any:
    """Read a JSON file (UTF-8). ``what`` names the kind of file in errors, ``hint`` says what
    to do about a corrupt one."""
    path = Path(path)
    _require_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise CorruptFileError(path, what, str(err), hint) from err


def read_safetensors_metadata(
    path: str | os.PathLike[str], what: str = "safetensors"
) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file; reading its header also checks that the
    file is complete (the header's tensor offsets must cover the file exactly)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    _require_file(path, what)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except SafetensorError as err:
        raise CorruptFileError(path, what, str(err)) from err


def read_safetensors(
    path: str | os.PathLike[str], names: Sequence[str], what: str = "safetensors"
) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors ``names`` (torch tensors) and the string metadata of a ``.safetensors`` file.

    A missing tensor is an :class:`InputFileError` naming it.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    _require_file(path, what)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            missing = [name for name in names if name not in set(handle.keys())]
            if missing:
                raise InputFileError(path, f"{what} file {path} lacks tensor(s) {missing}")
            return {name: handle.get_tensor(name) for name in names}, metadata
    except SafetensorError as err:
        raise CorruptFileError(path, what, str(err)) from err
