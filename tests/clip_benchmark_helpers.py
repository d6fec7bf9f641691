"""CLIP_benchmark's own zero-shot retrieval, as its CLI runs it, for parity tests.

clip_benchmark 1.6.2 (a dev dependency) is upstream LAION-AI/CLIP_benchmark at 48de38c for the
functions used here: ``datasets.builder.build_dataset`` / ``get_dataset_collate_fn`` and
``metrics.zeroshot_retrieval.evaluate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def clip_benchmark_recalls(
    dataset_name: str,
    root: Path,
    annotation_file: Path,
    model: Any,
    preprocess: Any,
    tokenizer: Any,
    ks: tuple[int, ...],
) -> dict[str, float]:
    """``clip_benchmark eval --dataset <dataset_name> --task zeroshot_retrieval --no_amp`` on
    local files (no download): {"image_retrieval_recall@k" | "text_retrieval_recall@k": value}.
    ``model`` needs ``encode_image`` / ``encode_text``; every k must be <= the number of images."""
    from clip_benchmark.datasets.builder import build_dataset, get_dataset_collate_fn
    from clip_benchmark.metrics import zeroshot_retrieval

    dataset = build_dataset(
        dataset_name,
        root=str(root),
        annotation_file=str(annotation_file),
        transform=preprocess,
        split="test",
        download=False,
        task="zeroshot_retrieval",
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=3, collate_fn=get_dataset_collate_fn(dataset_name)
    )
    return zeroshot_retrieval.evaluate(
        model, loader, tokenizer, "cpu", amp=False, recall_k_list=list(ks)
    )
