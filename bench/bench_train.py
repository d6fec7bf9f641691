"""Benchmark: third-tower training with the frozen-tower embedding caches vs the full forward.

Both arms run the same training step of CLIP-3Modal on the real ViT-B-32 architecture with
random weights (open_clip, no download), on CPU, at the same batch, with the trainer's loss
(``ThirdTowerObjective``) and optimizer (fused AdamW over its decay groups):

- ``cached`` (what ``train_run`` does): I(x) and T(y) come from the cache, so a step is G's
  forward + backward on the dialogue tokens, the loss, and the AdamW update;
- ``full``: the same step, but I(x) (the image tower on 224 px images) and T(y) (the text tower
  on the captions) are computed in the step, under ``no_grad`` as frozen towers are.

Both again ``*_with_data``, with what each pipeline reads per step: the cached one gathers the
batch's rows out of memory-mapped float16 Arrow caches written by the cache code and its
pre-tokenised dialogue; the full one decodes the batch's JPEGs (336 px, quality 95, as ingested),
applies the model's preprocessing and tokenises caption and dialogue. The arms take turns step
by step (fair under a changing load). Also written: the size of the caches per million training
rows, measured from files the cache code writes. Target (issue 8): cached >= 1.8x the full
forward's samples/s. Results: bench/results/bench_train.json.
Run: `.venv/bin/python bench/bench_train.py [--batch 32] [--steps 5] [--threads 2]`.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from benchlib import machine_record, summary, time_interleaved, train_step

from dialogclip.models.towers import copy_text_tower
from dialogclip.train.cache import decode_image, read_embedding_cache, write_embedding_cache
from dialogclip.train.objectives import ThirdTowerLoss, ThirdTowerObjective
from dialogclip.train.optim import adamw, param_groups

OUT = Path(__file__).parent / "results" / "bench_train.json"
CPU = torch.device("cpu")


def _jpegs(n: int, seed: int = 0) -> list[bytes]:
    """``n`` JPEGs as the ingest stage stores them (336 px short side, quality 95): smooth
    gradients with noise, so that they compress like photographs rather than like noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 448)[None, :, None] * np.linspace(0, 1, 336)[:, None, None]
    out = []
    for _ in range(n):
        pixels = ramp * rng.uniform(80, 255, size=3) + rng.normal(0, 12, size=(336, 448, 3))
        buffer = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=95)
        out.append(buffer.getvalue())
    return out


def measure(batch: int, steps: int, data_dir: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")
    model = model.eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    g = copy_text_tower(model)
    objective = ThirdTowerObjective(g, 100.0, ThirdTowerLoss())
    # The trainer's optimizer: its decay groups and fused AdamW (dialogclip.train.optim).
    optimizer = adamw(param_groups(g, 0.1), 1e-5, (0.9, 0.98), 1e-6, 0.1, CPU)
    jpegs = _jpegs(batch)
    caption_texts = [f"a photo of thing number {i}" for i in range(batch)]
    dialogue_texts = [
        f"what is it? thing {i}. what colour? red. where? on a table" for i in range(batch)
    ]
    images = torch.stack([preprocess(decode_image(data)) for data in jpegs])
    captions = tokenizer(caption_texts)
    dialogue = tokenizer(dialogue_texts)
    with torch.no_grad():
        image_emb = F.normalize(model.encode_image(images), dim=-1)
        caption_emb = F.normalize(model.encode_text(captions), dim=-1)
    # The caches as train_run reads them: float16 Arrow IPC files written by the cache code,
    # memory-mapped, the batch's rows gathered out of a shard (here: every other row).
    keys = [f"{i:09d}" for i in range(2 * batch)]
    paths = {}
    for tower, emb in (("image", image_emb), ("text", caption_emb)):
        paths[tower] = data_dir / f"{tower}.arrow"
        twice = emb.repeat(2, 1).numpy()
        write_embedding_cache(keys, twice, paths[tower], {"tower": tower})
    token_matrix = np.concatenate([dialogue.numpy()] * 2)
    picked = np.arange(0, 2 * batch, 2)
    cached = {"image_emb": image_emb, "caption_emb": caption_emb, "dialogue_tokens": dialogue}

    def cached_step() -> None:
        train_step(objective, optimizer, cached, CPU)

    def full_step() -> None:
        with torch.no_grad():  # I and T are frozen: no graph, as in the full-forward baseline
            image_emb = model.encode_image(images)
            caption_emb = model.encode_text(captions)
        rows = {"image_emb": image_emb, "caption_emb": caption_emb, "dialogue_tokens": dialogue}
        train_step(objective, optimizer, rows, CPU)

    mapped = {tower: read_embedding_cache(path, tower).emb for tower, path in paths.items()}

    def cached_with_data() -> None:
        rows = {
            "image_emb": _gather(mapped["image"], picked),
            "caption_emb": _gather(mapped["text"], picked),
            "dialogue_tokens": torch.from_numpy(token_matrix[picked]),
        }
        train_step(objective, optimizer, rows, CPU)

    def full_with_data() -> None:
        # Without caches every step decodes and preprocesses its images and tokenises its texts.
        pixels = torch.stack([preprocess(decode_image(data)) for data in jpegs])
        with torch.no_grad():
            image_emb = model.encode_image(pixels)
            caption_emb = model.encode_text(tokenizer(caption_texts))
        rows = {"image_emb": image_emb, "caption_emb": caption_emb}
        rows["dialogue_tokens"] = tokenizer(dialogue_texts)
        train_step(objective, optimizer, rows, CPU)

    arms = {
        "cached": cached_step,
        "full": full_step,
        "cached_with_data": cached_with_data,
        "full_with_data": full_with_data,
    }
    times = time_interleaved(arms, steps)
    result: dict[str, Any] = {name: summary(arm, batch) for name, arm in times.items()}
    for suffix in ("", "_with_data"):
        result[f"speedup_cached_vs_full{suffix}"] = round(
            result[f"cached{suffix}"]["samples_per_s"] / result[f"full{suffix}"]["samples_per_s"],
            3,
        )
    return result


def _gather(emb: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(emb[rows]))


def cache_bytes_per_million_rows(rows: int = 10_000, dim: int = 512) -> dict[str, Any]:
    """Write an image and a caption cache of ``rows`` rows as the cache code does; scale up."""
    keys = [f"{i:09d}" for i in range(rows)]
    emb = np.random.default_rng(0).standard_normal((rows, dim))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache.arrow"
        write_embedding_cache(keys, emb, path, {"tower": "benchmark"})
        size = path.stat().st_size
    per_million = size * 1_000_000 / rows
    return {
        "embedding_dim": dim,
        "one_cache_bytes_per_million_rows": int(per_million),
        "image_plus_caption_gib_per_million_rows": round(2 * per_million / 2**30, 3),
        "cc3m_rows_assumed": 2_800_000,
        "image_plus_caption_gib_cc3m": round(2 * per_million * 2.8 / 2**30, 2),
    }


def _measure_in_tmp(batch: int, steps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return measure(batch, steps, Path(tmp))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = {
        "benchmark": "third-tower training step, caches vs full forward (ViT-B-32, CPU)",
        "batch": args.batch,
        "steps": args.steps,
        "machine": machine_record(args.threads),
        "target_speedup": 1.8,
        **_measure_in_tmp(args.batch, args.steps),
        "cache_size": cache_bytes_per_million_rows(),
    }
    record["meets_target"] = {
        "step_only": record["speedup_cached_vs_full"] >= record["target_speedup"],
        "with_data": record["speedup_cached_vs_full_with_data"] >= record["target_speedup"],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
