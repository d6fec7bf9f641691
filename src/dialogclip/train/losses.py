"""Training losses: CLIP-3Modal's third-tower loss, DRAFT's contrastive + MMD loss, and the
cross-process feature gather both use (METHOD.md sections 4-5).

Conventions shared by every function here:

- Features are L2-normalised [N, D] tensors; row i of every argument belongs to the same
  training sample. ``logit_scale`` is the multiplier 1/tau (the *exp* of open_clip's
  ``logit_scale`` parameter, e.g. 100.0), a float or a 0-d tensor.
- ``CE(query vs keys)`` is ``mean_i -log softmax_j(logit_scale * query_i . key_j)[i]``: the
  query i must pick its own key among the N keys of the batch.
- The losses are computed in (at least) float32 with autocast switched off, whatever the
  caller's precision: in bf16 a logit of 30 carries an error of ~0.1, enough to blur the
  softmax; these matrices are tiny next to a tower's forward pass.

Reference: open_clip's ``ClipLoss`` / ``gather_features`` in ``src/open_clip/loss.py`` at
mlfoundations/open_clip commit 89fb801f1e6087880e951fc8354b8a2077b79c6d (the installed
open_clip_torch 3.3.0 computes the same for ``gather_with_grad=False``). ``symmetric=True``
averages each CE with its transpose exactly as ``ClipLoss.forward`` does, and
:func:`gather_features` has that function's ``gather_with_grad=False, local_loss=False``
semantics.

DRAFT choices (the thesis fixes neither; see docs/training.md):

- Direction: ``CE(I vs T(z))`` reads as written, the image is the query and the batch's texts
  are the keys: the task DRAFT is evaluated on (VQA multiple choice) is exactly that, an image
  picking its answer among candidate texts. ``symmetric=True`` adds the other direction.
- ``a`` defaults to :data:`DRAFT_A` = 0.5: both terms are anchored on the same frozen image
  embeddings, and neither the dialogue term (the new information) nor the caption term (which
  keeps the tower where caption retrieval needs it) has a reason to dominate. The third tower's
  0.65 weights images against captions, a different trade-off that does not carry over.
- MMD sample unit: one sample per text, its row of logits against the batch's N images,
  ``s_i = logit_scale * (I(x_1..N) . T(y_i)) / sqrt(N)`` in R^N for the captions and the same
  with T(z_i) for the dialogues: the image-caption and the image-dialogue similarity
  distributions of METHOD.md as two sets of N points whose coordinates are the *same* images,
  so caption rows and dialogue rows are directly comparable. The 1/sqrt(N) makes the squared
  distance the *mean* squared logit difference over the images, so one set of bandwidths
  holds for every batch size (1536, 6144, per-process or global).
- Bandwidths: fixed multi-bandwidth RBF, :data:`DEFAULT_SIGMAS` = (1, 2, 4, 8, 16) logit units,
  spanning the distances seen between rows (CLIP logits differ by a few units between texts;
  a fresh tiny model's by ~1-4). Fixed rather than the median heuristic: a data-dependent
  bandwidth changes every batch, so the MMD values of different steps (and the "MMD falls"
  check) would not be on one scale, and the heuristic's median is dominated by distances
  between different texts rather than by the caption/dialogue gap the term is meant to close.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from accelerate import Accelerator

THIRD_TOWER_A = 0.65  # METHOD.md section 4 (thesis value)
DRAFT_A = 0.5  # the thesis gives none for DRAFT: see the module docstring
DEFAULT_SIGMAS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)  # in logit units (docstring)


@contextlib.contextmanager
def _full_precision(*tensors: torch.Tensor) -> Iterator[None]:
    """Switch autocast off for the device(s) of ``tensors`` (the caller upcasts to float32)."""
    device_types = sorted({t.device.type for t in tensors})
    with contextlib.ExitStack() as stack:
        for device_type in device_types:
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        yield


def _upcast(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """One common dtype of at least float32 (bf16 features from autocast meet float32 caches)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return [t.to(dtype) for t in tensors]


