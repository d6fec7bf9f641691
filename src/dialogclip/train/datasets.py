"""Map-style training datasets over the rows files and the embedding caches, joined by key.

Per block of shards (``core.shards``; one or more shards), a rows file (``train-rows``) is
matched with the image cache of the same block (``embed-train-images``) and, for the third
tower, its caption cache (``embed-train-captions``). All three are memory-mapped
(``arrow_files``): building a dataset reads only the key columns, and a row costs a few slices
of mapped memory, shared by every worker process through the page cache.

- :class:`ThirdTowerDataset`: ``{"image_emb": [D] float32, "caption_emb": [D] float32,
  "dialogue_tokens": [L] int64}`` - I(x) and T(y) from the caches, G's input z tokenised;
- :class:`DraftDataset`: ``{"image_emb": [D] float32, "caption_tokens": [L] int64,
  "dialogue_tokens": [L] int64}`` - the text tower T trains, so captions come as tokens.

A row whose key is not in the image cache is skipped (and counted in ``excluded``) only when
the cache records that key's image as undecodable; any other missing key - a cache of another
block, a stale file - is an error naming the key and both files. ``groups`` gives each row's
image as an integer (rows of one image share it), the input of
``sampler.unique_image_batches``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dialogclip.train.cache import EmbeddingCache, read_embedding_cache
from dialogclip.train.rows import TrainingRows, read_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardFiles:
    """The files of one block of shards (or of one shard) that a dataset joins."""

    rows: Path  # results/train/rows/.../{block}.arrow
    image_emb: Path  # results/train/emb/image/{image_model}/{block}.arrow
    caption_emb: Path | None = None  # results/train/emb/text/{text_model}/{block}.arrow


@dataclass
class _Shard:
    rows: TrainingRows
    image: EmbeddingCache
    caption: EmbeddingCache | None


class CachedTrainingDataset(Dataset):
    """Rows of several shards joined with their caches; subclasses choose the fields."""

    needs_caption_cache = False

    def __init__(self, shards: Sequence[ShardFiles]) -> None:
        if not shards:
            raise ValueError("no shards given")
        self.shards: list[_Shard] = []
        self.excluded = {"image_decode_error": 0}
        parts: dict[str, list[np.ndarray]] = {
            name: [] for name in ("shard", "row", "image_row", "caption_row", "group")
        }
        image_offset = 0
        for index, files in enumerate(shards):
            shard = self._open(files)
            rows, image_rows = self._image_rows(shard, files)
            caption_rows = (
                self._caption_rows(shard, files, rows) if shard.caption is not None else None
            )
            self.shards.append(shard)
            parts["shard"].append(np.full(len(rows), index, dtype=np.int32))
            parts["row"].append(rows)
            parts["image_row"].append(image_rows)
            parts["caption_row"].append(
                caption_rows if caption_rows is not None else np.zeros(0, np.int64)
            )
            parts["group"].append(image_offset + image_rows)
            image_offset += len(shard.image.keys)
        self._shard = np.concatenate(parts["shard"])  # (N,) shard of each dataset row
        self._row = np.concatenate(parts["row"])  # (N,) row in that shard's rows file
        self._image_row = np.concatenate(parts["image_row"])  # (N,) row in its image cache
        self._caption_row = np.concatenate(parts["caption_row"])
        self.groups = np.concatenate(parts["group"])  # (N,) image id, unique across shards
        self._check_widths()
        if self.excluded["image_decode_error"]:
            log.warning(
                "%d rows skipped: their images are recorded as undecodable in the image caches",
                self.excluded["image_decode_error"],
            )
        log.info("%d training rows of %d images", len(self), len(np.unique(self.groups)))

    def _open(self, files: ShardFiles) -> _Shard:
        caption = None
        if self.needs_caption_cache:
            if files.caption_emb is None:
                raise ValueError(f"{files.rows}: this dataset needs the caption cache too")
            caption = read_embedding_cache(files.caption_emb, "text")
        return _Shard(
            read_rows(files.rows), read_embedding_cache(files.image_emb, "image"), caption
        )

    def _image_rows(self, shard: _Shard, files: ShardFiles) -> tuple[np.ndarray, np.ndarray]:
        """(rows kept, their image-cache rows): undecodable images skipped, others required."""
        found = shard.image.rows_of(shard.rows.keys)
        absent = np.flatnonzero(found < 0)
        undecodable = shard.image.errors
        for row in absent:
            key = shard.rows.keys[int(row)].as_py()
            if key not in undecodable:
                raise KeyError(
                    f"key {key} of {files.rows} has no image embedding in {files.image_emb}: "
                    "the cache belongs to other shards or is stale; delete it so that it is "
                    "recomputed"
                )
        self.excluded["image_decode_error"] += len(absent)
        kept = np.flatnonzero(found >= 0)
        return kept, found[kept]

    def _caption_rows(self, shard: _Shard, files: ShardFiles, rows: np.ndarray) -> np.ndarray:
        found = shard.caption.rows_of(shard.rows.keys)[rows]
        if (found < 0).any():
            key = shard.rows.keys[int(rows[np.flatnonzero(found < 0)[0]])].as_py()
            raise KeyError(
                f"key {key} of {files.rows} has no caption embedding in {files.caption_emb}: "
                "the cache belongs to other shards or is stale; delete it so that it is "
                "recomputed"
            )
        return found

    def _check_widths(self) -> None:
        def widths(name: str, arrays: list[np.ndarray]) -> int:
            found = {array.shape[1] for array in arrays}
            if len(found) != 1:
                raise ValueError(f"the shards' {name} have different widths {sorted(found)}")
            return found.pop()

        dim = widths("image embeddings", [s.image.emb for s in self.shards])
        if self.needs_caption_cache:
            caption_dim = widths("caption embeddings", [s.caption.emb for s in self.shards])
            if caption_dim != dim:
                raise ValueError(
                    f"image embeddings have {dim} dims, caption embeddings {caption_dim}"
                )
        widths("token rows", [s.rows.tokens for s in self.shards])
        models = {s.image.metadata.get("model_key") for s in self.shards}
        if len(models) != 1:
            raise ValueError(f"the image caches come from different models: {sorted(models)}")
        self.dim = dim

    def __len__(self) -> int:
        return len(self._row)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """One row: a dict of tensors (see the subclasses)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        return {name: value[0] for name, value in self.batch([int(index) % len(self)]).items()}

    def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """Rows ``indices`` stacked: each field [B, ...] (what collating ``self[i]`` gives)."""
        indices = np.asarray(indices, dtype=np.int64)
        out: dict[str, list[np.ndarray]] = {name: [] for name in self.fields()}
        order: list[np.ndarray] = []
        for shard_index in np.unique(self._shard[indices]):
            where = np.flatnonzero(self._shard[indices] == shard_index)
            picked = indices[where]
            shard = self.shards[int(shard_index)]
            for name, value in self._fields(shard, picked).items():
                out[name].append(value)
            order.append(where)
        # Back to the order of `indices`.
        inverse = np.argsort(np.concatenate(order), kind="stable")
        return {
            name: torch.from_numpy(np.concatenate(values)[inverse]) for name, values in out.items()
        }

    def fields(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _fields(self, shard: _Shard, picked: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _image_emb(self, shard: _Shard, picked: np.ndarray) -> np.ndarray:
        return shard.image.emb[self._image_row[picked]].astype(np.float32)  # [B, D]

    def _tokens(self, matrix: np.ndarray, picked: np.ndarray) -> np.ndarray:
        return matrix[self._row[picked]].astype(np.int64)  # [B, L]


class ThirdTowerDataset(CachedTrainingDataset):
    """Third tower (CLIP-3Modal): frozen I(x) and T(y) from the caches, G's dialogue tokens."""

    needs_caption_cache = True

    def fields(self) -> tuple[str, ...]:
        return ("image_emb", "caption_emb", "dialogue_tokens")

    def _fields(self, shard: _Shard, picked: np.ndarray) -> dict[str, Any]:
        return {
            "image_emb": self._image_emb(shard, picked),
            "caption_emb": shard.caption.emb[self._caption_row[picked]].astype(np.float32),
            "dialogue_tokens": self._tokens(shard.rows.tokens, picked),
        }


class DraftDataset(CachedTrainingDataset):
    """DRAFT: frozen I(x) from the cache; the trained text tower reads captions and dialogue."""

    def fields(self) -> tuple[str, ...]:
        return ("image_emb", "caption_tokens", "dialogue_tokens")

    def _fields(self, shard: _Shard, picked: np.ndarray) -> dict[str, Any]:
        return {
            "image_emb": self._image_emb(shard, picked),
            "caption_tokens": self._tokens(shard.rows.caption_tokens, picked),
            "dialogue_tokens": self._tokens(shard.rows.tokens, picked),
        }
