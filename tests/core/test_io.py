import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dialogclip.core.io import (
    atomic_path,
    read_json,
    read_parquet_metadata,
    write_json_atomic,
    write_parquet_atomic,
)


def test_atomic_path_renames_on_success(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "out.txt"
    with atomic_path(final) as tmp:
        tmp.write_text("done")
        assert not final.exists(), "the final name must not appear before the block ends"
    assert final.read_text() == "done"
    assert list(final.parent.iterdir()) == [final]
    umask = os.umask(0)
    os.umask(umask)
    assert final.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert final.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_parquet_roundtrip_with_metadata(tmp_path: Path) -> None:
    table = pa.table({"key": ["000000001", "000000002"], "x": [1, 2]})
    path = tmp_path / "t.parquet"
    write_parquet_atomic(table, path, metadata={"model": {"id": "m", "rev": None}, "n": 2})
    assert pq.read_table(path).to_pylist() == table.to_pylist()
    assert read_parquet_metadata(path) == {"model": {"id": "m", "rev": None}, "n": 2}


def test_json_roundtrip(tmp_path: Path) -> None:
    write_json_atomic({"b": 1, "a": [1, 2]}, tmp_path / "x.json")
    assert read_json(tmp_path / "x.json") == {"a": [1, 2], "b": 1}
