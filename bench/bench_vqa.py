"""Benchmark: VQA multiple-choice evaluation with cached image embeddings and deduplicated
candidate texts vs naive per-question encoding, on the same model and questions.

Naive: for every question, embed its image and encode its 18 candidate texts. Ours (what the
rules do): embed each image once into the on-disk cache (``save_image_embeddings``), read it
back, and encode each distinct candidate text once in batches (``predict_multiple_choice``);
``ours_next_variant`` is the cost of one more text variant, which reuses the cache. Each method
runs in its own spawned process so that its peak resident memory is its own. Both must give the
same answers. The synthetic set mimics VQA v1: 3 questions per image, 18 candidates drawn from a
shared answer pool, most question wordings unique. Models: random-weight open_clip
architectures (no download): ``tiny-clip`` and, with ``--archs tiny-clip ViT-B-32``, the
thesis' architecture. Results: bench/results/bench_vqa.json.
Run: `.venv/bin/python bench/bench_vqa.py [--images 200] [--archs tiny-clip ViT-B-32]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import platform
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dialogclip.evaluate.datasets import MultipleChoiceQuestion, MultipleChoiceSet
from dialogclip.evaluate.embedding import (
    candidate_texts,
    embed_images,
    load_image_embeddings,
    predict_multiple_choice,
    save_image_embeddings,
)
from dialogclip.models.openclip import register_model_configs
from dialogclip.models.text_encoders import TowerTextEncoder

log = logging.getLogger("bench_vqa")
OUT = Path(__file__).parent / "results" / "bench_vqa.json"
ANSWER_POOL = [str(i) for i in range(12)] + [
    "yes", "no", "red", "blue", "green", "white", "black", "cat", "dog", "car", "tennis",
    "pizza", "kitchen", "left", "right", "wood", "grass", "snow", "sitting", "standing",
]  # fmt: skip
STEMS = ["What color is the", "How many", "Is there a", "What is the man holding near the",
         "Where is the", "What kind of"]  # fmt: skip
NOUNS = ["car", "dog", "table", "bus", "plate", "sign", "tree", "umbrella", "horse", "kite"]
QUESTIONS_PER_IMAGE = 3  # as in VQA v1
N_CHOICES = 18


def make_set(folder: Path, n_images: int, seed: int) -> MultipleChoiceSet:
    rng = random.Random(seed)
    paths = []
    for i in range(n_images):
        path = folder / f"{i:05d}.png"
        Image.new("RGB", (96, 72), tuple(rng.randrange(256) for _ in range(3))).save(path)
        paths.append(path)
    questions = []
    for image in range(n_images):
        for _ in range(QUESTIONS_PER_IMAGE):
            text = f"{rng.choice(STEMS)} {rng.choice(NOUNS)}?"
            if rng.random() < 0.7:  # most VQA questions are worded for their image
                text = f"{text[:-1]} in picture {image}?"
            choices = rng.sample(ANSWER_POOL, N_CHOICES)
            questions.append(MultipleChoiceQuestion(len(questions), image, text, choices))
    return MultipleChoiceSet(paths, questions)


def _load(arch: str, seed: int = 0):
    import open_clip

    register_model_configs()
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
    return model.eval(), preprocess, open_clip.get_tokenizer(arch)


def naive(mc_set: MultipleChoiceSet, model, preprocess, encoder, cache: Path) -> list[dict]:
    results = []
    for question, texts in zip(mc_set.questions, candidate_texts(mc_set), strict=True):
        image = embed_images([mc_set.image_paths[question.image_index]], model, preprocess)
        scores = encoder.encode(texts) @ image[0]  # (18,)
        best = int(torch.argmax(scores))
        results.append({"question_id": question.question_id, "answer": question.choices[best]})
    return results


def ours(mc_set: MultipleChoiceSet, model, preprocess, encoder, cache: Path) -> list[dict]:
    emb = embed_images(mc_set.image_paths, model, preprocess, batch_size=64)
    save_image_embeddings(emb, mc_set.image_paths, cache, {"dataset": "bench"})
    return ours_next_variant(mc_set, model, preprocess, encoder, cache)


def ours_next_variant(mc_set: MultipleChoiceSet, model, preprocess, encoder, cache: Path):
    image_emb = load_image_embeddings(cache, mc_set.image_paths)
    return predict_multiple_choice(image_emb, mc_set, encoder)


METHODS = {"naive": naive, "ours": ours, "ours_next_variant": ours_next_variant}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_method(method: str, arch: str, folder: str, n_images: int, queue: Any) -> None:
    """In a fresh process: build the model and the set, run one method, report."""
    torch.set_num_threads(2)
    mc_set = make_set(Path(folder), n_images, seed=0)
    model, preprocess, tokenizer = _load(arch)
    encoder = TowerTextEncoder(model, tokenizer, batch_size=256)
    setup_rss = _peak_rss_mb()
    started = time.perf_counter()
    answers = METHODS[method](mc_set, model, preprocess, encoder, Path(folder) / "cache.st")
    seconds = time.perf_counter() - started
    queue.put(
        {
            "seconds": seconds,
            "peak_rss_mb": _peak_rss_mb(),
            "rss_after_setup_mb": setup_rss,
            "answers": answers,
        }
    )


def _spawn(method: str, arch: str, folder: Path, n_images: int) -> dict[str, Any]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=run_method, args=(method, arch, str(folder), n_images, queue))
    process.start()
    outcome = queue.get()
    process.join()
    return outcome


def bench_arch(arch: str, n_images: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runs = {}
        for method in ("ours", "ours_next_variant", "naive"):  # the cache is written first
            runs[method] = _spawn(method, arch, folder, n_images)
            log.info("%s %s: %.2f s", arch, method, runs[method]["seconds"])
        mc_set = make_set(folder, n_images, seed=0)
    assert runs["ours"]["answers"] == runs["naive"]["answers"], "the methods disagree"
    assert runs["ours_next_variant"]["answers"] == runs["ours"]["answers"]
    texts = [text for choices in candidate_texts(mc_set) for text in choices]
    return {
        "model": f"{arch} (random weights, CPU)",
        "images": n_images,
        "questions": len(mc_set.questions),
        "candidate_texts": len(texts),
        "distinct_candidate_texts": len(set(texts)),
        "seconds": {method: round(run["seconds"], 3) for method, run in runs.items()},
        "speedup_naive_over_ours": round(runs["naive"]["seconds"] / runs["ours"]["seconds"], 2),
        "speedup_naive_over_ours_next_variant": round(
            runs["naive"]["seconds"] / runs["ours_next_variant"]["seconds"], 2
        ),
        "peak_rss_mb": {method: round(run["peak_rss_mb"], 1) for method, run in runs.items()},
        "rss_after_setup_mb": {
            method: round(run["rss_after_setup_mb"], 1) for method, run in runs.items()
        },
        "same_answers": True,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="3 questions each")
    parser.add_argument("--archs", nargs="+", default=["tiny-clip"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    record = {
        "benchmark": "VQA MC: cached image embeddings + deduplicated texts vs naive per question",
        "runs": [bench_arch(arch, args.images) for arch in args.archs],
        "machine": {
            "cpus_used": 2,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %s\n%s", OUT, json.dumps(record["runs"], indent=2))


if __name__ == "__main__":
    main()
