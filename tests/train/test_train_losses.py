"""Losses against naive per-sample references on seeded tensors, and against open_clip."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from dialogclip.train.losses import (
    DEFAULT_SIGMAS,
    draft_loss,
    gather_features,
    mmd_norm,
    mmd_rbf,
    mmd_rbf_1d,
    third_tower_loss,
)


def unit(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=generator, dtype=dtype), dim=-1)


def naive_ce(query: torch.Tensor, keys: torch.Tensor, scale: float) -> float:
    """mean_i -log softmax_j(scale * q_i . k_j)[i], one sample at a time in Python floats."""
    total = 0.0
    for i in range(len(query)):
        logits = [scale * float(query[i] @ keys[j]) for j in range(len(keys))]
        top = max(logits)
        log_norm = top + math.log(sum(math.exp(v - top) for v in logits))
        total += log_norm - logits[i]
    return total / len(query)


def naive_term(query: torch.Tensor, keys: torch.Tensor, scale: float, symmetric: bool) -> float:
    forward = naive_ce(query, keys, scale)
    return (forward + naive_ce(keys, query, scale)) / 2 if symmetric else forward


def naive_mmd(
    x: Sequence[Sequence[float]], y: Sequence[Sequence[float]], sigmas: Sequence[float]
) -> float:
    def k(u: Sequence[float], v: Sequence[float]) -> float:
        dist = sum((float(a) - float(b)) ** 2 for a, b in zip(u, v, strict=True))
        return sum(math.exp(-dist / (2 * s * s)) for s in sigmas)

    def mean_k(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
        return sum(k(u, v) for u in a for v in b) / (len(a) * len(b))

    return mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("a", [0.65, 0.3])
def test_third_tower_loss_equals_naive_loop(a: float, symmetric: bool) -> None:
    dialogue, image, text = unit(7, 5, 1), unit(7, 5, 2), unit(7, 5, 3)
    scale = 12.5
    got = third_tower_loss(dialogue, image, text, scale, a=a, symmetric=symmetric)
    want = a * naive_term(dialogue, image, scale, symmetric) + (1 - a) * naive_term(
        dialogue, text, scale, symmetric
    )
    assert got.dim() == 0
    assert float(got) == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_third_tower_default_is_one_directional_with_thesis_a() -> None:
    dialogue, image, text = unit(6, 4, 4), unit(6, 4, 5), unit(6, 4, 6)
    got = third_tower_loss(dialogue, image, text, 20.0)
    want = 0.65 * naive_ce(dialogue, image, 20.0) + 0.35 * naive_ce(dialogue, text, 20.0)
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_third_tower_symmetric_a1_equals_open_clip_clip_loss() -> None:
    dialogue, image, text = (
        unit(9, 8, 7, torch.float32),
        unit(9, 8, 8, torch.float32),
        unit(9, 8, 9, torch.float32),
    )
    scale = torch.tensor(100.0)
    got = third_tower_loss(dialogue, image, text, scale, a=1.0, symmetric=True)
    want = ClipLoss()(image, dialogue, scale)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_losses_ignore_autocast() -> None:
    # Under CPU bf16 autocast a plain matmul would run in bf16; the losses must not.
    dialogue, image, text = (
        unit(16, 32, 10, torch.float32),
        unit(16, 32, 11, torch.float32),
        unit(16, 32, 12, torch.float32),
    )
    plain = third_tower_loss(dialogue, image, text, 100.0)
    plain_draft, _ = draft_loss(image, text, dialogue, 100.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = third_tower_loss(dialogue, image, text, 100.0)
        auto_draft, _ = draft_loss(image, text, dialogue, 100.0)
        bf16_logits = 100.0 * dialogue @ image.T
    assert bf16_logits.dtype == torch.bfloat16  # autocast is really on here
    assert auto.dtype == torch.float32 and torch.equal(auto, plain)
    assert torch.equal(auto_draft, plain_draft)


@pytest.mark.parametrize(
    ("n", "m", "sigmas"),
    [(5, 7, (1.0,)), (6, 3, (0.5, 1.0, 2.0)), (4, 4, DEFAULT_SIGMAS)],
)
def test_mmd_rbf_equals_naive_double_loop(n: int, m: int, sigmas: tuple[float, ...]) -> None:
    generator = torch.Generator().manual_seed(n * 10 + m)
    x = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(m, 3, generator=generator, dtype=torch.float64) * 1.5 + 0.7
    got = mmd_rbf(x, y, sigmas)
    # float64 in, float64 math: the expansion ||u||^2 + ||v||^2 - 2u.v rounds differently.
    assert float(got) == pytest.approx(naive_mmd(x, y, sigmas), rel=1e-9, abs=1e-12)
    assert float(got) > 0


def test_mmd_rbf_zero_for_identical_and_grows_with_shift() -> None:
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(3))
    assert float(mmd_rbf(x, x.clone(), DEFAULT_SIGMAS)) == pytest.approx(0.0, abs=1e-6)
    values = [float(mmd_rbf(x, x + shift, (1.0, 2.0))) for shift in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert values[0] == pytest.approx(0.0, abs=1e-6)
    assert all(later > earlier for earlier, later in itertools.pairwise(values))
    assert values[-1] > 0.5


def test_mmd_rbf_rejects_bad_bandwidths() -> None:
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="sigmas must be one or more positive"):
        mmd_rbf(x, x, ())
    with pytest.raises(ValueError, match="sigmas must be one or more positive"):
        mmd_rbf(x, x, (1.0, -2.0))


# --- DRAFT (thesis chapter 4.4.2): naive transcriptions of eqs. 4.4.1-4.4.3 -------------------


def naive_eq_4_4_1_term(texts: torch.Tensor, images: torch.Tensor, scale: float) -> float:
    """One term of eq. 4.4.1 as printed: -1/N sum_i log[exp(I(x_i)^T T(u_i)/tau) /
    sum_j exp(I(x_j)^T T(u_i)/tau)], the denominator over the batch's images j."""
    n = len(texts)
    total = 0.0
    for i in range(n):
        numerator = math.exp(scale * float(images[i] @ texts[i]))
        denominator = sum(math.exp(scale * float(images[j] @ texts[i])) for j in range(n))
        total -= math.log(numerator / denominator)
    return total / n


