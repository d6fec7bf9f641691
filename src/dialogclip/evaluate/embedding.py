"""Image embeddings of an evaluation set and VQA multiple-choice prediction.

Image embeddings do not depend on the text variant, so they are computed once per (image
tower, dataset), cached in a ``.safetensors`` file whose metadata records what was embedded, and
reused by every variant. Texts are deduplicated before encoding: VQA's candidate texts
``question + " " + answer`` repeat a lot (18 per question, many shared questions and answers).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from tqdm import tqdm

from dialogclip.core.images import ImageDecodeError, decode_rgb
from dialogclip.core.io import CorruptFileError, atomic_path, read_safetensors
from dialogclip.evaluate.datasets import MultipleChoiceSet
from dialogclip.models.text_encoders import TextEncoder, autocast_for

log = logging.getLogger(__name__)
DEFAULT_TEMPLATE = "{question} {answer}"


class EvaluationImageError(ValueError):
    """An evaluation image is missing or cannot be decoded (the set would be incomplete)."""


def load_rgb(path: Path) -> Image.Image:
    """Open ``path`` as RGB; a missing or undecodable file raises naming it."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as err:
        raise EvaluationImageError(f"evaluation image missing: {path}") from err
    try:
        return decode_rgb(data)
    except ImageDecodeError as err:
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
        with autocast_for(device):
            features = model.encode_image(batch.to(device))  # [B, D]
        chunks.append(F.normalize(features.float(), dim=-1).cpu())
    return torch.cat(chunks)


CACHE_METADATA_KEY = "dialogclip:image_emb"


def images_fingerprint(paths: Sequence[Path]) -> str:
    """SHA-1 of the image file names in order: ties a cache to the set it was computed for."""
    return hashlib.sha1("\n".join(path.name for path in paths).encode()).hexdigest()


def save_image_embeddings(
    emb: torch.Tensor, paths: Sequence[Path], output: Path, provenance: Mapping[str, Any]
) -> None:
    """Write ``emb`` [N_images, D] atomically with what it is (model, dataset, images)."""
    metadata = {
        **provenance,
        "n_images": len(paths),
        "images_sha1": images_fingerprint(paths),
        "shape": list(emb.shape),
    }
    with atomic_path(output) as tmp:
        save_file(
            {"image_emb": emb.contiguous()},
            str(tmp),
            metadata={CACHE_METADATA_KEY: json.dumps(metadata, sort_keys=True)},
        )


def load_image_embeddings(path: Path, paths: Sequence[Path]) -> torch.Tensor:
    """The cached [N_images, D] embeddings of exactly the images ``paths``, in that order."""
    tensors, raw = read_safetensors(path, ["image_emb"], "image-embedding cache (safetensors)")
    emb = tensors["image_emb"]
    try:
        metadata = json.loads(raw.get(CACHE_METADATA_KEY, "{}"))
    except ValueError as err:
        raise CorruptFileError(path, "image-embedding cache", f"metadata: {err}") from err
    if emb.shape[0] != len(paths) or metadata.get("images_sha1") != images_fingerprint(paths):
        raise ValueError(
            f"{path} holds the embeddings of another image set ({emb.shape[0]} images, "
            f"expected {len(paths)}): delete it so that it is recomputed"
        )
    return emb


def encode_unique(encoder: TextEncoder, texts: Sequence[str]) -> torch.Tensor:
    """texts (N) -> [N, D]: each distinct text is encoded once."""
    unique = sorted(set(texts))
    position = {text: i for i, text in enumerate(unique)}
    emb = encoder.encode(unique)  # [N_unique, D]
    log.info("encoded %d distinct texts (of %d)", len(unique), len(texts))
    return emb[torch.tensor([position[text] for text in texts], dtype=torch.long)]


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
        # Unit vectors: the dot product is the cosine similarity. argmax keeps the first maximum.
        similarity = text_emb[rows] @ image_emb[question.image_index]  # (n_choices,)
        best = int(torch.argmax(similarity))
        results.append({"question_id": question.question_id, "answer": question.choices[best]})
    return results
