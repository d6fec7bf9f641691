import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dialogclip.core.io import (
    CORRUPT_HINT,
    CorruptFileError,
    InputFileError,
    atomic_path,
    read_json,
    read_parquet,
    read_parquet_metadata,
    read_parquet_schema,
    read_safetensors,
    read_safetensors_metadata,
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


# --- checked readers: a missing or damaged input names the file --------------------------------


def test_corrupt_json_names_the_file_and_the_parser_reason(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    path.write_text('{"rows": ')
    with pytest.raises(CorruptFileError) as info:
        read_json(path)
    assert str(info.value) == (
        f"corrupt JSON file: {path} (Expecting value: line 1 column 10 (char 9)); {CORRUPT_HINT}"
    )
    assert (info.value.path, info.value.what) == (path, "JSON")


def test_json_that_is_not_utf8_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"a": "caf\u00e9"}'.encode("latin-1"))
    with pytest.raises(CorruptFileError, match=f"corrupt VQA JSON file: {path} .*utf-8"):
        read_json(path, "VQA JSON")


def test_missing_json_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"^JSON file not found: {tmp_path / 'x.json'}$"):
        read_json(tmp_path / "x.json")


def _parquet(path: Path) -> Path:
    write_parquet_atomic(pa.table({"key": [f"{i:09d}" for i in range(500)]}), path, {"n": 500})
    return path


@pytest.mark.parametrize("damage", ["truncated", "not_parquet", "empty"])
def test_damaged_parquet_is_a_corrupt_file_error(tmp_path: Path, damage: str) -> None:
    path = _parquet(tmp_path / "shard.parquet")
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "not_parquet": b"key\n1\n", "empty": b""}[damage]
    )
    for read in (read_parquet, read_parquet_schema, read_parquet_metadata):
        with pytest.raises(CorruptFileError) as info:
            read(path)
        assert str(info.value).startswith(f"corrupt Parquet file: {path} (")
        assert str(info.value).endswith(CORRUPT_HINT)


def test_parquet_reader_reads_and_names_missing_columns(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "shard.parquet")
    assert read_parquet(path, columns=["key"]).num_rows == 500
    assert read_parquet_metadata(path) == {"n": 500}
    with pytest.raises(InputFileError, match=r"lacks column\(s\) \['jpg'\]") as info:
        read_parquet(path, columns=["key", "jpg"], what="ingested shard")
    assert str(info.value) == f"ingested shard file {path} lacks column(s) ['jpg']"
    with pytest.raises(FileNotFoundError, match=f"Parquet file not found: {tmp_path / 'no'}"):
        read_parquet(tmp_path / "no")


def _safetensors(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"image_emb": torch.arange(600.0).reshape(6, 100)}, str(path), metadata={"k": "v"})
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_safetensors_is_a_corrupt_file_error(tmp_path: Path, damage: str) -> None:
    path = _safetensors(tmp_path / "emb.safetensors")
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:-64], "garbage": b"\x00" * 7}[damage])
    for read in (
        lambda: read_safetensors_metadata(path, "CLIP checkpoint"),
        lambda: read_safetensors(path, ["image_emb"], "CLIP checkpoint"),
    ):
        with pytest.raises(CorruptFileError) as info:
            read()
        assert str(info.value).startswith(f"corrupt CLIP checkpoint file: {path} (")


def test_safetensors_reader_reads_and_names_missing_tensors(tmp_path: Path) -> None:
    path = _safetensors(tmp_path / "emb.safetensors")
    tensors, metadata = read_safetensors(path, ["image_emb"])
    assert tensors["image_emb"].shape == (6, 100) and float(tensors["image_emb"][5, 99]) == 599
    assert metadata == {"k": "v"} == read_safetensors_metadata(path)
    with pytest.raises(InputFileError) as info:
        read_safetensors(path, ["image_emb", "text_emb"])
    assert str(info.value) == f"safetensors file {path} lacks tensor(s) ['text_emb']"
