"""Benchmark: DRAFT's training step: the image-embedding cache vs the full forward, the cost
of the MMD term at the thesis' batch of 1536, and the MMD estimator's error against the exact
O(N^4) sum.

Real ViT-B-32 architecture with random weights (open_clip, no download). A DRAFT step trains
the text tower T on the caption and the dialogue sample (forward + backward of both) against
the frozen image tower's I(x), then takes a fused AdamW step (the trainer's optimizer):

- ``step`` (measured at ``--batch``, arms interleaved step by step): ``cached`` (what
  ``train_run`` does: I(x) from the cache) vs ``full`` (I(x) computed in the step under
  ``no_grad``), both with the MMD term; and ``cached_no_mmd`` (``mmd_weight: 0``, the thesis'
  ablation, which still reports the MMD without a graph);
- ``loss`` (measured at ``--loss-batch``, 1536 by default): forward + backward of the loss alone
  on unit features [N, 512]: ``contrastive`` (the two cross-entropies of eq. 4.4.1, texts
  querying images), ``draft`` (the default loss: contrastive + the MMD norm over the N^2 scalar
  logits, eq. 4.4.3), ``draft_rows`` (the MMD over per-text rows, an option) and
  ``draft_no_mmd``. The MMD's cost does not grow linearly with N as the towers' does, so it is
  measured at the batch it is asked about;
- ``mmd_accuracy`` (``--accuracy-n``, 256 by default): the binned-FFT MMD^2 of
  ``dialogclip.train.losses.mmd_rbf_1d`` against the exact biased MMD^2 over the same 2 x N^2
  scalar logits (the O(N^4) pair sum in float64, in chunks), its absolute and relative error
  and both timings.

A step at batch 1536 needs ~100 GB of activations in float32 on this CPU (two text forwards
with a graph), so on CPU the step at 1536 is projected from the measured parts: the towers'
per-sample time at ``--batch`` times 1536, plus the optimizer step, plus the loss measured at
1536; the JSON names every part. On CUDA (``--device cuda``, bf16 autocast as the trainer)
the step is measured at ``--batch 1536`` directly, and the projected time of 3 epochs over
CC3M's pairs follows from its samples/s. Target (issue 16): MMD <= 10 % extra step time at
batch 1536. Results: bench/results/bench_draft.json (``--out`` elsewhere).
Run: `.venv/bin/python bench/bench_draft.py [--batch 48] [--steps 5] [--threads 2]`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from benchlib import autocast, machine_record, summary, sync, time_interleaved, train_step

from dialogclip.models.towers import copy_text_tower
from dialogclip.train.losses import (
    DEFAULT_SIGMAS,
    DRAFT_A,
    contrastive_ce,
    draft_loss,
    mmd_rbf_1d,
)
from dialogclip.train.objectives import DraftLoss, DraftObjective
from dialogclip.train.optim import adamw, param_groups

OUT = Path(__file__).parent / "results" / "bench_draft.json"
THESIS_BATCH = 1536
TARGET_EXTRA = 0.10
EMBED_DIM = 512  # ViT-B-32's joint embedding width
LOGIT_SCALE = 100.0
CC3M_IMAGES = 2_800_000  # usable CC3M training images (as bench_train.py assumes)
PAIRS_PER_IMAGE = 3  # LLaVA's three question/answer pairs: DRAFT's samples


def measure_steps(batch: int, steps: int, device: torch.device) -> dict[str, Any]:
    """Seconds per DRAFT step at ``batch``: cached vs full forward, with and without MMD."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval().to(device)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    objectives = {
        mmd: DraftObjective(
            copy_text_tower(model).to(device), LOGIT_SCALE, DraftLoss(mmd_weight=mmd)
        )
        for mmd in (1.0, 0.0)
    }
    optimizers = {
        mmd: adamw(param_groups(o.module, 0.1), 1e-5, (0.9, 0.98), 1e-6, 0.1, device)
        for mmd, o in objectives.items()
    }
    images = torch.randn(batch, 3, 224, 224, device=device)
    captions = tokenizer([f"a photo of thing number {i}" for i in range(batch)]).to(device)
    dialogue = tokenizer(
        [
            f"what is it? thing {i}. what colour is it? red, with a white stripe"
            for i in range(batch)
        ]
    ).to(device)
    with torch.no_grad(), autocast(device):
        image_emb = F.normalize(model.encode_image(images).float(), dim=-1)

    def step(mmd: float, image: torch.Tensor) -> None:
        rows = {"image_emb": image, "caption_tokens": captions, "dialogue_tokens": dialogue}
        train_step(objectives[mmd], optimizers[mmd], rows, device)

    def full() -> None:
        with torch.no_grad(), autocast(device):  # the frozen image tower: no graph
            image = model.encode_image(images)
        step(1.0, image)

    times = time_interleaved(
        {
            "cached": lambda: step(1.0, image_emb),
            "full": full,
            "cached_no_mmd": lambda: step(0.0, image_emb),
        },
        steps,
    )
    result: dict[str, Any] = {name: summary(arm, batch) for name, arm in times.items()}
    result["speedup_cached_vs_full"] = round(
        result["cached"]["samples_per_s"] / result["full"]["samples_per_s"], 3
    )
    result["optimizer_step_s"] = _optimizer_seconds(optimizers[1.0], device)
    return result


