"""Frozen-tower embedding caches: I(x) and T(y) of a block of ingested shards, computed once.

The image tower I (both methods) and the caption text tower T (the third tower) are frozen, so
their embeddings of the training set never change; computing them once turns training into
running only the trained tower. One file per (tower, block), a block being consecutive shards
(``core.shards``; one or more):

- ``results/train/emb/image/{image_model}/{block}.arrow``: I(x) of the block's rows with
  ``status == "success"``, shard after shard in key order, keyed by ``naming.image_model_key``
  (architecture, pretrained tag or checkpoint, QuickGELU setting). The image preprocessing is a
  function of the architecture and the pretrained config, so the key covers it; nothing else
  (not the training method, generator or text form) enters, so the third tower and DRAFT on
  the same model share the file.
- ``results/train/emb/text/{text_model}/{block}.arrow``: T(caption) of the same rows, keyed by
  ``naming.text_model_key``.

**Format**: an uncompressed Arrow IPC file (``arrow_files``) with two columns, ``key``
(string) and ``emb`` (``fixed_size_list<float16, D>``), one record batch: the reader maps the
file and views ``emb`` as an [N, D] numpy array without copying (random row access at memory
speed, the page cache shared by all data-loader workers and concurrent runs).

**Precision**: float16 unit vectors. Each component lies in [-1, 1], where float16's 11-bit
significand gives an absolute rounding error <= 2^-12 (about 2.4e-4, and below 1.2e-4 for the
typical components of a 512-1024-dimensional unit vector), so a cosine similarity moves by
about 1e-4 - far below the precision of the towers that produce them on a GPU (fp16/bf16
autocast; bf16 keeps only 8 bits) and of the logits' own noise. It halves the size and the I/O
of float32: ViT-B-32 (D = 512) takes 1 KiB per image, ~3 GB for the 2.9 M CC3M images
(ViT-H-14, D = 1024: ~6 GB). Readers convert rows to float32 for the loss.

**Decode errors** are recorded, not fatal: a ``success`` row whose bytes PIL cannot decode
(ingestion re-encodes every stored image, so this is rare) is left out of the image cache and
listed with its message in the file's metadata (``errors``: ``[{key, error}]``) and the log.
The training datasets skip exactly the keys listed there (counted) and refuse any other missing
key. The caption cache holds every ``success`` row (a caption needs no image).

Embedding runs in inference mode, under fp16 autocast on CUDA (as the evaluation embeds its
images) and in float32 elsewhere; features are L2-normalised in float32, then stored as float16.
Batch size, device and threads are machine settings (command flags), not part of the key: they
change the result only at the level of float rounding, far below float16's resolution.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dialogclip.core.images import decode_rgb
from dialogclip.core.machine import torch_device
from dialogclip.core.shards import ShardPaths, shard_paths
from dialogclip.core.versions import package_versions
from dialogclip.models.naming import image_model_key, quickgelu_label, text_model_key
from dialogclip.models.openclip import ClipSpec, LoadedClip
from dialogclip.train.arrow_files import (
    arrow_metadata,
    column_array,
    matrix,
    read_arrow,
    write_arrow_atomic,
)

log = logging.getLogger(__name__)

TOWERS = ("image", "text")
KEY_COLUMN = "key"
EMB_COLUMN = "emb"
EMB_DTYPE = np.float16
METADATA_NAME = "emb_cache"  # schema metadata key dialogclip:emb_cache
SUCCESS = "success"  # the ingested shard's status of a usable image
MADE_BY = {"image": "embed-train-images", "text": "embed-train-captions"}


def cache_schema(dim: int) -> pa.Schema:
    """``key`` + ``emb`` fixed_size_list<float16, dim>."""
    return pa.schema(
        [
            pa.field(KEY_COLUMN, pa.string(), nullable=False),
            pa.field(EMB_COLUMN, pa.list_(pa.float16(), dim), nullable=False),
        ]
    )


@dataclass
class EmbeddingCache:
    """A cache file as read: ``keys`` (N, an Arrow string array) and ``emb`` [N, D] float16, a
    read-only view of the memory-mapped file; ``metadata`` is what the writer recorded."""

    path: Path
    keys: pa.Array  # (N) string
    emb: np.ndarray  # [N, D] float16, unit rows
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> dict[str, str]:
        """{key: message} of the success rows that could not be decoded (image caches)."""
        return {item["key"]: item["error"] for item in self.metadata.get("errors", [])}

    def rows_of(self, keys: pa.Array) -> np.ndarray:
        """The row of each of ``keys`` in this cache, -1 where absent: (M,) int64."""
        import pyarrow.compute as pc

        found = pc.index_in(keys, value_set=self.keys)
        return found.fill_null(-1).to_numpy().astype(np.int64)


def read_embedding_cache(path: str | Path, tower: str | None = None) -> EmbeddingCache:
    """Map the cache ``path``; ``tower`` (``image``/``text``), if given, must match its own."""
    path = Path(path)
    table = read_arrow(path, MADE_BY.get(tower or "", ""))
    metadata = arrow_metadata(table).get(METADATA_NAME)
    if metadata is None or table.schema.names != [KEY_COLUMN, EMB_COLUMN]:
        raise ValueError(f"{path}: not an embedding cache (columns {table.schema.names})")
    if tower is not None and metadata.get("tower") != tower:
        raise ValueError(f"{path}: a {metadata.get('tower')} cache, expected a {tower} cache")
    keys = column_array(table.column(KEY_COLUMN))
    return EmbeddingCache(path, keys, matrix(table.column(EMB_COLUMN)), metadata)


def write_embedding_cache(
    keys: Sequence[str], emb: np.ndarray, output: str | Path, metadata: dict[str, Any]
) -> None:
    """Write ``keys`` (N) and ``emb`` [N, D] (stored as float16) atomically."""
    emb = np.ascontiguousarray(emb, dtype=EMB_DTYPE)
    if emb.ndim != 2 or emb.shape[0] != len(keys):
        raise ValueError(f"{len(keys)} keys but embeddings of shape {emb.shape}")
    dim = emb.shape[1]
    column = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float16()), dim)
    table = pa.Table.from_arrays([pa.array(keys, pa.string()), column], schema=cache_schema(dim))
    write_arrow_atomic(
        table, output, {METADATA_NAME: {**metadata, "n_rows": len(keys), "dim": dim}}
    )


# --- reading an ingested shard ---------------------------------------------------------------


def iter_success_rows(
    shard: Path, columns: Sequence[str], batch_size: int
) -> Iterator[dict[str, list[Any]]]:
    """The ``columns`` of the shard's ``success`` rows, ``batch_size`` rows at a time (the
    ingested shard's image bytes never sit in memory all at once)."""
    if not shard.is_file():
        raise FileNotFoundError(f"ingested shard not found: {shard}")
    handle = pq.ParquetFile(shard)
    wanted = list(dict.fromkeys(["key", "status", *columns]))
    missing = sorted(set(wanted) - set(handle.schema_arrow.names))
    if missing:
        raise ValueError(f"{shard}: not an ingested shard (missing columns {missing})")
    pending: dict[str, list[Any]] = {name: [] for name in columns}
    for record_batch in handle.iter_batches(batch_size=batch_size, columns=wanted):
        data = record_batch.to_pydict()
        for i, status in enumerate(data["status"]):
            if status != SUCCESS:
                continue
            for name in columns:
                pending[name].append(data[name][i])
            if len(pending[columns[0]]) == batch_size:
                yield pending
                pending = {name: [] for name in columns}
    if pending[columns[0]]:
        yield pending


