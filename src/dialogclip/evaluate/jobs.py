"""The evaluation jobs the rules run: image embeddings (cached per image tower and dataset),
COCO retrieval and VQA multiple choice, each writing one JSON with CLIP_benchmark's fields
(``dataset``, ``model``, ``pretrained``, ``task``, ``metrics``, ``language``) plus ours."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dialogclip.core.io import write_json_atomic
from dialogclip.core.machine import torch_device
from dialogclip.core.versions import package_versions
from dialogclip.evaluate.datasets import (
    check_dataset_files,
    image_paths_of,
    load_retrieval_set,
    load_vqa_multiple_choice,
)
from dialogclip.evaluate.embedding import (
    embed_images,
    encode_unique,
    load_image_embeddings,
    predict_multiple_choice,
    save_image_embeddings,
)
from dialogclip.evaluate.retrieval import retrieval_metrics
from dialogclip.evaluate.settings import BENCHMARK_DATASET_NAMES, TASKS, EvaluateJob
from dialogclip.evaluate.vqa import score_results
from dialogclip.models.openclip import LoadedClip, load_clip, load_text_tower
from dialogclip.models.text_encoders import (
    EmbeddingBlend,
    TextEncoder,
    TowerTextEncoder,
    blend_weights,
)

log = logging.getLogger(__name__)


def run_embed_images(
    job: EvaluateJob, output: Path, batch_size: int = 64, weights_dir: Path | None = None
) -> None:
    """Embed every image of the dataset once: ``output`` holds ``image_emb`` [N_images, D]."""
    start = time.perf_counter()
    check_dataset_files(job.dataset, asdict(job.files))
    paths = image_paths_of(job.dataset, asdict(job.files))
    clip = load_clip(job.model.spec, device=torch_device(), weights_dir=weights_dir)
    emb = embed_images(paths, clip.model, clip.preprocess, batch_size, torch_device())
    provenance = {
        "dataset": job.dataset,
        "image_model": job.model.image_model,
        "architecture": job.model.architecture,
        "pretrained": job.model.pretrained,
        "quickgelu": clip.quickgelu,
    }
    save_image_embeddings(emb, paths, output, provenance)
    # the job's time (the rule has no benchmark: file, which a cacheable rule may not have)
    log.info(
        "embedded %d images of %s with %s in %.1f s",
        len(paths),
        job.dataset,
        job.model.image_model,
        time.perf_counter() - start,
    )


def build_text_encoder(job: EvaluateJob, clip: LoadedClip, batch_size: int = 64) -> TextEncoder:
    """The text encoder of the job's variant, on top of the loaded (original) model;
    ``batch_size`` texts per forward pass."""
    entry = job.model

    def tower(model: Any) -> TowerTextEncoder:
        return TowerTextEncoder(model, clip.tokenizer, batch_size, torch_device())

    if entry.text_variant == "plain":
        return tower(clip.model)
    # The second text tower shares the architecture (and activation) of the original model.
    assert entry.other is not None and entry.beta is not None  # checked by EvalEntry
    other = load_text_tower(clip.model, entry.other)
    if entry.text_variant == "embedding_blend":
        return EmbeddingBlend(tower(clip.model), tower(other), entry.beta)
    return tower(blend_weights(clip.model, other.state_dict(), entry.beta))


def _versions() -> dict[str, str | None]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        **package_versions(("open_clip_torch", "dialogclip")),
    }


def _record(job: EvaluateJob, clip: LoadedClip, metrics: dict[str, Any]) -> dict[str, Any]:
    entry = job.model
    return {
        # CLIP_benchmark's fields; `model` is the open_clip name that loads the model as it ran
        # (ViT-B-32-quickgelu when QuickGELU was used).
        "dataset": BENCHMARK_DATASET_NAMES.get(job.dataset, job.dataset),
        "model": clip.open_clip_name,
        "pretrained": entry.pretrained,
        "task": TASKS[job.dataset],
        "metrics": metrics,
        "language": "en",
        # Ours.
        "name": entry.name,
        "dataset_key": job.dataset,
        "architecture": entry.architecture,
        "quickgelu": clip.quickgelu,
        "quickgelu_setting": entry.quickgelu,
        "text_variant": entry.text_variant,
        "beta": entry.beta,
        "other": entry.other,
        "image_model": entry.image_model,
        "settings": asdict(job),
        "versions": _versions(),
    }


def run_retrieval(
    job: EvaluateJob,
    image_emb_path: Path,
    output: Path,
    batch_size: int = 64,
    weights_dir: Path | None = None,
) -> dict[str, Any]:
    """Zero-shot retrieval recall@k (COCO, Flickr30k) of the job's text variant."""
    check_dataset_files(job.dataset, asdict(job.files))
    files = job.files
    data = load_retrieval_set(files.annotations, files.images, files.split, job.dataset)
    image_emb = load_image_embeddings(image_emb_path, data.image_paths)
    clip = load_clip(job.model.spec, device=torch_device(), weights_dir=weights_dir)
    text_emb = encode_unique(build_text_encoder(job, clip, batch_size), data.captions)
    metrics = retrieval_metrics(image_emb, text_emb, torch.tensor(data.text_to_image), ks=job.ks)
    record = _record(job, clip, metrics)
    record.update(n_images=len(data.image_paths), n_texts=len(data.captions))
    write_json_atomic(record, output)
    return record


def run_vqa(
    job: EvaluateJob,
    image_emb_path: Path,
    results: Path,
    output: Path,
    batch_size: int = 64,
    weights_dir: Path | None = None,
) -> dict:
    """VQA v1 multiple choice: the official results file, then its official accuracy."""
    check_dataset_files(job.dataset, asdict(job.files))
    assert job.files.questions is not None  # checked by EvaluateJob
    mc_set = load_vqa_multiple_choice(job.files.questions, job.files.images, job.dataset)
    image_emb = load_image_embeddings(image_emb_path, mc_set.image_paths)
    clip = load_clip(job.model.spec, device=torch_device(), weights_dir=weights_dir)
    encoder = build_text_encoder(job, clip, batch_size)
    write_json_atomic(predict_multiple_choice(image_emb, mc_set, encoder, job.template), results)
    metrics = score_results(job.files.questions, job.files.annotations, results)
    record = _record(job, clip, metrics)
    record.update(n_images=len(mc_set.image_paths), results_file=str(results))
    write_json_atomic(record, output)
    return record
