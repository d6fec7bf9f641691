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
    image_ids = torch.arange(image_emb.shape[0], device=text_emb.device)
    metrics = {}
    for k in ks:
        # A text's match is its image; an image's matches are all of its captions.
        metrics[f"image_retrieval_recall@{k}"] = _recall_at_k(
            text_emb, text_to_image, image_emb, image_ids, k, block_elements
        )
        metrics[f"text_retrieval_recall@{k}"] = _recall_at_k(
            image_emb, image_ids, text_emb, text_to_image, k, block_elements
        )
    return metrics


def _recall_at_k(
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    candidates: torch.Tensor,
    candidate_labels: torch.Tensor,
    k: int,
    block_elements: int,
) -> float:
    """Fraction of queries with a same-label candidate among their top k (ranked by dot product).

    queries [Q, D], query_labels [Q], candidates [C, D], candidate_labels [C].
    """
    k = min(k, candidates.shape[0])
    rows = max(1, block_elements // max(1, candidates.shape[0]))
    hits = 0
    for start in range(0, queries.shape[0], rows):
        scores = queries[start : start + rows] @ candidates.T  # (B, C)
        top = torch.topk(scores, k, dim=1).indices  # (B, k)
        wanted = query_labels[start : start + rows].unsqueeze(1)  # (B, 1)
        hits += int((candidate_labels[top] == wanted).any(dim=1).sum())
    return hits / queries.shape[0]


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
