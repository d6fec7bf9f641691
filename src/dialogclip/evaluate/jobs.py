"""The evaluation jobs the rules run: image embeddings (cached per model and dataset),
COCO retrieval and VQA multiple choice, each writing one JSON with CLIP_benchmark's fields."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dialogclip.core.io import atomic_path, write_json_atomic
from dialogclip.evaluate.datasets import load_coco_retrieval, load_vqa_multiple_choice
from dialogclip.evaluate.embedding import embed_images, predict_multiple_choice
from dialogclip.evaluate.retrieval import retrieval_metrics
from dialogclip.evaluate.settings import EvaluateJob
from dialogclip.evaluate.vqa import score_results
from dialogclip.models.openclip import ClipSpec, LoadedClip, load_clip
from dialogclip.models.text_encoders import (
    EmbeddingBlend,
    TextEncoder,
    TowerTextEncoder,
    blend_weights,
)

log = logging.getLogger(__name__)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _image_paths(job: EvaluateJob) -> list[Path]:
    if job.dataset == "coco":
        return load_coco_retrieval(
            job.files.annotations, job.files.images, job.files.split
        ).image_paths
    return load_vqa_multiple_choice(_questions(job), job.files.images).image_paths


def _questions(job: EvaluateJob) -> str:
    if job.files.questions is None:
        raise ValueError(f"evaluate.{job.dataset}.questions is required for VQA")
    return job.files.questions


def run_embed_images(job: EvaluateJob, output: Path) -> None:
    """Embed every image of the dataset once: ``output`` holds ``image_emb`` [N_images, D]."""
    clip = load_clip(job.model.spec, device=_device())
    paths = _image_paths(job)
    emb = embed_images(paths, clip.model, clip.preprocess, job.batch_size, _device())
    with atomic_path(output) as tmp:
        save_file({"image_emb": emb.contiguous()}, str(tmp))
    log.info("embedded %d images of %s with %s", len(paths), job.dataset, job.model.name)


def build_text_encoder(job: EvaluateJob, clip: LoadedClip) -> TextEncoder:
    """The text encoder of the job's variant, on top of the loaded (original) model."""
    entry = job.model

    def tower(model: Any) -> TowerTextEncoder:
        return TowerTextEncoder(model, clip.tokenizer, job.batch_size, _device())

    if entry.text_variant == "plain":
        return tower(clip.model)
    # The second model shares the architecture and activation of the first.
    other = load_clip(ClipSpec(entry.architecture, entry.other, clip.quickgelu), _device())
    if entry.text_variant == "embedding_blend":
        return EmbeddingBlend(tower(clip.model), tower(other.model), entry.beta)
    return tower(blend_weights(clip.model, other.model.state_dict(), entry.beta))


def _record(job: EvaluateJob, clip: LoadedClip, task: str, metrics: dict[str, Any]) -> dict:
    return {
        "dataset": job.dataset,
        "model": job.model.architecture,
        "pretrained": job.model.pretrained,
        "task": task,
        "metrics": metrics,
        "name": job.model.name,
        "variant": job.model.text_variant,
        "beta": job.model.beta,
        "other": job.model.other,
        "quickgelu": clip.quickgelu,
        "settings": asdict(job),
    }


def run_retrieval(job: EvaluateJob, image_emb_path: Path, output: Path) -> dict[str, Any]:
    """COCO zero-shot retrieval recall@k of the plain text tower."""
    clip = load_clip(job.model.spec, device=_device())
    data = load_coco_retrieval(job.files.annotations, job.files.images, job.files.split)
    image_emb = load_file(str(image_emb_path))["image_emb"]
    if image_emb.shape[0] != len(data.image_paths):
        raise ValueError(
            f"{image_emb_path}: {image_emb.shape[0]} embeddings for {len(data.image_paths)} images"
        )
    encoder = build_text_encoder(job, clip)
    metrics = retrieval_metrics(
        image_emb, encoder.encode(data.captions), torch.tensor(data.text_to_image), ks=job.ks
    )
    record = _record(job, clip, "zeroshot_retrieval", metrics)
    record.update(n_images=len(data.image_paths), n_texts=len(data.captions))
    write_json_atomic(record, output)
    return record


def run_vqa(job: EvaluateJob, image_emb_path: Path, results: Path, output: Path) -> dict:
    """VQA v1 multiple choice: official results file, then the official accuracy."""
    clip = load_clip(job.model.spec, device=_device())
    mc_set = load_vqa_multiple_choice(_questions(job), job.files.images)
    image_emb = load_file(str(image_emb_path))["image_emb"]
    encoder = build_text_encoder(job, clip)
    write_json_atomic(predict_multiple_choice(image_emb, mc_set, encoder, job.template), results)
    metrics = score_results(_questions(job), job.files.annotations, results)
    record = _record(job, clip, "vqa_multiple_choice", metrics)
    write_json_atomic(record, output)
    return record
