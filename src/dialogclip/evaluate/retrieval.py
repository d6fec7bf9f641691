"""Zero-shot image-text retrieval recall@k, computed as LAION's CLIP_benchmark computes it.

CLIP_benchmark (``clip_benchmark/metrics/zeroshot_retrieval.py``) builds the score matrix
``scores = text_emb @ image_emb.T`` and, for each k, calls ``torch.topk(., k)`` on the rows of
``scores`` (text -> image, "image retrieval") and of ``scores.T`` (image -> text, "text
retrieval"); a query is a hit if at least one of its positives is among its top k (an image's
positives are all of its captions), and recall@k is ``hits.float().mean()``. The same products
(text rows times image columns, never the other way round), the same ``topk`` per k and the same
float32 mean are used here, so scores and ties resolve identically; but the matrix is built one
block of rows (or columns) at a time, so ``N_texts x N_images`` scores are never held at once
(100k texts x 20k images would be 8 GB).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_BLOCK_ELEMENTS = 1 << 24  # scores held at once: 64 MiB in fp32


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> dict[str, float]:
    """Recall@k in [0, 1] for text->image (``image_retrieval_recall@k``) and image->text
    (``text_retrieval_recall@k``).

    image_emb: [N_images, D]; text_emb: [N_texts, D] (normalise both for cosine similarity);
    text_to_image: [N_texts] int, the index of each text's image. Every image needs >= 1 text.
    A k larger than the number of candidates counts every query as a hit (CLIP_benchmark's
    ``topk`` would fail there).
    """
    _check_inputs(image_emb, text_emb, text_to_image, ks)
    text_to_image = text_to_image.to(device=text_emb.device, dtype=torch.long)
    image_emb = image_emb.to(text_emb.device)
    text_hits = _text_to_image_hits(image_emb, text_emb, text_to_image, ks, block_elements)
    image_hits = _image_to_text_hits(image_emb, text_emb, text_to_image, ks, block_elements)
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = text_hits[k].float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = image_hits[k].float().mean().item()
    return metrics


def _rows_per_block(n_columns: int, block_elements: int) -> int:
    return max(1, block_elements // max(1, n_columns))


def _text_to_image_hits(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int],
    block_elements: int,
) -> dict[int, torch.Tensor]:
    """Per text query and k: is its image among the k best-scoring images? -> {k: [N_texts]}."""
    n_images = image_emb.shape[0]
    rows = _rows_per_block(n_images, block_elements)
    hits: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, text_emb.shape[0], rows):
        scores = text_emb[start : start + rows] @ image_emb.T  # (B, N_images), rows of `scores`
        wanted = text_to_image[start : start + rows].unsqueeze(1)  # (B, 1)
        for k in ks:
            top = torch.topk(scores, min(k, n_images), dim=1).indices  # (B, k)
            hits[k].append((top == wanted).any(dim=1))
    return {k: torch.cat(found) for k, found in hits.items()}


def _image_to_text_hits(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int],
    block_elements: int,
) -> dict[int, torch.Tensor]:
    """Per image query and k: is any of its captions among the k best-scoring texts?
    -> {k: [N_images]}."""
    n_texts = text_emb.shape[0]
    rows = _rows_per_block(n_texts, block_elements)
    hits: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, image_emb.shape[0], rows):
        # Columns of CLIP_benchmark's `scores`, transposed: (B, N_texts).
        scores = (text_emb @ image_emb[start : start + rows].T).T
        wanted = torch.arange(start, start + scores.shape[0], device=scores.device).unsqueeze(1)
        for k in ks:
            top = torch.topk(scores, min(k, n_texts), dim=1).indices  # (B, k)
            hits[k].append((text_to_image[top] == wanted).any(dim=1))
    return {k: torch.cat(found) for k, found in hits.items()}


def _check_inputs(
    image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor, ks: Sequence[int]
) -> None:
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"expected image_emb [N_images, D] and text_emb [N_texts, D], got "
            f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    if text_to_image.shape != (text_emb.shape[0],):
        raise ValueError(
            f"text_to_image must have shape ({text_emb.shape[0]},), "
            f"got {tuple(text_to_image.shape)}"
        )
    if text_to_image.numel() and (
        int(text_to_image.min()) < 0 or int(text_to_image.max()) >= image_emb.shape[0]
    ):
        raise ValueError("text_to_image holds an index outside [0, N_images)")
    if torch.bincount(text_to_image.long(), minlength=image_emb.shape[0]).min() < 1:
        raise ValueError("every image needs at least one caption")
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
