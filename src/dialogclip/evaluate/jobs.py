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
from dialogclip.models.openclip import LoadedClip, load_clip
from dialogclip.models.text_encoders import TowerTextEncoder

log = logging.getLogger(__name__)
VARIANT = "plain"  # the training issues add blended variants


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


def _record(job: EvaluateJob, clip: LoadedClip, task: str, metrics: dict[str, Any]) -> dict:
    return {
        "dataset": job.dataset,
        "model": job.model.architecture,
        "pretrained": job.model.pretrained,
        "task": task,
        "metrics": metrics,
        "name": job.model.name,
        "variant": VARIANT,
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
    encoder = TowerTextEncoder(clip.model, clip.tokenizer, job.batch_size, _device())
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
    encoder = TowerTextEncoder(clip.model, clip.tokenizer, job.batch_size, _device())
    write_json_atomic(predict_multiple_choice(image_emb, mc_set, encoder, job.template), results)
    metrics = score_results(_questions(job), job.files.annotations, results)
    record = _record(job, clip, "vqa_multiple_choice", metrics)
    write_json_atomic(record, output)
    return record
