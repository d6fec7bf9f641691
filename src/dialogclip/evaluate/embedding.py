"""Image embeddings of an evaluation set and VQA multiple-choice prediction.

Image embeddings do not depend on the text variant, so they are computed once per (model,
dataset) and reused by every variant. For VQA, the candidate texts ``question + " " + answer``
repeat a lot (18 per question, many shared answers and questions): they are deduplicated before
encoding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from dialogclip.evaluate.datasets import MultipleChoiceSet
from dialogclip.models.text_encoders import TextEncoder

log = logging.getLogger(__name__)
DEFAULT_TEMPLATE = "{question} {answer}"


class EvaluationImageError(ValueError):
    """An evaluation image is missing or cannot be decoded (the set would be incomplete)."""


def load_rgb(path: Path) -> Image.Image:
    """Open ``path`` as RGB; a missing or undecodable file raises naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as err:
        raise EvaluationImageError(f"evaluation image missing: {path}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise EvaluationImageError(f"evaluation image cannot be decoded: {path} ({err})") from err


@torch.inference_mode()
def embed_images(
    paths: Sequence[Path],
    model: Any,
    preprocess: Callable[[Image.Image], torch.Tensor],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """paths (N) -> [N, D] float32 unit image embeddings."""
    device = torch.device(device)
    chunks = []
    for start in tqdm(range(0, len(paths), batch_size), desc="images", unit="batch"):
        batch = torch.stack([preprocess(load_rgb(p)) for p in paths[start : start + batch_size]])
        with torch.autocast("cuda", enabled=device.type == "cuda"):
            features = model.encode_image(batch.to(device))
        chunks.append(F.normalize(features.float(), dim=-1).cpu())
    return torch.cat(chunks)


def candidate_texts(mc_set: MultipleChoiceSet, template: str = DEFAULT_TEMPLATE) -> list[list[str]]:
    """The text of each candidate answer of each question."""
    return [
        [template.format(question=q.question, answer=choice) for choice in q.choices]
        for q in mc_set.questions
    ]


def predict_multiple_choice(
    image_emb: torch.Tensor,
    mc_set: MultipleChoiceSet,
    encoder: TextEncoder,
    template: str = DEFAULT_TEMPLATE,
) -> list[dict[str, Any]]:
    """For each question, the candidate whose text is most similar (cosine) to its image.

    image_emb: [N_images, D] unit vectors in ``mc_set.image_paths`` order. Returns the official
    results format ``[{"question_id": ..., "answer": ...}]``; ties go to the first candidate.
    """
    texts = candidate_texts(mc_set, template)
    unique = sorted({text for choices in texts for text in choices})
    position = {text: i for i, text in enumerate(unique)}
    text_emb = encoder.encode(unique)  # [N_unique, D]
    log.info("encoded %d distinct candidate texts for %d questions", len(unique), len(texts))
    results = []
    for question, choices in zip(mc_set.questions, texts, strict=True):
        rows = torch.tensor([position[text] for text in choices])
        similarity = text_emb[rows] @ image_emb[question.image_index]  # (n_choices,)
        best = int(torch.argmax(similarity))
        results.append({"question_id": question.question_id, "answer": question.choices[best]})
    return results
