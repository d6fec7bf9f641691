"""Streaming reader of the CC3M TSV (caption TAB url, no header), one shard's rows at a time.

The training TSV has ~3.3M lines, so a shard job never loads it: it skips to its first row by
counting newlines in large binary blocks, then reads only its own lines. Lines are handled as
bytes so that invalid UTF-8 is detected (and reported) per line instead of failing the file.
A malformed line still occupies its row position: keys stay equal to TSV positions.

A TSV that cannot serve the planned rows (empty, or shorter than planned) is an
``InputFileError`` naming it, reported by the command line as one line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dialogclip.core.io import InputFileError

_BLOCK = 1 << 24  # 16 MiB: a few dozen reads for the whole CC3M training TSV

# Reasons a line is malformed (the error_kind of its row).
WRONG_COLUMN_COUNT = "wrong_column_count"
INVALID_UTF8 = "invalid_utf8"
EMPTY_CAPTION = "empty_caption"
EMPTY_URL = "empty_url"


@dataclass(frozen=True)
class TsvRow:
    """One line of the TSV. ``problem`` is set (and the row not downloadable) if malformed."""

    index: int  # 0-based row position in the TSV: the source of the row's key
    caption: str | None
    url: str | None
    problem: str | None = None  # one of the malformed reasons above
    detail: str | None = None  # human-readable explanation of ``problem``

    @property
    def line(self) -> int:
        """1-based line number in the TSV (what an editor shows)."""
        return self.index + 1


def parse_line(index: int, raw: bytes) -> TsvRow:
    """Parse one raw TSV line (with or without its line ending) into a :class:`TsvRow`."""
    body = raw.rstrip(b"\n").rstrip(b"\r")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        # Keep a readable version for the report; the row itself is unusable.
        caption, url = _two_fields(body.decode("utf-8", errors="replace"))
        detail = f"invalid UTF-8 at byte {err.start} of the line"
        return TsvRow(index, caption, url, INVALID_UTF8, detail)
    columns = text.split("\t")
    if len(columns) != 2:
        detail = f"{len(columns)} tab-separated column(s), expected 2 (caption, url)"
        return TsvRow(index, None, None, WRONG_COLUMN_COUNT, detail)
    caption, url = columns[0].strip(), columns[1].strip()
    if not caption:
        return TsvRow(index, caption, url, EMPTY_CAPTION, "the caption is empty")
    if not url:
        return TsvRow(index, caption, url, EMPTY_URL, "the URL is empty")
    return TsvRow(index, caption, url)


def _two_fields(text: str) -> tuple[str | None, str | None]:
    columns = text.split("\t")
    if len(columns) != 2:
        return None, None
    return columns[0].strip(), columns[1].strip()


def empty_tsv_message(path: str | os.PathLike[str]) -> str:
    """What to say about an empty CC3M TSV (the command line and the workflow both say it)."""
    return (
        f"CC3M TSV is empty: {Path(path).resolve()}; it must hold one 'caption<TAB>url' line "
        "per image (download it again, or point cc3m.tsv at the right file)"
    )


def read_rows(path: str | os.PathLike[str], start: int, stop: int) -> Iterator[TsvRow]:
    """Yield the rows at positions ``start`` (inclusive) to ``stop`` (exclusive) of the TSV.

    Raises InputFileError if the file is empty or has fewer than ``stop`` lines (it changed
    since the shards were planned).
    """
    if not 0 <= start <= stop:
        raise ValueError(f"invalid row range {start}:{stop}")
    if stop > start and os.path.getsize(path) == 0:
        raise InputFileError(path, empty_tsv_message(path))
    with open(path, "rb") as handle:
        handle.seek(_offset_of_line(handle, start, path))
        for index in range(start, stop):
            raw = handle.readline()
            if not raw:
                raise InputFileError(
                    path,
                    f"{path} has only {index} lines but rows up to {stop} were planned; "
                    "did the TSV change? Rerun snakemake to re-plan the shards.",
                )
            yield parse_line(index, raw)


def _offset_of_line(handle: BinaryIO, index: int, path: str | os.PathLike[str]) -> int:
    """Byte offset where line ``index`` (0-based) starts, found by counting newlines."""
    if index == 0:
        return 0
    seen = 0  # newlines before the current block
    offset = 0  # byte offset of the current block
    handle.seek(0)
    while block := handle.read(_BLOCK):
        in_block = block.count(b"\n")
        if seen + in_block >= index:
            position = -1
            for _ in range(index - seen):
                position = block.index(b"\n", position + 1)
            return offset + position + 1
        seen += in_block
        offset += len(block)
    raise InputFileError(
        path,
        f"{path} has only {seen} complete lines; row {index} does not exist. "
        "Did the TSV change? Rerun snakemake to re-plan the shards.",
    )