def count_rows(shard: Path) -> tuple[int, int]:
    """(rows, success rows) of an ingested shard."""
    if not shard.is_file():
        raise FileNotFoundError(f"ingested shard not found: {shard}")
    statuses = pq.read_table(shard, columns=["status"]).column("status").to_pylist()
    return len(statuses), sum(status == SUCCESS for status in statuses)


def count_block_rows(shards: Sequence[Path]) -> tuple[int, int]:
    """(rows, success rows) of the block ``shards``; a missing shard fails here, naming it."""
    counts = [count_rows(shard) for shard in shards]
    return sum(n for n, _ in counts), sum(n for _, n in counts)


def iter_block_rows(
    shards: Iterable[Path], columns: Sequence[str], batch_size: int
) -> Iterator[dict[str, list[Any]]]:
    """:func:`iter_success_rows` of each shard of a block, shard after shard (a batch never
    spans two shards)."""
    for shard in shards:
        yield from iter_success_rows(shard, columns, batch_size)


# --- embedding ------------------------------------------------------------------------------


def _provenance(
    tower: str, spec: ClipSpec, clip: LoadedClip, shards: Sequence[Path]
) -> dict[str, Any]:
    key_of = image_model_key if tower == "image" else text_model_key
    provenance = {
        "tower": tower,
        "model_key": key_of(spec.architecture, spec.pretrained, spec.quickgelu),
        "architecture": spec.architecture,
        "pretrained": spec.pretrained,
        "quickgelu": clip.quickgelu,
        "quickgelu_setting": quickgelu_label(spec.quickgelu),
        "open_clip_name": clip.open_clip_name,
        "shards": [shard.stem for shard in shards],
        "dtype": "float16",
        "normalized": True,
        "versions": package_versions(("dialogclip", "torch", "open_clip_torch", "pyarrow")),
    }
    if tower == "image":
        provenance["preprocess"] = repr(clip.preprocess)
    return provenance


def _normalised_fp16(features: Any) -> np.ndarray:
    import torch.nn.functional as F

    return F.normalize(features.float(), dim=-1).cpu().numpy().astype(EMB_DTYPE)


