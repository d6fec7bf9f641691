"""Benchmark: VQA multiple-choice evaluation with cached image embeddings and deduplicated
candidate texts vs naive per-question encoding, on the same tiny model and questions.

Naive: for every question, embed its image and encode its 18 candidate texts. Ours: embed each
image once (the cache the rule writes), encode each distinct candidate text once
(`predict_multiple_choice`). Both must give the same answers; the ratio of wall times and the
peak resident memory of each are written to bench/results/bench_vqa.json.
Run: `.venv/bin/python bench/bench_vqa.py [--questions 600 --images 100]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from dialogclip.evaluate.datasets import MultipleChoiceQuestion, MultipleChoiceSet
from dialogclip.evaluate.embedding import candidate_texts, embed_images, predict_multiple_choice
from dialogclip.models.openclip import ClipSpec, load_clip, make_tiny_clip
from dialogclip.models.text_encoders import TowerTextEncoder

OUT = Path(__file__).parent / "results" / "bench_vqa.json"
ANSWERS = [str(i) for i in range(10)] + ["yes", "no", "red", "blue", "green", "cat", "dog", "car"]
QUESTIONS = ["What color is it?", "How many are there?", "Is it a cat?", "What animal is this?"]


def make_set(folder: Path, n_images: int, n_questions: int, seed: int) -> MultipleChoiceSet:
    rng = random.Random(seed)
    paths = []
    for i in range(n_images):
        path = folder / f"{i:05d}.png"
        Image.new("RGB", (64, 48), tuple(rng.randrange(256) for _ in range(3))).save(path)
        paths.append(path)
    # As in VQA, most questions are worded differently and a few common ones repeat (~20 %).
    questions = [
        MultipleChoiceQuestion(q, rng.randrange(n_images), _question(rng, q), list(ANSWERS))
        for q in range(n_questions)
    ]
    return MultipleChoiceSet(paths, questions)


def _question(rng: random.Random, index: int) -> str:
    if rng.random() < 0.2:
        return rng.choice(QUESTIONS)
    return f"{rng.choice(QUESTIONS)[:-1]} in scene {index}?"


def naive(mc_set: MultipleChoiceSet, clip, encoder: TowerTextEncoder) -> list[dict]:
    results = []
    for question, texts in zip(mc_set.questions, candidate_texts(mc_set), strict=True):
        image = embed_images(
            [mc_set.image_paths[question.image_index]], clip.model, clip.preprocess
        )
        scores = encoder.encode(texts) @ image[0]
        best = int(torch.argmax(scores))
        results.append({"question_id": question.question_id, "answer": question.choices[best]})
    return results


def ours(mc_set: MultipleChoiceSet, clip, encoder: TowerTextEncoder) -> list[dict]:
    image_emb = embed_images(mc_set.image_paths, clip.model, clip.preprocess)
    return predict_multiple_choice(image_emb, mc_set, encoder)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=600)
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clip = load_clip(ClipSpec("tiny-clip", str(make_tiny_clip(folder / "tiny.safetensors"))))
        encoder = TowerTextEncoder(clip.model, clip.tokenizer)
        mc_set = make_set(folder, args.images, args.questions, seed=0)
        timings = {}
        answers = {}
        for name, run in (("ours", ours), ("naive", naive)):
            started = time.perf_counter()
            answers[name] = run(mc_set, clip, encoder)
            timings[name] = time.perf_counter() - started
            timings[f"{name}_peak_rss_mb_after"] = peak_rss_mb()
    assert answers["ours"] == answers["naive"], "the two methods disagree"
    record = {
        "benchmark": "VQA MC: cached image embeddings + deduplicated texts vs naive per question",
        "model": "tiny-clip (random, CPU)",
        "questions": args.questions,
        "images": args.images,
        "candidates_per_question": len(ANSWERS),
        "distinct_texts": len({t for c in candidate_texts(mc_set) for t in c}),
        "ours_s": round(timings["ours"], 3),
        "naive_s": round(timings["naive"], 3),
        "speedup_naive_over_ours": round(timings["naive"] / timings["ours"], 2),
        "peak_rss_mb_after_ours": round(timings["ours_peak_rss_mb_after"], 1),
        "peak_rss_mb_after_naive": round(timings["naive_peak_rss_mb_after"], 1),
        "same_answers": True,
        "machine": {"cpus": torch.get_num_threads(), "python": platform.python_version()},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
