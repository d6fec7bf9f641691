"""Readers for the evaluation sets, in the formats their authors publish.

- COCO Karpathy split: Karpathy's ``dataset_coco.json`` (``images[].{filepath, filename, split,
  sentences[].raw}``) or the COCO-captions-format ``coco_test_karpathy.json`` CLIP_benchmark
  uses (``images[].{id, file_name}``, ``annotations[].{image_id, caption}``).
- VQA v1 multiple choice: ``MultipleChoice_<data>_<subtype>_questions.json``
  (``questions[].{question_id, image_id, question, multiple_choices}``), images named
  ``COCO_val2014_<id:012d>.jpg`` (real) or ``abstract_v002_val2015_<id:012d>.png`` (abstract).

Images are only located here; an image that is missing or cannot be decoded is an error naming
the file when it is read (never a silent skip: a partial set would change the metric).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COCO_PUBLISHED_AT = (
    "https://cs.stanford.edu/people/karpathy/deepimagesent/ (dataset_coco.json), "
    "https://cocodataset.org/#download (val2014 images)"
)
VQA_PUBLISHED_AT = "https://visualqa.org/vqa_v1_download.html"
VQA_IMAGE_NAMES = {
    "mscoco": "COCO_{subtype}_{image_id:012d}.jpg",
    "abstract_v002": "abstract_v002_{subtype}_{image_id:012d}.png",
}


@dataclass(frozen=True)
class RetrievalSet:
    """Images and their captions: caption i belongs to image ``text_to_image[i]``."""

    image_paths: list[Path]
    captions: list[str]
    text_to_image: list[int]


@dataclass(frozen=True)
class MultipleChoiceQuestion:
    question_id: int
    image_index: int  # index into MultipleChoiceSet.image_paths
    question: str
    choices: list[str]


@dataclass(frozen=True)
class MultipleChoiceSet:
    image_paths: list[Path]
    questions: list[MultipleChoiceQuestion]


def _read_json(path: str | os.PathLike[str], published_at: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation file not found: {path} (published at {published_at})")
    return json.loads(path.read_text())


def load_coco_retrieval(
    annotation_json: str | os.PathLike[str],
    images_root: str | os.PathLike[str],
    split: str = "test",
) -> RetrievalSet:
    """The Karpathy ``split`` of COCO from either published annotation format."""
    data = _read_json(annotation_json, COCO_PUBLISHED_AT)
    root = Path(images_root)
    if "annotations" in data:  # COCO-captions format (already one split)
        index = {image["id"]: i for i, image in enumerate(data["images"])}
        paths = [root / image["file_name"] for image in data["images"]]
        captions = [ann["caption"].strip() for ann in data["annotations"]]
        owners = [index[ann["image_id"]] for ann in data["annotations"]]
        return RetrievalSet(paths, captions, owners)
    images = [image for image in data["images"] if image["split"] == split]
    if not images:
        raise ValueError(f"{annotation_json}: no image in split {split!r}")
    paths, captions, owners = [], [], []
    for i, image in enumerate(images):
        paths.append(root / image.get("filepath", "") / image["filename"])
        for sentence in image["sentences"]:
            captions.append(sentence["raw"].strip())
            owners.append(i)
    return RetrievalSet(paths, captions, owners)


def load_vqa_multiple_choice(
    questions_json: str | os.PathLike[str], images_root: str | os.PathLike[str]
) -> MultipleChoiceSet:
    """VQA v1 multiple-choice questions with the path of each question's image."""
    data = _read_json(questions_json, VQA_PUBLISHED_AT)
    try:
        pattern = VQA_IMAGE_NAMES[data["data_type"]]
    except KeyError as err:
        raise ValueError(
            f"{questions_json}: unknown data_type {data.get('data_type')!r}; "
            f"expected one of {sorted(VQA_IMAGE_NAMES)}"
        ) from err
    root = Path(images_root)
    image_index: dict[int, int] = {}
    paths: list[Path] = []
    questions = []
    for record in data["questions"]:
        image_id = record["image_id"]
        if image_id not in image_index:
            image_index[image_id] = len(paths)
            paths.append(root / pattern.format(subtype=data["data_subtype"], image_id=image_id))
        if "multiple_choices" not in record:
            raise ValueError(
                f"{questions_json}: question {record['question_id']} has no multiple_choices "
                "(use the MultipleChoice_* questions file)"
            )
        questions.append(
            MultipleChoiceQuestion(
                question_id=record["question_id"],
                image_index=image_index[image_id],
                question=record["question"],
                choices=list(record["multiple_choices"]),
            )
        )
    return MultipleChoiceSet(paths, questions)