def _optimizer_seconds(optimizer: torch.optim.Optimizer, device: torch.device) -> float:
    """One AdamW step's seconds (gradients present from the last step), median of 3."""
    times = time_interleaved({"adamw": lambda: (optimizer.step(), sync(device))}, 3)["adamw"]
    return round(sorted(times)[1], 4)


def measure_loss(batch: int, repeats: int, device: torch.device) -> dict[str, Any]:
    """Seconds of the loss's forward + backward alone on unit features [batch, 512]."""
    generator = torch.Generator().manual_seed(0)
    leaves = [
        F.normalize(torch.randn(batch, EMBED_DIM, generator=generator), dim=-1).to(device)
        for _ in range(3)
    ]
    image = leaves[0]
    caption, dialogue = (leaf.requires_grad_(True) for leaf in leaves[1:])

    def backward(loss: torch.Tensor) -> None:
        caption.grad = dialogue.grad = None
        loss.backward()
        sync(device)

    def contrastive() -> None:
        backward(
            DRAFT_A * contrastive_ce(dialogue, image, LOGIT_SCALE)
            + (1 - DRAFT_A) * contrastive_ce(caption, image, LOGIT_SCALE)
        )

    arms = {
        "contrastive": contrastive,
        "draft": lambda: backward(draft_loss(image, caption, dialogue, LOGIT_SCALE)[0]),
        "draft_rows": lambda: backward(
            draft_loss(image, caption, dialogue, LOGIT_SCALE, mmd_samples="rows")[0]
        ),
        "draft_no_mmd": lambda: backward(
            draft_loss(image, caption, dialogue, LOGIT_SCALE, mmd_weight=0.0)[0]
        ),
    }
    times = time_interleaved(arms, repeats)
    return {name: summary(arm, batch) for name, arm in times.items()}


def exact_mmd2(
    x: torch.Tensor, y: torch.Tensor, sigmas: tuple[float, ...], chunk: int = 512
) -> float:
    """The biased MMD^2 between scalar samples x [n] and y [m] by the full pair sum in float64:
    ``w^T K w`` over the pooled samples with ``w = +1/n`` on x and ``-1/m`` on y, K the RBF
    kernel sum (O((n + m)^2) kernel values, no approximation). K is symmetric: each chunk of
    rows meets only the columns from its own start on, the block right of the diagonal counted
    twice."""
    pooled = torch.cat([x, y]).double()
    weights = torch.cat([torch.full_like(x, 1 / len(x)), torch.full_like(y, -1 / len(y))]).double()
    total = 0.0
    for start in range(0, len(pooled), chunk):
        stop = min(start + chunk, len(pooled))
        sq = (pooled[start:stop, None] - pooled[None, start:]).square_()
        kernel = _rbf_sum(sq, sigmas)  # [chunk, n + m - start]
        row_weights = weights[start:stop]
        diagonal = row_weights @ kernel[:, : stop - start] @ row_weights
        right = row_weights @ kernel[:, stop - start :] @ weights[stop:]
        total += float(diagonal + 2 * right)
    return total


def _rbf_sum(sq: torch.Tensor, sigmas: tuple[float, ...]) -> torch.Tensor:
    """``sum_s exp(-sq / (2 s^2))``, widest bandwidth first. Where the next bandwidth is the
    last one divided by 2^(k/2) (the default 16, 8, 4, 2, 1: k = 2), its kernel is the last
    one's raised to 2^k, i.e. k squarings instead of an exp (exact up to rounding, ~1e-14)."""
    ordered = sorted(sigmas, reverse=True)
    value = torch.exp(sq / (-2 * ordered[0] ** 2))
    total = value.clone()
    for wider, sigma in itertools.pairwise(ordered):
        squarings = math.log2((wider / sigma) ** 2)
        if squarings.is_integer() and squarings >= 1:
            for _ in range(int(squarings)):
                value = value.square()
        else:
            value = torch.exp(sq / (-2 * sigma**2))
        total += value
    return total


