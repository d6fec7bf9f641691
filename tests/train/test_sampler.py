"""Global batches with no image twice: properties over random group sizes, determinism, and
the slices that two processes take of each global batch."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dialogclip.train.sampler import max_batches, unique_image_batches


def _brute_force_batches(sizes: np.ndarray, batch_size: int) -> int:
    """The most full batches any plan can have: a group gives at most one sample per batch."""
    return max(
        m for m in range(int(sizes.sum()) + 1) if np.minimum(sizes, m).sum() >= m * batch_size
    )


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    n_groups = int(rng.integers(1, 80))
    # Mostly DRAFT-like sizes (1-4), sometimes a large group that cannot be placed in full.
    sizes = rng.integers(1, 5, n_groups)
    if rng.random() < 0.3:
        sizes[0] = int(rng.integers(5, 40))
    groups = np.repeat(rng.permutation(10_000)[:n_groups], sizes)  # arbitrary ids
    rng.shuffle(groups)
    return groups, sizes, int(rng.integers(1, 16))


def test_property_every_sample_once_no_image_twice() -> None:
    rng = np.random.default_rng(2024)
    planned = 0
    for trial in range(400):
        groups, sizes, batch_size = _random_case(rng)
        best = _brute_force_batches(sizes, batch_size)
        if best == 0:
            with pytest.raises(ValueError, match=f"cannot form one batch of {batch_size} distinct"):
                unique_image_batches(groups, batch_size, seed=trial)
            continue
        plan = unique_image_batches(groups, batch_size, seed=trial)
        assert plan.n_batches == best == max_batches(sizes, batch_size)
        unplaceable = int(np.maximum(sizes - best, 0).sum())
        assert plan.n_unplaceable == unplaceable
        assert plan.dropped == len(groups) - best * batch_size
        assert plan.dropped - unplaceable < batch_size  # only the final incomplete batch
        for epoch in range(3):
            batches = plan(epoch)
            assert len(batches) == best
            assert all(len(batch) == batch_size for batch in batches)
            rows = [row for batch in batches for row in batch]
            assert len(rows) == len(set(rows))  # no sample twice in an epoch
            assert set(rows) <= set(range(len(groups)))
            for batch in batches:
                assert len(set(groups[batch].tolist())) == batch_size  # no image twice
            # A group never gives more samples than there are batches; others are all used
            # except the final incomplete batch's worth.
            used = Counter(groups[rows].tolist())
            assert all(used[g] <= best for g in used)
        planned += 1
    assert planned > 300


def test_plans_are_deterministic_in_seed_and_epoch() -> None:
    groups = np.repeat(np.arange(200), 3)
    plan = unique_image_batches(groups, 16, seed=7)
    assert plan(0) == unique_image_batches(groups, 16, seed=7)(0)
    assert plan(1) == plan(1)
    assert plan(0) != plan(1)
    assert plan(0) != unique_image_batches(groups, 16, seed=8)(0)
    # String keys work as groups too (the dataset's keys), with the same guarantees.
    keys = np.array([f"{g:09d}" for g in groups])
    for batch in unique_image_batches(keys, 16, seed=7)(0):
        assert len(set(keys[batch].tolist())) == 16


def test_two_processes_never_hold_the_same_image() -> None:
    # DRAFT: three samples per image; each process takes a contiguous half of a global batch.
    groups = np.repeat(np.arange(500), 3)
    batch_size, world = 24, 2
    plan = unique_image_batches(groups, batch_size, seed=0)
    for epoch in range(3):
        for batch in plan(epoch):
            per_rank = [
                set(groups[batch[r * batch_size // world : (r + 1) * batch_size // world]].tolist())
                for r in range(world)
            ]
            assert not per_rank[0] & per_rank[1]
            assert len(per_rank[0]) == len(per_rank[1]) == batch_size // world


def test_batches_do_not_share_most_of_their_images() -> None:
    # A plain column fill (position mod m) puts the three samples of every image into three
    # adjacent batches with the same neighbours: those batches share ~2/3 of their images.
    groups = np.repeat(np.arange(1000), 3)
    batch_size = 30
    batches = unique_image_batches(groups, batch_size, seed=0)(0)
    sets = [set(groups[batch].tolist()) for batch in batches]
    overlaps = [len(a & b) for i, a in enumerate(sets) for b in sets[i + 1 :]]
    # Random batches share ~B^2/G ~ 0.9 images on average; allow a generous tail.
    assert max(overlaps) <= 6
    assert np.mean(overlaps) < 1.5


def test_bad_batch_size_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        unique_image_batches([1, 2, 3], 0, seed=0)
    with pytest.raises(
        ValueError, match="cannot form one batch of 4 distinct images from 6 rows of 1"
    ):
        unique_image_batches([5] * 6, 4, seed=0)
