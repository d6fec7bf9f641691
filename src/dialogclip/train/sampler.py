"""Global batches in which no image appears twice (DRAFT: ~3 dialogue samples per image).

Two samples of the same image in one contrastive batch are false negatives for each other:
each one's image is also "the other" sample's positive. :func:`unique_image_batches` therefore
plans every epoch's global batches so that no group (image) appears twice in any of them. The
trainer slices each global batch contiguously across processes, so no image is ever split
between two processes either.

Construction (one epoch, deterministic in ``(seed, epoch)``):

1. The number of batches ``m`` is the largest for which ``sum_g min(size_g, m) >= m * B``: a
   group cannot give more than one sample to each batch, so no plan can have more full
   batches; the fixed-point iteration ``m <- floor(sum_g min(size_g, m) / B)`` from
   ``floor(N / B)`` reaches it.
2. Groups are shuffled, and the samples of each group shuffled; a group larger than ``m`` keeps
   ``m`` of its samples (the others "cannot be placed": dropped this epoch). The samples, group
   after group, are laid into a ``B x m`` grid row by row; the last ``N' - m * B`` samples of
   the sequence (fewer than ``B`` - the final incomplete batch, a random choice each epoch)
   are dropped.
3. Each grid row gets its own random permutation of the ``m`` columns, and column ``j`` is
   batch ``j``. Inside a row a group's samples go to different columns (the permutation is a
   bijection). A group split over the end of row ``r`` and the start of row ``r + 1`` (it fits
   in two rows, as ``size <= m``) has the columns of its first part excluded for its second
   part, by swapping those entries of row ``r + 1``'s permutation with later ones.
4. Batch order and the order inside each batch are shuffled.

Independent permutations per row scatter the neighbours of a group in the sequence over
unrelated batches, so batches do not share most of their images (as they would with the plain
column-wise fill ``position mod m``, where the three samples of every image sit in three
adjacent batches together with the same other images).

Every sample appears at most once per epoch; exactly ``dropped`` samples (the excess of groups
larger than ``m`` plus the final incomplete batch) are left out, a different random set each
epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence

import numpy as np

log = logging.getLogger(__name__)
TIE_BREAK = 1 << 20  # random low part of a sort key; group/batch counts stay below 2**40


def max_batches(sizes: np.ndarray, batch_size: int) -> int:
    """The largest ``m`` with ``sum(min(sizes, m)) >= m * batch_size`` (see the module doc)."""
    m = int(sizes.sum()) // batch_size
    while m > 0:
        fitting = int(np.minimum(sizes, m).sum()) // batch_size
        if fitting == m:
            break
        m = fitting
    return m


class UniqueImageBatches:
    """A ``BatchPlan``: ``plan(epoch) -> list of global batches (row indices)``.

    ``groups[i]`` is the group (image key or id) of row ``i``.
    """

    def __init__(self, groups: Sequence[Hashable] | np.ndarray, batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        _, codes, sizes = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
        self.codes = codes.astype(np.int64).reshape(-1)  # (N,) group of each row, 0..G-1
        self.sizes = sizes.astype(np.int64)  # (G,)
        self.batch_size = batch_size
        self.seed = seed
        self.n_rows = len(self.codes)
        self.n_batches = max_batches(self.sizes, batch_size) if self.n_rows else 0
        if self.n_batches == 0:
            raise ValueError(
                f"cannot form one batch of {batch_size} distinct images from {self.n_rows} rows "
                f"of {len(self.sizes)} images: lower the batch size or add data"
            )
        placeable = int(np.minimum(self.sizes, self.n_batches).sum())
        self.n_unplaceable = self.n_rows - placeable  # samples beyond m of one group
        self.dropped = self.n_rows - self.n_batches * batch_size  # per epoch
        log.info(
            "%d rows of %d images -> %d batches of %d per epoch (%d samples dropped: %d of "
            "images with more than %d samples, %d of the final incomplete batch)",
            self.n_rows,
            len(self.sizes),
            self.n_batches,
            batch_size,
            self.dropped,
            self.n_unplaceable,
            self.n_batches,
            self.dropped - self.n_unplaceable,
        )

    def __call__(self, epoch: int) -> list[list[int]]:
        """The global batches of ``epoch`` (deterministic in ``(seed, epoch)``)."""
        rng = np.random.default_rng([self.seed, epoch])
        m, width = self.n_batches, self.batch_size
        # 2. Rows ordered by (shuffled group, shuffled sample); each group capped at m samples.
        # One integer sort key: shuffled group rank, then a random tie-break inside the group
        # (several times faster than a two-key lexsort on millions of rows).
        group_rank = rng.permutation(len(self.sizes))[self.codes]
        order = np.argsort(group_rank * TIE_BREAK + rng.integers(0, TIE_BREAK, self.n_rows))
        grouped = self.codes[order]
        starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
        within = np.arange(self.n_rows) - np.repeat(starts, np.diff(np.r_[starts, self.n_rows]))
        order, grouped = order[within < m], grouped[within < m]
        order, grouped = order[: m * width], grouped[: m * width]
        # 3. One column permutation per grid row; fix the groups that wrap to the next row.
        columns = np.argsort(rng.random((width, m)), axis=1)
        for r in range(1, width):
            first = r * m
            group = grouped[first]
            if grouped[first - 1] != group:
                continue
            before = np.count_nonzero(grouped[max(first - m, 0) : first] == group)
            after = np.count_nonzero(grouped[first : first + m] == group)
            row = columns[r]  # a view: swaps below change `columns`
            used = np.isin(row, columns[r - 1, m - before :])
            conflicts = np.flatnonzero(used[:after])
            if conflicts.size:
                # size <= m leaves enough columns unused by the first part (module docstring).
                free = after + np.flatnonzero(~used[after:])
                swap = rng.choice(free, size=conflicts.size, replace=False)
                row[conflicts], row[swap] = row[swap].copy(), row[conflicts].copy()
        batch_of = columns.reshape(-1)  # grid position p = r * m + c -> batch columns[r, c]
        # 4. Shuffle the batches and the rows inside each.
        inside = np.argsort(
            rng.permutation(m)[batch_of] * TIE_BREAK + rng.integers(0, TIE_BREAK, m * width)
        )
        batches = order[inside].reshape(m, width)
        return batches.tolist()


def unique_image_batches(
    groups: Sequence[Hashable] | np.ndarray, batch_size: int, seed: int
) -> UniqueImageBatches:
    """Plan global batches of ``batch_size`` rows with no group twice in a batch.

    ``groups[i]``: the image (key or integer id) of row ``i``. Returns a ``BatchPlan``
    (``epoch -> list[list[int]]``); see the module docstring for what is dropped.
    """
    return UniqueImageBatches(groups, batch_size, seed)