def measure_mmd_accuracy(n: int) -> dict[str, Any]:
    """mmd_rbf_1d against :func:`exact_mmd2` on the N^2 caption and dialogue logits of a
    batch of N unit features (captions and dialogues correlated with their images at two
    different strengths, so the two logit distributions differ as in training)."""
    generator = torch.Generator().manual_seed(1)

    def unit(base: torch.Tensor | None, noise: float) -> torch.Tensor:
        # Unit-norm noise: the positive pair's cosine is about 1 / sqrt(1 + noise^2).
        feature = torch.randn(n, EMBED_DIM, generator=generator, dtype=torch.float64)
        feature = F.normalize(feature, dim=-1) * noise
        return F.normalize(feature + (0 if base is None else base), dim=-1)

    image = unit(None, 1.0)
    caption = (LOGIT_SCALE * unit(image, 0.8) @ image.T).reshape(-1)
    dialogue = (LOGIT_SCALE * unit(image, 1.2) @ image.T).reshape(-1)
    begin = time.perf_counter()
    binned = float(mmd_rbf_1d(caption, dialogue, DEFAULT_SIGMAS))
    binned_s = time.perf_counter() - begin
    begin = time.perf_counter()
    exact = exact_mmd2(caption, dialogue, DEFAULT_SIGMAS)
    exact_s = time.perf_counter() - begin
    return {
        "n": n,
        "samples_per_side": n * n,
        "sigmas": list(DEFAULT_SIGMAS),
        "logit_range": [
            round(float(torch.cat([caption, dialogue]).min()), 3),
            round(float(torch.cat([caption, dialogue]).max()), 3),
        ],
        "exact_mmd2": exact,
        "binned_mmd2": binned,
        "abs_error": abs(binned - exact),
        "rel_error": abs(binned - exact) / exact,
        "norm_abs_error": abs(math.sqrt(max(binned, 0)) - math.sqrt(exact)),
        "exact_s": round(exact_s, 2),
        "binned_s": round(binned_s, 4),
    }


def project(
    steps: dict[str, Any], loss_small: dict[str, Any], loss: dict[str, Any], batch: int, at: int
) -> dict[str, Any]:
    """The step at ``at`` from the parts: towers per sample x at + optimizer + the loss at ``at``.

    The towers' time at ``batch`` is the cached step minus the optimizer step minus the loss at
    ``batch`` (measured alone on the same machine).
    """
    step_s = steps["cached"]["step_s_median"]
    optimizer_s = steps["optimizer_step_s"]
    towers_s = step_s - optimizer_s - loss_small["draft"]["step_s_median"]
    towers_at = towers_s / batch * at
    con = loss["contrastive"]["step_s_median"]
    with_mmd = loss["draft"]["step_s_median"]
    step_con = towers_at + optimizer_s + con
    extra = (with_mmd - con) / step_con
    return {
        "batch": at,
        "towers_s_per_sample": round(towers_s / batch, 5),
        "towers_s": round(towers_at, 2),
        "optimizer_step_s": optimizer_s,
        "contrastive_loss_s": con,
        "draft_loss_s": with_mmd,
        "step_s_contrastive_only": round(step_con, 2),
        "step_s_with_mmd": round(step_con - con + with_mmd, 2),
        "mmd_extra_step_fraction": round(extra, 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=48, help="step batch (1536 on a GPU)")
    parser.add_argument("--loss-batch", type=int, default=THESIS_BATCH)
    parser.add_argument(
        "--accuracy-n",
        type=int,
        default=256,
        help="batch of the MMD error check (0: skip it; it runs on the CPU whatever --device)",
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps = measure_steps(args.batch, args.steps, device)
    loss_small = measure_loss(args.batch, args.steps, device)
    loss = measure_loss(args.loss_batch, args.steps, device)
    accuracy = measure_mmd_accuracy(args.accuracy_n) if args.accuracy_n else None
    record: dict[str, Any] = {
        "benchmark": "DRAFT step (ViT-B-32 text tower trained), cache vs full, MMD cost",
        "device": args.device,
        "steps": args.steps,
        "machine": machine_record(args.threads),
        "step": {"batch": args.batch, **steps},
        "loss": {"batch": args.loss_batch, **loss},
        "loss_at_step_batch": {"batch": args.batch, **loss_small},
        "mmd_accuracy": accuracy,
        "target_mmd_extra_fraction": TARGET_EXTRA,
    }
    if args.batch == args.loss_batch:  # measured directly (a GPU)
        con = steps["cached_no_mmd"]["step_s_median"]
        record["mmd_extra_step_fraction"] = round((steps["cached"]["step_s_median"] - con) / con, 5)
        record["mmd_extra_is"] = f"measured: whole steps at batch {args.batch}"
    else:
        record["projection"] = project(steps, loss_small, loss, args.batch, args.loss_batch)
        record["mmd_extra_step_fraction"] = record["projection"]["mmd_extra_step_fraction"]
        record["mmd_extra_is"] = (
            f"projected to batch {args.loss_batch}: towers measured at {args.batch} and scaled "
            f"linearly, the loss measured at {args.loss_batch}"
        )
    record["meets_target"] = record["mmd_extra_step_fraction"] <= TARGET_EXTRA
    # The thesis' DRAFT runs: CC3M's usable images x 3 question/answer pairs, 3 epochs.
    samples = CC3M_IMAGES * PAIRS_PER_IMAGE * 3
    record["cc3m_3_epochs"] = {
        "images_assumed": CC3M_IMAGES,
        "pairs_per_image": PAIRS_PER_IMAGE,
        "hours_at_cached_rate": round(samples / steps["cached"]["samples_per_s"] / 3600, 2),
        "device": args.device,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
