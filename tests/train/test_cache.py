"""Frozen-tower embedding caches: values against a naive per-image computation, float16
precision, memory-mapped zero-copy reading, decode errors recorded, a block of shards as its
shards' caches end to end, the commands."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from train_helpers import ingest_row, jpeg_bytes, write_ingested

from dialogclip.cli import main
from dialogclip.models.naming import image_model_key, text_model_key
from dialogclip.models.openclip import ClipSpec
from dialogclip.train.cache import embed_captions, embed_images, read_embedding_cache

CORRUPT = jpeg_bytes(99)[:200]  # a truncated JPEG: PIL cannot decode it


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> Path:
    """7 rows: 4 good images, a failed download, a corrupt image, a malformed row."""
    rows = [
        ingest_row(0),
        ingest_row(1, status="failed_to_download"),
        ingest_row(2, jpg=jpeg_bytes(2, size=(64, 30))),
        ingest_row(3, jpg=CORRUPT, caption="the corrupt one"),
        ingest_row(4),
        ingest_row(5, status="malformed_row"),
        ingest_row(6, caption="a much longer caption " * 3),
    ]
    return write_ingested(tmp_path_factory.mktemp("ingest") / "00000.parquet", rows)


@pytest.fixture(scope="module")
def spec(tiny_checkpoint) -> ClipSpec:
    return ClipSpec("tiny-clip", str(tiny_checkpoint))


@pytest.fixture(scope="module")
def image_cache(shard, spec, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("cache") / "image.arrow"
    embed_images(shard, spec, output, batch_size=2, device="cpu", threads=2)
    return output


def _naive_image_emb(clip, jpg: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(jpg)).convert("RGB")
    with torch.no_grad():
        features = clip.model.encode_image(clip.preprocess(image)[None])
    return F.normalize(features, dim=-1)[0].numpy()


def test_image_cache_holds_the_decodable_success_rows(image_cache, tiny_clip) -> None:
    cache = read_embedding_cache(image_cache, "image")
    assert cache.keys.to_pylist() == ["000000000", "000000002", "000000004", "000000006"]
    assert cache.emb.dtype == np.float16 and cache.emb.shape == (4, 32)
    jpgs = [jpeg_bytes(0), jpeg_bytes(2, size=(64, 30)), jpeg_bytes(4), jpeg_bytes(6)]
    expected = np.stack([_naive_image_emb(tiny_clip, jpg) for jpg in jpgs])
    # float16 rounding of unit vectors: at most 2**-12 per component.
    assert np.abs(cache.emb.astype(np.float32) - expected).max() <= 2.0**-12
    assert np.allclose(np.linalg.norm(cache.emb.astype(np.float32), axis=1), 1, atol=1e-3)


def test_decode_errors_are_recorded_not_fatal(image_cache) -> None:
    cache = read_embedding_cache(image_cache, "image")
    assert list(cache.errors) == ["000000003"]
    assert cache.errors["000000003"].startswith("OSError:")
    meta = cache.metadata
    assert (meta["n_input_rows"], meta["n_success"], meta["n_rows"]) == (7, 5, 4)


def test_cache_metadata_names_the_tower(image_cache, spec) -> None:
    meta = read_embedding_cache(image_cache).metadata
    assert meta["tower"] == "image"
    assert meta["model_key"] == image_model_key("tiny-clip", spec.pretrained, "auto")
    assert (meta["architecture"], meta["quickgelu"], meta["quickgelu_setting"]) == (
        "tiny-clip",
        False,
        "auto",
    )
    assert (meta["dtype"], meta["dim"], meta["normalized"], meta["shards"]) == (
        "float16",
        32,
        True,
        ["00000"],
    )
    assert "Normalize" in meta["preprocess"]


def test_reading_is_a_zero_copy_memory_map(image_cache) -> None:
    before = pa.total_allocated_bytes()
    cache = read_embedding_cache(image_cache, "image")
    # Nothing allocated in Arrow's pool: the buffers are the mapped file.
    assert pa.total_allocated_bytes() == before
    assert not cache.emb.flags.owndata and not cache.emb.flags.writeable
    assert cache.emb.base is not None
    tensor = torch.from_numpy(cache.emb.astype(np.float32))
    assert tensor.shape == (4, 32)


def test_batch_size_and_threads_do_not_change_the_cache(shard, spec, image_cache, tmp_path) -> None:
    other = tmp_path / "image-b5.arrow"
    embed_images(shard, spec, other, batch_size=5, device="cpu", threads=1)
    a, b = read_embedding_cache(image_cache), read_embedding_cache(other)
    assert a.keys.equals(b.keys)
    assert np.abs(a.emb.astype(np.float32) - b.emb.astype(np.float32)).max() <= 2.0**-11


def test_caption_cache_holds_every_success_row(shard, spec, tiny_clip, tmp_path) -> None:
    output = tmp_path / "text.arrow"
    embed_captions(shard, spec, output, batch_size=3, device="cpu")
    cache = read_embedding_cache(output, "text")
    keys = ["000000000", "000000002", "000000003", "000000004", "000000006"]
    assert cache.keys.to_pylist() == keys  # the corrupt image's caption is embedded too
    captions = [f"caption of image {i}" for i in (0, 2)]
    captions += ["the corrupt one", "caption of image 4", "a much longer caption " * 3]
    with torch.no_grad():
        expected = F.normalize(tiny_clip.model.encode_text(tiny_clip.tokenizer(captions)), dim=-1)
    assert np.abs(cache.emb.astype(np.float32) - expected.numpy()).max() <= 2.0**-12
    meta = cache.metadata
    assert meta["tower"] == "text" and meta["errors"] == []
    assert meta["model_key"] == text_model_key("tiny-clip", spec.pretrained, "auto")
    with pytest.raises(ValueError, match=r"text\.arrow: a text cache, expected a image cache"):
        read_embedding_cache(output, "image")


def test_a_shard_without_success_rows_gives_an_empty_cache(spec, tmp_path) -> None:
    shard = write_ingested(
        tmp_path / "00001.parquet", [ingest_row(10, status="failed_to_download")]
    )
    embed_images(shard, spec, tmp_path / "empty.arrow", device="cpu")
    cache = read_embedding_cache(tmp_path / "empty.arrow")
    assert cache.emb.shape == (0, 32) and len(cache.keys) == 0


def test_a_block_of_shards_is_its_shards_caches_end_to_end(
    shard, spec, image_cache, tmp_path
) -> None:
    """One job embeds a block of consecutive shards into one file: the shards' rows in order,
    the same embeddings as each shard alone, the counts and decode errors of all of them."""
    second = write_ingested(
        tmp_path / "00001.parquet",
        [ingest_row(10), ingest_row(11, jpg=CORRUPT), ingest_row(12, status="failed_to_download")],
    )
    block = tmp_path / "00000-00001.arrow"
    embed_images([shard, second], spec, block, batch_size=3, device="cpu", threads=2)
    alone = tmp_path / "00001.arrow"
    embed_images(second, spec, alone, batch_size=3, device="cpu", threads=2)
    got = read_embedding_cache(block, "image")
    parts = [read_embedding_cache(image_cache), read_embedding_cache(alone)]
    assert got.keys.to_pylist() == parts[0].keys.to_pylist() + parts[1].keys.to_pylist()
    assert got.keys.to_pylist()[-1] == "000000010"
    assert np.array_equal(got.emb, np.concatenate([part.emb for part in parts]))
    meta = got.metadata
    assert meta["shards"] == ["00000", "00001"]
    assert (meta["n_input_rows"], meta["n_success"], meta["n_rows"]) == (10, 7, 5)
    assert list(got.errors) == ["000000003", "000000011"]
    captions = tmp_path / "captions.arrow"
    embed_captions([shard, second], spec, captions, batch_size=4, device="cpu")
    assert read_embedding_cache(captions, "text").keys.to_pylist()[-2:] == [
        "000000010",
        "000000011",
    ]


def test_commands_write_the_caches(shard, spec, image_cache, tmp_path) -> None:
    params = json.dumps({"architecture": "tiny-clip", "pretrained": spec.pretrained})
    for command, name in (("embed-train-images", "i.arrow"), ("embed-train-captions", "t.arrow")):
        argv = [
            command,
            "--params",
            params,
            "--shards",
            str(shard),
            "--output",
            str(tmp_path / name),
        ]
        assert main([*argv, "--batch-size", "2", "--device", "cpu", "--threads", "1"]) == 0
    via_cli = read_embedding_cache(tmp_path / "i.arrow", "image")
    assert np.array_equal(via_cli.emb, read_embedding_cache(image_cache).emb)
    assert read_embedding_cache(tmp_path / "t.arrow", "text").emb.shape == (5, 32)


def test_missing_inputs_are_named(shard, spec, tmp_path, capfd) -> None:
    params = json.dumps({"architecture": "tiny-clip", "pretrained": spec.pretrained})
    missing = tmp_path / "absent.parquet"
    argv = ["embed-train-images", "--params", params, "--shards", str(shard), str(missing)]
    assert main([*argv, "--output", str(tmp_path / "x.arrow"), "--device", "cpu"]) == 2
    assert f"ingested shard not found: {missing}" in capfd.readouterr().err
    assert not (tmp_path / "x.arrow").exists()
    with pytest.raises(
        FileNotFoundError, match=r"nothing\.arrow: file not found .*embed-train-images"
    ):
        read_embedding_cache(tmp_path / "nothing.arrow", "image")
    (tmp_path / "garbage.arrow").write_bytes(b"not arrow at all")
    with pytest.raises(ValueError, match=r"garbage\.arrow: not a readable Arrow IPC file"):
        read_embedding_cache(tmp_path / "garbage.arrow")