def naive_logits(texts: torch.Tensor, images: torch.Tensor, scale: float) -> list[float]:
    """Every I(x_j)^T T(u_i) / tau of the batch, i and j over N: the N^2 scalar samples."""
    return [
        scale * float(images[j] @ texts[i]) for i in range(len(texts)) for j in range(len(images))
    ]


def naive_mmd2_pairs(x: Sequence[float], y: Sequence[float], sigmas: Sequence[float]) -> float:
    """Eq. 4.4.2 by the kernel trick, a Python double loop over every pair of scalars:
    ||1/n sum phi(x_i) - 1/m sum phi(y_j)||^2 = mean k(x, x') + mean k(y, y') - 2 mean k(x, y)."""

    def mean_k(a: Sequence[float], b: Sequence[float]) -> float:
        total = 0.0
        for u in a:
            for v in b:
                total += sum(math.exp(-((u - v) ** 2) / (2 * s * s)) for s in sigmas)
        return total / (len(a) * len(b))

    return mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)


def naive_mmd2_dense(x: torch.Tensor, y: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """The same O(n^2) pair sum with every pair's kernel value in one dense float64 matrix (for
    N = 32 the N^2 = 1024 logits a side give 1M pairs, too many for a Python loop); checked
    against :func:`naive_mmd2_pairs` below."""

    def mean_k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sq = (a[:, None] - b[None, :]) ** 2
        return sum(torch.exp(-sq / (2 * s * s)) for s in sigmas).mean()

    return mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)