def embed_images(
    shards: ShardPaths,
    spec: ClipSpec,
    output: str | Path,
    batch_size: int = 256,
    device: str = "auto",
    threads: int = 1,
    weights_dir: str | Path | None = None,
) -> dict[str, Any]:
    """I(x) of the success rows of ``shards`` (one ingested shard or a block of them, in
    order) into the cache ``output``: ``emb`` [N, D] float16; returns a summary."""
    import torch

    from dialogclip.models.openclip import load_clip
    from dialogclip.models.text_encoders import autocast_for

    shards, started = shard_paths(shards), time.perf_counter()
    # First: a missing shard fails before the model loads.
    n_rows, n_success = count_block_rows(shards)
    run_device = torch_device(device)
    clip = load_clip(spec, device=run_device, weights_dir=weights_dir)
    keys: list[str] = []
    chunks: list[np.ndarray] = []
    errors: list[dict[str, str]] = []

    def prepare(row: tuple[str, bytes | None]) -> tuple[str, Any, str | None]:
        key, data = row
        try:
            return key, clip.preprocess(decode_rgb(data)), None
        except ValueError as err:
            return key, None, str(err)

    def prepare_batch(batch: dict[str, list[Any]]) -> list[tuple[str, Any, str | None]]:
        return list(decode_pool.map(prepare, zip(batch["key"], batch["jpg"], strict=True)))

    batches = iter_block_rows(shards, ["key", "jpg"], batch_size)
    # Decoding (threads) runs one batch ahead of the model.
    with ThreadPoolExecutor(max(threads, 1)) as decode_pool, ThreadPoolExecutor(1) as ahead:
        future = ahead.submit(prepare_batch, next(batches, {"key": [], "jpg": []}))
        while True:
            prepared = future.result()
            if not prepared:
                break
            future = ahead.submit(prepare_batch, next(batches, {"key": [], "jpg": []}))
            good = [(key, pixels) for key, pixels, error in prepared if error is None]
            for key, _, error in prepared:
                if error is not None:
                    log.warning("image %s cannot be decoded: %s", key, error)
                    errors.append({"key": key, "error": error})
            if not good:
                continue
            pixels = torch.stack([pixels for _, pixels in good]).to(run_device)  # [B, 3, H, W]
            with torch.inference_mode(), autocast_for(run_device):
                chunks.append(_normalised_fp16(clip.model.encode_image(pixels)))  # [B, D]
            keys.extend(key for key, _ in good)
    emb = np.concatenate(chunks) if chunks else _empty(clip)
    metadata = {
        **_provenance("image", spec, clip, shards),
        "n_input_rows": n_rows,
        "n_success": n_success,
        "errors": errors,
    }
    write_embedding_cache(keys, emb, output, metadata)
    return _summary("image", output, len(keys), len(errors), started)


def embed_captions(
    shards: ShardPaths,
    spec: ClipSpec,
    output: str | Path,
    batch_size: int = 256,
    device: str = "auto",
    weights_dir: str | Path | None = None,
) -> dict[str, Any]:
    """T(caption) of the success rows of ``shards`` (one ingested shard or a block of them, in
    order) into the cache ``output``: ``emb`` [N, D] float16; returns a summary."""
    import torch

    from dialogclip.models.openclip import load_clip
    from dialogclip.models.text_encoders import autocast_for

    shards, started = shard_paths(shards), time.perf_counter()
    # First: a missing shard fails before the model loads.
    n_rows, n_success = count_block_rows(shards)
    run_device = torch_device(device)
    clip = load_clip(spec, device=run_device, weights_dir=weights_dir)
    keys: list[str] = []
    chunks: list[np.ndarray] = []
    for batch in iter_block_rows(shards, ["key", "caption"], batch_size):
        tokens = clip.tokenizer([caption or "" for caption in batch["caption"]])  # [B, L]
        with torch.inference_mode(), autocast_for(run_device):
            features = clip.model.encode_text(tokens.to(run_device))  # [B, D]
        chunks.append(_normalised_fp16(features))
        keys.extend(batch["key"])
    emb = np.concatenate(chunks) if chunks else _empty(clip)
    metadata = {
        **_provenance("text", spec, clip, shards),
        "n_input_rows": n_rows,
        "n_success": n_success,
        "errors": [],
    }
    write_embedding_cache(keys, emb, output, metadata)
    return _summary("text", output, len(keys), 0, started)


def _empty(clip: LoadedClip) -> np.ndarray:
    """[0, D]: a block without one usable row still gets its (empty) cache, of the right width."""
    import torch

    device = next(clip.model.parameters()).device
    with torch.inference_mode():
        dim = int(clip.model.encode_text(clip.tokenizer([""]).to(device)).shape[-1])
    return np.empty((0, dim), dtype=EMB_DTYPE)


def _summary(tower: str, output: str | Path, n_rows: int, n_errors: int, started: float) -> dict:
    seconds = time.perf_counter() - started
    summary = {
        "tower": tower,
        "output": str(output),
        "rows": n_rows,
        "errors": n_errors,
        "seconds": round(seconds, 3),
        "rows_per_s": round(n_rows / seconds, 1) if seconds > 0 else None,
    }
    log.info("%s embeddings: %s", tower, summary)
    return summary