def _check_pairs(**features: torch.Tensor) -> int:
    shapes = {name: tuple(t.shape) for name, t in features.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(shape != first for shape in shapes.values()):
        raise ValueError(f"features must all be [N, D] of one shape; got {shapes}")
    if first[0] == 0:
        raise ValueError("empty batch: the features have 0 rows")
    return first[0]


def _scale(logit_scale: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
    if isinstance(logit_scale, torch.Tensor):
        return logit_scale.to(device=like.device, dtype=like.dtype)
    return float(logit_scale)


def _ce_from_logits(logits: torch.Tensor, labels: torch.Tensor, symmetric: bool) -> torch.Tensor:
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        # open_clip's logits_per_text = scale * text @ image.T, i.e. this transpose.
        loss = (loss + F.cross_entropy(logits.T, labels)) / 2
    return loss


def contrastive_ce(
    query: torch.Tensor,
    keys: torch.Tensor,
    logit_scale: float | torch.Tensor,
    symmetric: bool = False,
) -> torch.Tensor:
    """``CE(query vs keys)``: query [N, D] -> its own key among keys [N, D]; a scalar.

    ``symmetric=True`` returns ``(CE(query vs keys) + CE(keys vs query)) / 2`` as open_clip's
    ``ClipLoss`` does. Inputs are used as given (call it inside :func:`_full_precision`).
    """
    logits = logit_scale * query @ keys.T  # [N, N]: row i = query i against every key
    labels = torch.arange(logits.shape[0], device=logits.device)
    return _ce_from_logits(logits, labels, symmetric)


def third_tower_loss(
    dialogue: torch.Tensor,
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: float | torch.Tensor,
    a: float = THIRD_TOWER_A,
    symmetric: bool = False,
) -> torch.Tensor:
    """CLIP-3Modal's loss (METHOD.md section 4), a scalar.

    ``a * CE(logit_scale * dialogue @ image.T) + (1 - a) * CE(logit_scale * dialogue @ text.T)``
    with targets ``arange(N)``: the dialogue G(z_i) [N, D] is the query, the frozen image
    embeddings I(x) [N, D] and caption embeddings T(y) [N, D] the keys. ``symmetric=True``
    averages each term with its transpose (open_clip ``ClipLoss``).
    """
    _check_pairs(dialogue=dialogue, image=image, text=text)
    with _full_precision(dialogue, image, text):
        d, i, t = _upcast(dialogue, image, text)
        scale = _scale(logit_scale, d)
        to_image = contrastive_ce(d, i, scale, symmetric)
        to_text = contrastive_ce(d, t, scale, symmetric)
        return a * to_image + (1 - a) * to_text


def _squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||x_i - y_j||^2 for x [n, d], y [m, d] -> [n, m].

    The expansion ||u||^2 + ||v||^2 - 2 u.v needs one matmul instead of an [n, m, d]
    difference tensor (at N = 6144 rows in R^6144 that tensor would not fit anywhere); its
    rounding can dip below 0 for near-identical rows, hence the clamp.
    """
    sq_x = x.pow(2).sum(dim=1)
    sq_y = y.pow(2).sum(dim=1)
    return (sq_x[:, None] + sq_y[None, :] - 2 * (x @ y.T)).clamp_min(0)


def _rbf_kernel(sq_dist: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    return sum(torch.exp(-sq_dist / (2 * float(s) ** 2)) for s in sigmas)  # type: ignore[return-value]


def _check_sigmas(sigmas: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(s) for s in sigmas)
    if not values or any(not (s > 0 and math.isfinite(s)) for s in values):
        raise ValueError(f"sigmas must be one or more positive finite bandwidths; got {sigmas!r}")
    return values


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Biased (V-statistic) estimate of MMD^2 between samples x [n, d] and y [m, d], a scalar.

    Kernel ``k(u, v) = sum_{s in sigmas} exp(-||u - v||^2 / (2 s^2))``; the estimate is
    ``mean k(x, x') + mean k(y, y') - 2 mean k(x, y)`` over all pairs, i = j included (so it is
    >= 0 and exactly 0 for identical samples). Computed in float32 (or float64) without autocast.
    """
    sigmas = _check_sigmas(sigmas)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or not len(x) or not len(y):
        raise ValueError(
            f"mmd_rbf needs non-empty x [n, d] and y [m, d]; got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    with _full_precision(x, y):
        x, y = _upcast(x, y)
        k_xx = _rbf_kernel(_squared_distances(x, x), sigmas).mean()
        k_yy = _rbf_kernel(_squared_distances(y, y), sigmas).mean()
        k_xy = _rbf_kernel(_squared_distances(x, y), sigmas).mean()
        return k_xx + k_yy - 2 * k_xy


def draft_loss(
    image: torch.Tensor,
    caption: torch.Tensor,
    dialogue: torch.Tensor,
    logit_scale: float | torch.Tensor,
    a: float = DRAFT_A,
    mmd_weight: float = 1.0,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    symmetric: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DRAFT's loss (METHOD.md section 5): ``(total, parts)``.

    image I(x) [N, D], caption T(y) [N, D], dialogue T(z) [N, D], all unit rows, row i one
    sample. ``total = L_con + mmd_weight * L_MMD`` with

    - ``L_con = a * CE(I vs T(z)) + (1 - a) * CE(I vs T(y))`` (image query, texts as keys;
      ``symmetric`` averages each with its transpose),
    - ``L_MMD = mmd_rbf(S_y, S_z, sigmas)``, ``S_y = logit_scale * T(y) @ I.T / sqrt(N)`` and
      ``S_z`` the same for T(z): one sample per text, its logits against the batch's images
      (module docstring).

    ``parts`` (detached 0-d tensors): ``contrastive``, ``con_dialogue``, ``con_caption``,
    ``mmd``. With ``mmd_weight == 0`` (the thesis' no-MMD ablation) the MMD is still reported
    but computed without a graph, and ``total`` is the contrastive term alone.
    """
    n = _check_pairs(image=image, caption=caption, dialogue=dialogue)
    sigmas = _check_sigmas(sigmas)
    with _full_precision(image, caption, dialogue):
        img, cap, dia = _upcast(image, caption, dialogue)
        scale = _scale(logit_scale, img)
        # [N images, N texts]; the CE rows are images, the MMD samples are texts (columns).
        logits_dialogue = scale * img @ dia.T
        logits_caption = scale * img @ cap.T
        labels = torch.arange(n, device=img.device)
        con_dialogue = _ce_from_logits(logits_dialogue, labels, symmetric)
        con_caption = _ce_from_logits(logits_caption, labels, symmetric)
        contrastive = a * con_dialogue + (1 - a) * con_caption
        rows_caption = logits_caption.T / math.sqrt(n)  # [N texts, N images]
        rows_dialogue = logits_dialogue.T / math.sqrt(n)
        if mmd_weight == 0:
            with torch.no_grad():
                mmd = mmd_rbf(rows_caption, rows_dialogue, sigmas)
            total = contrastive
        else:
            mmd = mmd_rbf(rows_caption, rows_dialogue, sigmas)
            total = contrastive + mmd_weight * mmd
    parts = {
        "contrastive": contrastive.detach(),
        "con_dialogue": con_dialogue.detach(),
        "con_caption": con_caption.detach(),
        "mmd": mmd.detach(),
    }
    return total, parts


def gather_features(features: torch.Tensor, accelerator: Accelerator | Any | None) -> torch.Tensor:
    """The global batch's features [sum of local N, D] in rank order; identity for one process.

    As open_clip's ``gather_features(gather_with_grad=False, local_loss=False)``: every
    process's rows are all-gathered without a graph, then this process's own slot is replaced by
    ``features`` itself, so the local rows keep their autograd graph and a loss over the global
    batch sends gradients only into this process's rows. Summing the parameter gradients over
    processes (the trainer does) then gives exactly the gradient of one process on the global
    batch. Local batches may differ in size (a global batch not divisible by the number of
    processes): sizes are exchanged first and the rows padded for the collective.
    """
    if accelerator is None or accelerator.num_processes == 1:
        return features
    import torch.distributed as dist

    world = accelerator.num_processes
    rank = accelerator.process_index
    local_n = torch.tensor([features.shape[0]], device=features.device, dtype=torch.long)
    sizes = [torch.zeros_like(local_n) for _ in range(world)]
    dist.all_gather(sizes, local_n)
    counts = [int(size.item()) for size in sizes]
    longest = max(counts)
    padded = features.detach()
    if padded.shape[0] < longest:
        pad = padded.new_zeros((longest - padded.shape[0], *padded.shape[1:]))
        padded = torch.cat([padded, pad])
    slots = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(slots, padded.contiguous())
    pieces = [slot[:count] for slot, count in zip(slots, counts, strict=True)]
    pieces[rank] = features  # the local rows with their graph
    return torch.cat(pieces, dim=0)
