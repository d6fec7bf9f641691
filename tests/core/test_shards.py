import json
from pathlib import Path

import pytest

from dialogclip.core.shards import (
    ShardPlan,
    block_shards,
    count_lines,
    count_lines_cached,
    make_key,
    shard_name,
    shard_paths,
)


def test_key_and_shard_names_are_zero_padded() -> None:
    assert make_key(0) == "000000000"
    assert make_key(3_318_332) == "003318332"
    assert shard_name(7) == "00007"
    with pytest.raises(ValueError):
        make_key(-1)


def test_cc3m_train_has_332_shards_of_10000() -> None:
    plan = ShardPlan(n_rows=3_318_333, shard_size=10_000)
    assert plan.n_shards == 332
    assert plan.names[0] == "00000" and plan.names[-1] == "00331"
    assert plan.row_range(331) == range(3_310_000, 3_318_333)


def test_row_ranges_partition_the_rows() -> None:
    plan = ShardPlan(n_rows=70, shard_size=32)
    rows = [i for shard in range(plan.n_shards) for i in plan.row_range(shard)]
    assert rows == list(range(70))
    with pytest.raises(ValueError, match="out of range"):
        plan.row_range(3)
    with pytest.raises(ValueError, match="shard_size"):
        ShardPlan(n_rows=1, shard_size=0)


def test_blocks_cover_the_shards_in_order() -> None:
    """CC3M's 332 shards in blocks of 8: 41 full blocks and a last one of 4; the shards of
    every block, in order, are every shard once."""
    plan = ShardPlan(n_rows=3_318_333, shard_size=10_000)
    blocks = plan.blocks(8)
    assert len(blocks) == 42
    assert (blocks[0], blocks[1], blocks[-1]) == ("00000-00007", "00008-00015", "00328-00331")
    assert [shard for block in blocks for shard in block_shards(block)] == plan.names
    assert ShardPlan(n_rows=70, shard_size=32).blocks(2) == ["00000-00001", "00002-00002"]
    assert plan.blocks(1)[:2] == ["00000-00000", "00001-00001"]
    assert len(plan.blocks(1000)) == 1
    with pytest.raises(ValueError, match="shards_per_block must be positive"):
        plan.blocks(0)
    for bad in ("00007", "00008-00003", "a-b"):
        with pytest.raises(ValueError, match=f"not a block of shards: '{bad}'"):
            block_shards(bad)


def test_shard_paths_take_one_path_or_several(tmp_path: Path) -> None:
    assert shard_paths("a/00000.parquet") == [Path("a/00000.parquet")]
    assert shard_paths([tmp_path / "1", "2"]) == [tmp_path / "1", Path("2")]
    with pytest.raises(ValueError, match="no shard file given"):
        shard_paths([])


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", 0), (b"a\n", 1), (b"a\nb", 2), (b"a\nb\n", 2), (b"\n\n\n", 3)],
)
def test_count_lines(tmp_path: Path, content: bytes, expected: int) -> None:
    path = tmp_path / "x.tsv"
    path.write_bytes(content)
    assert count_lines(path) == expected
    assert count_lines(path, limit=1) == min(1, expected)


def test_count_lines_cached_reuses_a_count_until_the_file_changes(tmp_path: Path) -> None:
    """The count is kept per resolved path with the file's size, mtime and inode: a record is
    trusted while they match (a doctored record proves the file was not read again), and any
    change to the file counts it anew."""
    tsv, cache = tmp_path / "cc3m.tsv", tmp_path / "state" / "tsv_lines.json"
    tsv.write_bytes(b"a\tu\nb\tv\nc\tw\n")
    assert count_lines_cached(tsv, None, cache) == 3
    records = json.loads(cache.read_text())
    record = records[str(tsv.resolve())]
    assert record["lines"] == 3 and record["size"] == tsv.stat().st_size
    record["lines"] = 1000
    cache.write_text(json.dumps(records))
    assert count_lines_cached(tsv, None, cache) == 1000
    assert count_lines_cached(tsv, 10, cache) == 10  # the limit applies to a cached count
    with tsv.open("ab") as handle:
        handle.write(b"d\tx\n")
    assert count_lines_cached(tsv, None, cache) == 4
    assert json.loads(cache.read_text())[str(tsv.resolve())]["lines"] == 4


def test_count_lines_cached_records_only_full_counts(tmp_path: Path) -> None:
    """A count a limit cut short is no line count of the file: not recorded; a limit above the
    file's lines reads it all and records it. A corrupt cache is counted over."""
    tsv, cache = tmp_path / "cc3m.tsv", tmp_path / "tsv_lines.json"
    tsv.write_bytes(b"a\nb\nc\n")
    assert count_lines_cached(tsv, 2, cache) == 2
    assert not cache.exists()
    assert count_lines_cached(tsv, 5, cache) == 3
    assert json.loads(cache.read_text())[str(tsv.resolve())]["lines"] == 3
    cache.write_text("{not json")
    assert count_lines_cached(tsv, None, cache) == 3
    assert json.loads(cache.read_text())[str(tsv.resolve())]["lines"] == 3
