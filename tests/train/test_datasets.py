"""Map-style training datasets: rows and caches joined by key across shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import (
    dialogue_row,
    ingest_row,
    jpeg_bytes,
    write_dialogue,
    write_ingested,
)

from dialogclip.models.openclip import ClipSpec
from dialogclip.train.cache import embed_captions, embed_images, read_embedding_cache
from dialogclip.train.datasets import DraftDataset, ShardFiles, ThirdTowerDataset
from dialogclip.train.rows import RowsSettings, build_rows, load_tokenizer, read_rows, write_rows
from dialogclip.train.sampler import unique_image_batches

Q = ["What is shown?", "What colour is it?", "Where is it?"]


def _answers(index: int) -> list[str]:
    return [f"thing {index}", f"colour {index}", f"place {index}"]


def _make_shard(folder: Path, name: str, indices: list[int], corrupt: int | None, spec) -> dict:
    """An ingested shard, its LLaVA dialogue, both caches and both rows forms."""
    ingested = write_ingested(
        folder / "ingest" / f"{name}.parquet",
        [ingest_row(i, jpg=jpeg_bytes(99)[:150] if i == corrupt else None) for i in indices],
    )
    dialogue = write_dialogue(
        folder / "dialogue" / f"{name}.parquet",
        [dialogue_row(i, Q, _answers(i)) for i in indices],
    )
    files = {
        "image": folder / "emb" / "image" / f"{name}.arrow",
        "text": folder / "emb" / "text" / f"{name}.arrow",
        "ingested": ingested,
        "dialogue": dialogue,
    }
    embed_images(ingested, spec, files["image"], batch_size=4, device="cpu")
    embed_captions(ingested, spec, files["text"], batch_size=4, device="cpu")
    tokenizer = load_tokenizer("tiny-clip")
    for form in ("pairs", "concatenated"):
        result = build_rows(ingested, dialogue, RowsSettings("tiny-clip", form), tokenizer)
        files[form] = folder / "rows" / form / f"{name}.arrow"
        write_rows(result, files[form], folder / "rows" / form / "stats" / f"{name}.json")
    return files


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_checkpoint) -> list[dict]:
    spec = ClipSpec("tiny-clip", str(tiny_checkpoint))
    folder = tmp_path_factory.mktemp("data")
    return [
        _make_shard(folder, "00000", [0, 1, 2, 3], corrupt=2, spec=spec),
        _make_shard(folder, "00001", [4, 5, 6], corrupt=None, spec=spec),
    ]


def _files(shards: list[dict], form: str) -> list[ShardFiles]:
    return [ShardFiles(s[form], s["image"], s["text"]) for s in shards]


def test_third_tower_items_come_from_the_caches_and_rows(shards) -> None:
    data = ThirdTowerDataset(_files(shards, "concatenated"))
    # 7 images, the corrupt one (key 2) skipped: its rows exist, its image embedding does not.
    assert len(data) == 6 and data.excluded == {"image_decode_error": 1}
    images = [read_embedding_cache(s["image"]) for s in shards]
    captions = [read_embedding_cache(s["text"]) for s in shards]
    rows = [read_rows(s["concatenated"]) for s in shards]
    expected_keys = ["000000000", "000000001", "000000003", "000000004", "000000005", "000000006"]
    for i, key in enumerate(expected_keys):
        item = data[i]
        shard = 0 if i < 3 else 1
        image_row = images[shard].keys.to_pylist().index(key)
        caption_row = captions[shard].keys.to_pylist().index(key)
        row = rows[shard].keys.to_pylist().index(key)
        assert set(item) == {"image_emb", "caption_emb", "dialogue_tokens"}
        assert item["image_emb"].dtype == torch.float32 and item["image_emb"].shape == (32,)
        assert torch.equal(
            item["image_emb"], torch.tensor(images[shard].emb[image_row], dtype=torch.float32)
        )
        assert torch.equal(
            item["caption_emb"], torch.tensor(captions[shard].emb[caption_row], dtype=torch.float32)
        )
        assert item["dialogue_tokens"].dtype == torch.int64
        assert torch.equal(
            item["dialogue_tokens"], torch.from_numpy(rows[shard].tokens[row].astype(np.int64))
        )
    assert data[-1]["dialogue_tokens"].tolist() == data[5]["dialogue_tokens"].tolist()


def test_draft_items_and_groups(shards) -> None:
    data = DraftDataset(_files(shards, "pairs"))
    assert len(data) == 18  # 6 usable images x 3 pairs
    item = data[0]
    assert set(item) == {"image_emb", "caption_tokens", "dialogue_tokens"}
    tokenizer = load_tokenizer("tiny-clip")
    assert item["caption_tokens"].tolist() == tokenizer(["caption of image 0"])[0].tolist()
    assert item["dialogue_tokens"].tolist() == tokenizer(["What is shown? thing 0"])[0].tolist()
    # Rows of one image share a group (and its image embedding); images differ across shards.
    groups = data.groups
    assert len(np.unique(groups)) == 6
    for start in range(0, 18, 3):
        assert len(set(groups[start : start + 3].tolist())) == 1
        assert torch.equal(data[start]["image_emb"], data[start + 2]["image_emb"])
    for batch in unique_image_batches(groups, 6, seed=0)(0):
        stacked = data.batch(batch)
        assert stacked["image_emb"].shape == (6, 32)
        assert len({tuple(row.tolist()) for row in stacked["image_emb"]}) == 6
        # batch() equals stacking the items.
        for name in stacked:
            assert torch.equal(stacked[name], torch.stack([data[i][name] for i in batch]))


def test_a_block_file_reads_as_its_shards_files(shards, tiny_checkpoint, tmp_path) -> None:
    """The training data of a block of shards (one file of each kind, train.shards_per_block)
    gives the datasets the same rows, in the same order, with the same image groups and values,
    as one file per shard: the block size never changes what a run trains on."""
    spec = ClipSpec("tiny-clip", str(tiny_checkpoint))
    ingested = [s["ingested"] for s in shards]
    dialogue = [s["dialogue"] for s in shards]
    block = {"image": tmp_path / "image.arrow", "text": tmp_path / "text.arrow"}
    embed_images(ingested, spec, block["image"], batch_size=3, device="cpu")
    embed_captions(ingested, spec, block["text"], batch_size=3, device="cpu")
    tokenizer = load_tokenizer("tiny-clip")
    for form in ("pairs", "concatenated"):
        block[form] = tmp_path / f"{form}.arrow"
        rows = build_rows(ingested, dialogue, RowsSettings("tiny-clip", form), tokenizer)
        write_rows(rows, block[form], tmp_path / f"{form}.json")
    # The corrupt image's rows are skipped: its 3 pairs, or its one joined dialogue.
    for dataset, form, skipped in (
        (DraftDataset, "pairs", 3),
        (ThirdTowerDataset, "concatenated", 1),
    ):
        per_shard = dataset(_files(shards, form))
        whole = dataset([ShardFiles(block[form], block["image"], block["text"])])
        assert len(whole) == len(per_shard) > 0
        assert whole.excluded == per_shard.excluded == {"image_decode_error": skipped}
        assert np.array_equal(whole.groups, per_shard.groups)
        every = np.arange(len(whole))
        got, want = whole.batch(every), per_shard.batch(every)
        assert got.keys() == want.keys()
        for name in want:
            assert torch.equal(got[name], want[name]), (form, name)


def test_a_cache_of_another_shard_is_an_error_naming_key_and_files(shards) -> None:
    wrong = [ShardFiles(shards[0]["pairs"], shards[1]["image"])]
    with pytest.raises(
        KeyError,
        match=r"key 000000000 of .*00000\.arrow has no image embedding in .*image/00001\.arrow",
    ):
        DraftDataset(wrong)
    wrong = [ShardFiles(shards[1]["concatenated"], shards[1]["image"], shards[0]["text"])]
    with pytest.raises(
        KeyError, match=r"key 000000004 of .*has no caption embedding in .*text/00000\.arrow"
    ):
        ThirdTowerDataset(wrong)


def test_missing_files_are_named(shards, tmp_path) -> None:
    absent = tmp_path / "rows" / "00009.arrow"
    with pytest.raises(
        FileNotFoundError,
        match=r"00009\.arrow: file not found \(written by `dialogclip train-rows`\)",
    ):
        DraftDataset([ShardFiles(absent, shards[0]["image"])])
    absent_image = tmp_path / "image" / "00009.arrow"
    with pytest.raises(
        FileNotFoundError,
        match=r"00009\.arrow: file not found \(written by `dialogclip embed-train-images`\)",
    ):
        DraftDataset([ShardFiles(shards[0]["pairs"], absent_image)])
    with pytest.raises(ValueError, match="needs the caption cache too"):
        ThirdTowerDataset([ShardFiles(shards[0]["concatenated"], shards[0]["image"])])
    with pytest.raises(IndexError, match="row 18 out of range for 18 rows"):
        DraftDataset(_files(shards, "pairs"))[18]
