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

DRAFT as the thesis writes it (chapter 4.4.2, eqs. 4.4.1-4.4.4, seed text lines ~3440-3567;
docs/method.md lists the choices where it is silent):

- Direction (eq. 4.4.1): each text is the query and the batch's *images* are the keys, the
  denominator ``sum_j exp(I(x_j)^T T(z_i) / tau)`` runs over images j; Fig. 4.4.3 says the same
  (image positions fixed, captions and dialogues aligned to them). Default ``text_to_image``;
  ``image_to_text`` (the image picks its text, as in the VQA task) and ``symmetric`` are options.
- ``a`` defaults to :data:`DRAFT_A` = 0.65: the thesis gives no number but wants it "high enough"
  (line ~3476), its wording for the third tower, where it used 0.65.
- MMD (eq. 4.4.3): every image-text logit ``I(x_j)^T T(y_i) / tau`` is one scalar sample; the
  N^2 caption logits and the N^2 dialogue logits are two samples of the "marginal image-caption"
  and "image-dialogue similarity distributions", compared by an RBF-kernel MMD. The loss takes
  the RKHS norm itself (eq. 4.4.3), the square root of eq. 4.4.2's MMD^2. An exact biased MMD^2
  over 2 x N^2 scalars needs O(N^4) kernel values; :func:`mmd_rbf_1d` computes it by binning
  onto a fine grid and one FFT convolution (its docstring), near-exact.
  Options: ``mmd_form: squared`` (MMD^2 as the term), ``mmd_samples: rows`` (one R^N sample per
  text, its logits against the batch's images divided by sqrt(N): the project's earlier reading).