def logit_samples(n: int, seed: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The N^2 caption and dialogue logits of a seeded batch at scale 30 (float64)."""
    image, caption, dialogue = unit(n, 8, seed), unit(n, 8, seed + 1), unit(n, 8, seed + 2)
    return (30.0 * caption @ image.T).reshape(-1), (30.0 * dialogue @ image.T).reshape(-1) + shift


def test_dense_reference_equals_the_python_double_loop() -> None:
    x, y = logit_samples(3, 60, shift=0.5)
    sigmas = (1.0, 4.0)
    want = naive_mmd2_pairs(x.tolist(), y.tolist(), sigmas)
    assert float(naive_mmd2_dense(x, y, sigmas)) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("n", [2, 5, 16, 32])
@pytest.mark.parametrize("sigmas", [(2.0,), (1.0, 4.0, 16.0), DEFAULT_SIGMAS])
def test_mmd_rbf_1d_equals_the_naive_o_n4_sum(n: int, sigmas: tuple[float, ...]) -> None:
    x, y = logit_samples(n, 70 + n, shift=1.5)
    got = mmd_rbf_1d(x, y, sigmas)
    want = naive_mmd2_dense(x, y, sigmas)
    assert got.dtype == torch.float64
    assert abs(float(got) - float(want)) <= 1e-6
    assert float(want) > 1e-4  # a difference worth measuring


def test_mmd_rbf_1d_small_samples_equal_the_python_double_loop() -> None:
    x = torch.tensor([0.3, -1.2, 2.5, 0.0], dtype=torch.float64)
    y = torch.tensor([1.0, 1.7, -0.4], dtype=torch.float64)
    sigmas = (0.5, 1.0, 2.0)
    want = naive_mmd2_pairs(x.tolist(), y.tolist(), sigmas)
    assert float(mmd_rbf_1d(x, y, sigmas)) == pytest.approx(want, abs=1e-7)


def test_mmd_rbf_1d_zero_for_identical_sets_and_grows_with_a_shift() -> None:
    x, _ = logit_samples(8, 80)
    permuted = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    assert abs(float(mmd_rbf_1d(x, permuted, DEFAULT_SIGMAS))) < 1e-12  # the same set
    values = [float(mmd_rbf_1d(x, x + shift, (1.0, 2.0))) for shift in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert abs(values[0]) < 1e-12
    assert all(later > earlier for earlier, later in itertools.pairwise(values))
    assert values[-1] > 0.05


def test_mmd_rbf_1d_gradient_matches_the_naive_sum() -> None:
    x, y = logit_samples(6, 90, shift=2.0)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    (got,) = torch.autograd.grad(mmd_rbf_1d(x1, y, (1.0, 4.0)), [x1])
    (want,) = torch.autograd.grad(naive_mmd2_dense(x2, y, (1.0, 4.0)), [x2])
    assert float(want.abs().max()) > 1e-3
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3 * float(want.abs().max()))


def test_mmd_norm_has_a_safe_gradient_at_zero() -> None:
    x, _ = logit_samples(4, 100)
    x = x.clone().requires_grad_()
    value = mmd_norm(mmd_rbf_1d(x, x.detach().clone(), (1.0,)))
    (grad,) = torch.autograd.grad(value, [x])
    assert float(value.detach()) == 0.0
    assert torch.isfinite(grad).all() and float(grad.abs().max()) == 0.0
    assert float(mmd_norm(torch.tensor(0.25, dtype=torch.float64))) == pytest.approx(0.5)


@pytest.mark.parametrize(("n", "d"), [(6, 5), (16, 8)])
def test_draft_loss_default_is_the_thesis_equations(n: int, d: int) -> None:
    """Eq. 4.4.4 with eq. 4.4.1 (texts query images, a = 0.65) and eq. 4.4.3 (RBF-MMD norm over
    the N^2 scalar logits), each transcribed naively."""
    image, caption, dialogue = unit(n, d, 20), unit(n, d, 21), unit(n, d, 22)
    scale, weight, sigmas = 10.0, 0.7, (0.5, 2.0, 8.0)
    total, parts = draft_loss(image, caption, dialogue, scale, mmd_weight=weight, sigmas=sigmas)
    con_dialogue = naive_eq_4_4_1_term(dialogue, image, scale)
    con_caption = naive_eq_4_4_1_term(caption, image, scale)
    contrastive = 0.65 * con_dialogue + 0.35 * con_caption
    mmd2 = float(
        naive_mmd2_dense(
            torch.tensor(naive_logits(caption, image, scale), dtype=torch.float64),
            torch.tensor(naive_logits(dialogue, image, scale), dtype=torch.float64),
            sigmas,
        )
    )
    assert float(parts["con_dialogue"]) == pytest.approx(con_dialogue, rel=1e-9)
    assert float(parts["con_caption"]) == pytest.approx(con_caption, rel=1e-9)
    assert float(parts["contrastive"]) == pytest.approx(contrastive, rel=1e-9)
    assert float(parts["mmd"]) == pytest.approx(math.sqrt(mmd2), abs=1e-6)  # the norm
    assert mmd2 > 1e-3  # a real MMD term, not a vanishing one
    # parts["mmd"] is the term exactly as it enters the total.
    assert float(total) == pytest.approx(
        float(parts["contrastive"]) + weight * float(parts["mmd"]), rel=1e-12
    )
    assert all(not value.requires_grad for value in parts.values())
    # The image-query reading differs: the default really is the thesis' direction.
    assert abs(naive_ce(image, dialogue, scale) - con_dialogue) > 1e-3


@pytest.mark.parametrize("direction", ["text_to_image", "image_to_text", "symmetric"])
def test_draft_loss_directions_against_naive_loops(direction: str) -> None:
    image, caption, dialogue = unit(5, 4, 30), unit(5, 4, 31), unit(5, 4, 32)

    def naive(texts: torch.Tensor) -> float:
        text_query = naive_eq_4_4_1_term(texts, image, 8.0)
        image_query = naive_ce(image, texts, 8.0)  # image i picks its text among the texts
        return {
            "text_to_image": text_query,
            "image_to_text": image_query,
            "symmetric": (text_query + image_query) / 2,
        }[direction]

    _, parts = draft_loss(image, caption, dialogue, 8.0, 0.5, 1.0, direction=direction)
    assert float(parts["con_dialogue"]) == pytest.approx(naive(dialogue), rel=1e-9)
    assert float(parts["con_caption"]) == pytest.approx(naive(caption), rel=1e-9)


def test_draft_loss_mmd_options_squared_and_rows() -> None:
    n, d = 6, 5
    image, caption, dialogue = unit(n, d, 20), unit(n, d, 21), unit(n, d, 22)
    scale, sigmas = 10.0, (0.5, 2.0)
    caption_logits = torch.tensor(naive_logits(caption, image, scale), dtype=torch.float64)
    dialogue_logits = torch.tensor(naive_logits(dialogue, image, scale), dtype=torch.float64)
    mmd2 = float(naive_mmd2_dense(caption_logits, dialogue_logits, sigmas))
    _, squared = draft_loss(image, caption, dialogue, scale, sigmas=sigmas, mmd_form="squared")
    assert float(squared["mmd"]) == pytest.approx(mmd2, abs=1e-6)
    # rows: one sample per text, its logits against the N images divided by sqrt(N).
    rows_caption = [
        [scale * float(image[j] @ caption[i]) / math.sqrt(n) for j in range(n)] for i in range(n)
    ]
    rows_dialogue = [
        [scale * float(image[j] @ dialogue[i]) / math.sqrt(n) for j in range(n)] for i in range(n)
    ]
    rows2 = naive_mmd(rows_caption, rows_dialogue, sigmas)
    _, rows = draft_loss(image, caption, dialogue, scale, sigmas=sigmas, mmd_samples="rows")
    assert float(rows["mmd"]) == pytest.approx(math.sqrt(rows2), rel=1e-9)
    _, rows_sq = draft_loss(
        image, caption, dialogue, scale, sigmas=sigmas, mmd_samples="rows", mmd_form="squared"
    )
    assert float(rows_sq["mmd"]) == pytest.approx(rows2, rel=1e-9)
    assert abs(rows2 - mmd2) > 1e-3  # the two sample units are different quantities


def test_draft_loss_rejects_unknown_options() -> None:
    x = unit(3, 2, 1)
    with pytest.raises(ValueError, match="direction must be one of"):
        draft_loss(x, x, x, 1.0, direction="caption_to_dialogue")
    with pytest.raises(ValueError, match="mmd samples must be one of"):
        draft_loss(x, x, x, 1.0, mmd_samples="pairs")
    with pytest.raises(ValueError, match="mmd form must be one of"):
        draft_loss(x, x, x, 1.0, mmd_form="cubed")


def test_draft_loss_without_mmd_is_the_contrastive_term_alone() -> None:
    image = unit(8, 6, 40, torch.float32)
    caption = unit(8, 6, 41, torch.float32).requires_grad_()
    dialogue = unit(8, 6, 42, torch.float32).requires_grad_()
    total, parts = draft_loss(image, caption, dialogue, 30.0, 0.5, 0.0)
    assert torch.equal(total.detach(), parts["contrastive"])
    assert float(parts["mmd"]) > 0  # still reported for the ablation's log
    grads = torch.autograd.grad(total, [caption, dialogue])
    # The same gradient as the contrastive term computed on its own with plain torch ops.
    caption2, dialogue2 = caption.detach().requires_grad_(), dialogue.detach().requires_grad_()
    ref = plain_draft_contrastive(image, caption2, dialogue2)
    assert float(ref.detach()) == pytest.approx(float(total.detach()), rel=1e-6)
    ref_grads = torch.autograd.grad(ref, [caption2, dialogue2])
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def plain_draft_contrastive(
    image: torch.Tensor, caption: torch.Tensor, dialogue: torch.Tensor
) -> torch.Tensor:
    """0.5 * CE(T(z) vs I) + 0.5 * CE(T(y) vs I) at scale 30 with plain torch ops: each text
    row's softmax over the images."""
    labels = torch.arange(len(image))
    return 0.5 * F.cross_entropy(30.0 * dialogue @ image.T, labels) + 0.5 * F.cross_entropy(
        30.0 * caption @ image.T, labels
    )


def test_draft_mmd_weight_scales_the_mmd_gradient() -> None:
    image = unit(8, 6, 50, torch.float32)
    dialogue = unit(8, 6, 52, torch.float32).requires_grad_()
    caption = unit(8, 6, 51, torch.float32)
    g = {}
    for weight in (0.0, 1.0, 3.0):
        total, _ = draft_loss(image, caption, dialogue, 10.0, 0.5, weight)
        (g[weight],) = torch.autograd.grad(total, [dialogue])
    # total(w) is linear in w, so is its gradient: g(3) - g(0) = 3 * (g(1) - g(0)) != 0.
    mmd_grad = g[1.0] - g[0.0]
    assert mmd_grad.abs().max() > 1e-4
    torch.testing.assert_close(g[3.0] - g[0.0], 3 * mmd_grad, rtol=1e-4, atol=1e-6)


def test_losses_reject_mismatched_rows() -> None:
    with pytest.raises(ValueError, match="features must all be"):
        third_tower_loss(torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(2, 4), 1.0)


def test_gather_features_is_identity_for_one_process() -> None:
    from accelerate import Accelerator

    features = torch.randn(3, 2, requires_grad=True)
    assert gather_features(features, None) is features
    assert gather_features(features, Accelerator(cpu=True)) is features
