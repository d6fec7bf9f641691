"""Benchmark: third-tower training with the frozen-tower embedding caches vs the full forward.

Both arms run the same training step of CLIP-3Modal on the real ViT-B-32 architecture with
random weights (open_clip, no download), on CPU, at the same batch:

- ``cached`` (what ``train_run`` does): I(x) and T(y) come from the cache, so a step is G's
  forward + backward on the dialogue tokens, the loss, and the AdamW update;
- ``full``: the same step, but I(x) (the image tower on 224 px images) and T(y) (the text tower
  on the captions) are computed in the step, under ``no_grad`` as frozen towers are.

Both use ``ThirdTowerObjective`` and ``third_tower_loss``; the batch is fed from memory (the
cached arm's data loading is measured apart: ``ThirdTowerDataset.batch`` on real cache files).
Also written: the size of the caches per million training rows (float16 Arrow IPC, image and
caption embeddings, keys included), measured from files the cache code writes. Target (issue 8):
cached >= 1.8x the full forward's samples/s. Results: bench/results/bench_train.json.
Run: `.venv/bin/python bench/bench_train.py [--batch 32] [--steps 5] [--threads 2]`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from benchlib import machine_record, summary, time_interleaved

from dialogclip.models.towers import copy_text_tower
from dialogclip.train.cache import write_embedding_cache
from dialogclip.train.objectives import ThirdTowerLoss, ThirdTowerObjective
from dialogclip.train.optim import adamw, param_groups

OUT = Path(__file__).parent / "results" / "bench_train.json"


def _step(objective: ThirdTowerObjective, optimizer, batch: dict[str, torch.Tensor]) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss, _ = objective.loss(batch, lambda features: features)
    loss.backward()
    optimizer.step()


def measure(batch: int, steps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    g = copy_text_tower(model)
    objective = ThirdTowerObjective(g, 100.0, ThirdTowerLoss())
    # The trainer's optimizer: its decay groups and fused AdamW (dialogclip.train.optim).
    optimizer = adamw(param_groups(g, 0.1), 1e-5, (0.9, 0.98), 1e-6, 0.1, torch.device("cpu"))
    images = torch.randn(batch, 3, 224, 224)
    captions = tokenizer([f"a photo of thing number {i}" for i in range(batch)])
    dialogue = tokenizer(
        [f"what is it? thing {i}. what colour? red. where? on a table" for i in range(batch)]
    )
    with torch.no_grad():
        cached = {
            "image_emb": F.normalize(model.encode_image(images), dim=-1),
            "caption_emb": F.normalize(model.encode_text(captions), dim=-1),
            "dialogue_tokens": dialogue,
        }

    def cached_step() -> None:
        _step(objective, optimizer, cached)

    def full_step() -> None:
        with torch.no_grad():  # I and T are frozen: no graph, as in the full-forward baseline
            image_emb = model.encode_image(images)
            caption_emb = model.encode_text(captions)
        _step(
            objective,
            optimizer,
            {"image_emb": image_emb, "caption_emb": caption_emb, "dialogue_tokens": dialogue},
        )

    times = time_interleaved({"cached": cached_step, "full": full_step}, steps)
    result: dict[str, Any] = {name: summary(arm, batch) for name, arm in times.items()}
    result["speedup_cached_vs_full"] = round(
        result["cached"]["samples_per_s"] / result["full"]["samples_per_s"], 3
    )
    return result


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
        **measure(args.batch, args.steps),
        "cache_size": cache_bytes_per_million_rows(),
    }
    record["meets_target"] = record["speedup_cached_vs_full"] >= record["target_speedup"]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
