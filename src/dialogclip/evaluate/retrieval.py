"""Zero-shot image-text retrieval recall@k, computed as LAION's CLIP_benchmark computes it.

CLIP_benchmark scores every (text, image) pair as ``text_emb @ image_emb.T`` and takes
``torch.topk`` along each row: a text query is a hit at k if its image is among its top k
images; an image query is a hit at k if *any* of its captions is among its top k texts. The
same ``torch.topk`` is used here (so ties resolve identically), but one block of rows at a time,
so the full ``N_texts x N_images`` matrix is never held (100k texts x 20k images would be 8 GB).
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
    """
    _check_inputs(image_emb, text_emb, text_to_image, ks)
    text_to_image = text_to_image.to(device=text_emb.device, dtype=torch.long)
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = _text_queries_hit(
            text_emb, image_emb, text_to_image, k, block_elements
        )
        metrics[f"text_retrieval_recall@{k}"] = _image_queries_hit(
            image_emb, text_emb, text_to_image, k, block_elements
        )
    return metrics


def _rows_per_block(n_columns: int, block_elements: int) -> int:
    return max(1, block_elements // max(1, n_columns))


def _text_queries_hit(
    text_emb: torch.Tensor,
    image_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    k: int,
    block_elements: int,
) -> float:
    k = min(k, image_emb.shape[0])
    hits = 0
    step = _rows_per_block(image_emb.shape[0], block_elements)
    for start in range(0, text_emb.shape[0], step):
        scores = text_emb[start : start + step] @ image_emb.T  # (B, N_images)
        top = torch.topk(scores, k, dim=1).indices  # (B, k)
        truth = text_to_image[start : start + step].unsqueeze(1)  # (B, 1)
        hits += int((top == truth).any(dim=1).sum())
    return hits / text_emb.shape[0]


def _image_queries_hit(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    k: int,
    block_elements: int,
) -> float:
    k = min(k, text_emb.shape[0])
    hits = 0
    step = _rows_per_block(text_emb.shape[0], block_elements)
    for start in range(0, image_emb.shape[0], step):
        # Rows of (text_emb @ image_emb.T).T, as CLIP_benchmark ranks texts for an image.
        scores = image_emb[start : start + step] @ text_emb.T  # (B, N_texts)
        top = torch.topk(scores, k, dim=1).indices  # (B, k) text indices
        images = torch.arange(start, start + scores.shape[0], device=top.device).unsqueeze(1)
        hits += int((text_to_image[top] == images).any(dim=1).sum())
    return hits / image_emb.shape[0]


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