- Bandwidths (not given): fixed multi-bandwidth RBF, :data:`DEFAULT_SIGMAS` = (1, 2, 4, 8, 16)
  logit units, spanning the spread of CLIP logits within a batch (a few units between positives
  and negatives). Fixed rather than the median heuristic, so that the MMD values of different
  steps are on one scale (and "the MMD falls" is checkable).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from dialogclip.train.loss_settings import (
    DEFAULT_SIGMAS,
    DIRECTIONS,
    DRAFT_A,
    MMD_FORMS,
    MMD_SAMPLES,
    THIRD_TOWER_A,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = [
    "DEFAULT_SIGMAS",
    "DRAFT_A",
    "THIRD_TOWER_A",
    "contrastive_ce",
    "directional_ce",
    "draft_loss",
    "draft_mmd",
    "gather_features",
    "mmd_norm",
    "mmd_rbf",
    "mmd_rbf_1d",
    "third_tower_loss",
]

GRID_STEPS_PER_SIGMA = 2000  # mmd_rbf_1d's grid: this many steps per smallest bandwidth
MAX_GRID_POINTS = 1 << 24  # mmd_rbf_1d refuses a finer grid (memory: 3 float64 vectors of it)
MMD_NORM_FLOOR = 1e-12  # MMD^2 below this counts as 0 in the norm (its gradient there is 0)


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


def mmd_rbf_1d(
    x: torch.Tensor,
    y: torch.Tensor,
    sigmas: Sequence[float],
    steps_per_sigma: int = GRID_STEPS_PER_SIGMA,
) -> torch.Tensor:
    """Biased MMD^2 between two sets of scalars x [n] and y [m], a float64 scalar, near-exact.

    The same V-statistic as :func:`mmd_rbf` on 1-D samples (kernel ``sum_s exp(-(u - v)^2 /
    (2 s^2))``, all pairs i = j included), which written out costs n^2 + m^2 + nm kernel values:
    at DRAFT's batch 1536, 2.4M logits a side, 2e13 of them. Instead:

    1. Binning: each sample's unit mass is spread over the three points of a regular grid
       ``g_p = lo + p h`` nearest to it with quadratic B-spline weights (:func:`_binned`),
       giving the signed mass vector ``d = bin(x)/n - bin(y)/m`` over the grid ([G]).
    2. ``MMD^2 = d^T K d`` with ``K[p, q] = k(g_p - g_q)``, a Toeplitz matrix: ``K d`` is one
       convolution of ``d`` with the kernel sampled at the grid's offsets, done by FFT in
       O(G log G).

    This equals the exact MMD^2 with the kernel ``k(u - v)`` replaced by its B-spline blend
    ``sum_pq w_p(u) w_q(v) k(g_p - g_q)``: the weights keep each sample's mean position and add
    a spread of variance ``h^2 / 4`` a side, so the error is about ``h^2 / 4 * |k''|``, at most
    ``h^2 / (4 s^2)`` per kernel value and bandwidth; with ``h = min(sigmas) / steps_per_sigma``
    (2000 by default) that is 6e-8 (tests compare it with the O(N^4) double sum;
    ``bench/bench_draft.py`` measures the error at N = 256). It is a squared norm of the binned
    masses in the kernel's RKHS, so >= 0 up to rounding, and continuously differentiable in x
    and y (the grid, set by the samples' range, carries no gradient). Computed in float64
    without autocast.
    """
    sigmas = _check_sigmas(sigmas)
    if x.ndim != 1 or y.ndim != 1 or not len(x) or not len(y):
        raise ValueError(
            f"mmd_rbf_1d needs non-empty x [n] and y [m]; got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    with _full_precision(x, y):
        x, y = x.double(), y.double()
        step = min(sigmas) / steps_per_sigma
        lo = torch.minimum(x.min(), y.min()).detach() - step  # one point of margin
        hi = torch.maximum(x.max(), y.max()).detach()
        points = int(torch.floor((hi - lo) / step).item()) + 3  # hi's point and one beyond
        if points > MAX_GRID_POINTS:
            raise ValueError(
                f"mmd_rbf_1d: samples spanning {float(hi - lo):.4g} need {points} grid points at "
                f"step {step:.3g} (min sigma / {steps_per_sigma}), more than {MAX_GRID_POINTS}: "
                "use larger bandwidths or a smaller steps_per_sigma"
            )
        masses = _binned(x, lo, step, points) / len(x) - _binned(y, lo, step, points) / len(y)
        offsets = torch.arange(1 - points, points, device=x.device, dtype=torch.float64) * step
        kernel = _rbf_kernel(offsets.square(), sigmas)  # [2G - 1]: k at offsets -(G-1)h..(G-1)h
        # Linear convolution by FFT: (d * k)[p + G - 1] = sum_q d_q k((p - q) h) = (K d)_p.
        size = 1 << (3 * points - 3).bit_length()  # a power of 2 >= 3G - 2
        spectrum = torch.fft.rfft(masses, size) * torch.fft.rfft(kernel, size)
        potential = torch.fft.irfft(spectrum, size)[points - 1 : 2 * points - 1]  # K d, [G]
        return (masses * potential).sum()


def _binned(values: torch.Tensor, lo: torch.Tensor, step: float, points: int) -> torch.Tensor:
    """Quadratic B-spline binning of unit masses at ``values`` [n] onto ``lo + p * step``: [G].

    A sample at ``t`` grid steps from ``lo`` gives its nearest point ``c = round(t)`` the share
    ``3/4 - d^2`` and its neighbours ``(1/2 -+ d)^2 / 2`` (``d = t - c``). The shares are
    continuously differentiable in ``t``, so the MMD's gradient is continuous in the samples
    (linear binning's would jump at every grid point, making the gradient a rounding-sensitive
    step function). The grid keeps one point of margin on each side: ``1 <= c <= G - 2``.
    """
    position = (values - lo) / step
    centre = position.detach().round().clamp(1, points - 2)
    offset = position - centre  # in [-1/2, 1/2]
    index = centre.long()
    grid = values.new_zeros(points)
    grid = grid.index_add(0, index - 1, (0.5 - offset).square() / 2)
    grid = grid.index_add(0, index, 0.75 - offset.square())
    return grid.index_add(0, index + 1, (0.5 + offset).square() / 2)


def mmd_norm(mmd2: torch.Tensor) -> torch.Tensor:
    """``sqrt(MMD^2)``, the RKHS norm of eq. 4.4.3, with a safe gradient at 0.

    ``sqrt`` has an infinite slope at 0, where identical distributions (or rounding just below
    0) put MMD^2: values under :data:`MMD_NORM_FLOOR` give 0 with gradient 0.
    """
    positive = mmd2 > MMD_NORM_FLOOR
    safe = torch.where(positive, mmd2, torch.ones_like(mmd2))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(mmd2))


def directional_ce(logits: torch.Tensor, direction: str = "text_to_image") -> torch.Tensor:
    """The contrastive term of eq. 4.4.1 from ``logits`` [N texts, N images], a scalar.

    ``logits[i, j] = I(x_j)^T T(u_i) / tau``. ``text_to_image`` (the thesis): text i picks its
    image among the batch's images, ``mean_i -log softmax_j(logits[i, :])[i]``;
    ``image_to_text``: image j picks its text among the batch's texts (softmax over a column);
    ``symmetric``: the mean of the two, as open_clip's ``ClipLoss``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}; got {direction!r}")
    labels = torch.arange(logits.shape[0], device=logits.device)
    if direction == "image_to_text":
        return F.cross_entropy(logits.T, labels)
    return _ce_from_logits(logits, labels, symmetric=direction == "symmetric")


def draft_mmd(
    logits_caption: torch.Tensor,
    logits_dialogue: torch.Tensor,
    sigmas: Sequence[float],
    samples: str = "scalar",
    form: str = "norm",
) -> torch.Tensor:
    """DRAFT's MMD term between the caption and the dialogue logits [N texts, N images].

    ``samples="scalar"`` (eq. 4.4.3): the N^2 entries of each matrix are the two samples
    (:func:`mmd_rbf_1d`); ``"rows"``: each text's row of N logits divided by sqrt(N) is one
    sample in R^N (:func:`mmd_rbf`). ``form="norm"`` (eq. 4.4.3) returns ``sqrt(MMD^2)``
    (:func:`mmd_norm`), ``"squared"`` MMD^2 itself (eq. 4.4.2's quantity).
    """
    if samples not in MMD_SAMPLES:
        raise ValueError(f"mmd samples must be one of {MMD_SAMPLES}; got {samples!r}")
    if form not in MMD_FORMS:
        raise ValueError(f"mmd form must be one of {MMD_FORMS}; got {form!r}")
    if samples == "scalar":
        mmd2 = mmd_rbf_1d(logits_caption.reshape(-1), logits_dialogue.reshape(-1), sigmas)
    else:
        root_n = math.sqrt(logits_caption.shape[1])
        mmd2 = mmd_rbf(logits_caption / root_n, logits_dialogue / root_n, sigmas)
    mmd2 = mmd2.to(logits_caption.dtype)
    return mmd_norm(mmd2) if form == "norm" else mmd2


def draft_loss(
    image: torch.Tensor,
    caption: torch.Tensor,
    dialogue: torch.Tensor,
    logit_scale: float | torch.Tensor,
    a: float = DRAFT_A,
    mmd_weight: float = 1.0,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    direction: str = "text_to_image",
    mmd_samples: str = "scalar",
    mmd_form: str = "norm",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DRAFT's loss, eq. 4.4.4 ``L_DRAFT = L_contrastive + L_MMD``: ``(total, parts)``.

    image I(x) [N, D], caption T(y) [N, D], dialogue T(z) [N, D], all unit rows, row i one
    sample (x_i, y_i, z_i). With ``S_y[i, j] = logit_scale * I(x_j)^T T(y_i)`` and ``S_z`` the
    same for the dialogues ([N texts, N images]):

    - eq. 4.4.1: ``L_con = a * CE_dir(S_z) + (1 - a) * CE_dir(S_y)`` (:func:`directional_ce`;
      the thesis' direction ``text_to_image``: softmax over the batch's images);
    - eq. 4.4.3: ``L_MMD = || mean phi(S_y entries) - mean phi(S_z entries) ||_H`` with an RBF
      kernel (:func:`draft_mmd`; options: the squared form, the per-text row samples);
    - ``total = L_con + mmd_weight * parts["mmd"]``: ``parts["mmd"]`` is the term exactly as it
      enters the total.

    ``parts`` (detached 0-d tensors): ``contrastive``, ``con_dialogue``, ``con_caption``,
    ``mmd``. With ``mmd_weight == 0`` (the thesis' no-MMD ablation) the MMD is still reported
    but computed without a graph, and ``total`` is the contrastive term alone.
    """
    _check_pairs(image=image, caption=caption, dialogue=dialogue)
    sigmas = _check_sigmas(sigmas)
    with _full_precision(image, caption, dialogue):
        img, cap, dia = _upcast(image, caption, dialogue)
        scale = _scale(logit_scale, img)
        logits_caption = scale * cap @ img.T  # [N texts, N images]
        logits_dialogue = scale * dia @ img.T
        con_dialogue = directional_ce(logits_dialogue, direction)
        con_caption = directional_ce(logits_caption, direction)
        contrastive = a * con_dialogue + (1 - a) * con_caption
        if mmd_weight == 0:
            with torch.no_grad():
                mmd = draft_mmd(logits_caption, logits_dialogue, sigmas, mmd_samples, mmd_form)
            total = contrastive
        else:
            mmd = draft_mmd(logits_caption, logits_dialogue, sigmas, mmd_samples, mmd_form)
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
