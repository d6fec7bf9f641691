"""Synthetic result files in the evaluation stage's formats, for the report's tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RETRIEVAL_KEYS = [
    f"{direction}_retrieval_recall@{k}" for direction in ("image", "text") for k in (1, 5, 10)
]


def write_retrieval(results: Path, name: str, recalls: list[float]) -> Path:
    """results/eval/retrieval/{name}/coco.json with recall in [0, 1] (as CLIP_benchmark)."""
    path = results / "eval" / "retrieval" / name / "coco.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "dataset": "mscoco_captions",
        "task": "zeroshot_retrieval",
        "name": name,
        "metrics": dict(zip(RETRIEVAL_KEYS, recalls, strict=True)),
    }
    path.write_text(json.dumps(data))
    return path


def write_vqa(results: Path, name: str, dataset: str, overall: float, per_type: dict) -> Path:
    """results/eval/vqa/{name}/{dataset}.json with accuracy in percent."""
    path = results / "eval" / "vqa" / name / f"{dataset}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = {"overall": overall, "per_answer_type": per_type, "per_question_type": {}}
    path.write_text(json.dumps({"dataset": dataset, "metrics": metrics}))
    return path
