"""The streaming TSV reader against a naive whole-file reference, and malformed-line reasons."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dialogclip.core.shards import ShardPlan, count_lines
from dialogclip.ingest import tsv
from dialogclip.ingest.tsv import TsvRow, parse_line, read_rows


def _naive_rows(path: Path) -> list[TsvRow]:
    """Reference: read the whole file, split on newlines, parse every line."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [parse_line(i, line) for i, line in enumerate(lines)]


def _random_tsv(path: Path, n: int, seed: int, final_newline: bool = True) -> Path:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.8:
            lines.append(f"caption {i} {'x' * rng.randint(0, 30)}\thttps://e.org/{i}.jpg".encode())
        elif kind < 0.85:
            lines.append(b"no tab at all")
        elif kind < 0.9:
            lines.append(b"\xff\xfe bad utf-8\thttps://e.org/x.jpg")
        elif kind < 0.95:
            lines.append(f"crlf line {i}\thttps://e.org/{i}.jpg\r".encode())
        else:
            lines.append(b"")  # an empty line is a row too (with one column)
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("final_newline", [True, False])
def test_shards_read_exactly_the_reference_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, final_newline: bool
) -> None:
    # Tiny blocks so that line starts fall on and around block boundaries.
    monkeypatch.setattr(tsv, "_BLOCK", 7)
    path = _random_tsv(tmp_path / "t.tsv", 203, seed=1, final_newline=final_newline)
    reference = _naive_rows(path)
    plan = ShardPlan(n_rows=count_lines(path), shard_size=16)
    assert plan.n_rows == len(reference) == 203
    streamed = [
        row for shard in range(plan.n_shards) for row in read_rows(path, *_bounds(plan, shard))
    ]
    assert streamed == reference


def _bounds(plan: ShardPlan, shard: int) -> tuple[int, int]:
    rows = plan.row_range(shard)
    return rows.start, rows.stop


def test_limit_reads_only_the_first_rows(tmp_path: Path) -> None:
    path = _random_tsv(tmp_path / "t.tsv", 50, seed=2)
    rows = list(read_rows(path, 10, 20))
    assert [row.index for row in rows] == list(range(10, 20))
    assert [row.line for row in rows] == list(range(11, 21))


def test_reading_past_the_end_names_the_problem(tmp_path: Path) -> None:
    path = _random_tsv(tmp_path / "t.tsv", 5, seed=3)
    with pytest.raises(ValueError, match="did the TSV change"):
        list(read_rows(path, 3, 8))
    with pytest.raises(ValueError, match="row 9 does not exist"):
        list(read_rows(path, 9, 10))


@pytest.mark.parametrize(
    ("raw", "problem", "caption", "url"),
    [
        (b"a dog\thttps://e.org/a.jpg\n", None, "a dog", "https://e.org/a.jpg"),
        (b"  padded  \t https://e.org/a.jpg \r\n", None, "padded", "https://e.org/a.jpg"),
        (b"no url here\n", "wrong_column_count", None, None),
        (b"a\tb\tc\n", "wrong_column_count", None, None),
        (b"\n", "wrong_column_count", None, None),
        (b" \thttps://e.org/a.jpg\n", "empty_caption", "", "https://e.org/a.jpg"),
        (b"a cat\t\n", "empty_url", "a cat", ""),
        (b"caf\xe9\thttps://e.org/a.jpg\n", "invalid_utf8", "caf\ufffd", "https://e.org/a.jpg"),
    ],
)
def test_parse_line(raw: bytes, problem: str | None, caption: str | None, url: str | None) -> None:
    row = parse_line(7, raw)
    assert (row.problem, row.caption, row.url) == (problem, caption, url)
    assert row.index == 7 and row.line == 8
    assert (row.detail is None) == (problem is None)


def test_invalid_utf8_detail_points_at_the_byte() -> None:
    row = parse_line(0, b"abc\xc3(\tu")
    assert row.detail == "invalid UTF-8 at byte 3 of the line"
