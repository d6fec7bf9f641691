"""Readers for the evaluation sets, in the formats their authors publish.

- COCO Karpathy split: Karpathy's ``dataset_coco.json`` (``images[].{filepath, filename, split,
  sentences[].raw}``; images in file order) or the COCO-captions-format
  ``coco_test_karpathy.json`` CLIP_benchmark uses (``images[].{id, file_name}``,
  ``annotations[].{image_id, caption}``), read in the order torchvision's ``CocoCaptions`` gives
  CLIP_benchmark: images by ascending id, each image's captions in file order.
- Flickr30k Karpathy split: Karpathy's ``dataset_flickr30k.json``, the same format as
  ``dataset_coco.json`` (no ``filepath``: the images lie in one folder); images in file order.
- VQA v1 multiple choice: ``MultipleChoice_<data>_<subtype>_questions.json``
  (``questions[].{question_id, image_id, question, multiple_choices}``), images named
  ``COCO_val2014_<id:012d>.jpg`` (real) or ``abstract_v002_val2015_<id:012d>.png`` (abstract).

A missing annotation file is an error naming it and where it is published. Images are only
located here; one that is missing or cannot be decoded is an error naming the file when it is
read (never a silent skip: a partial set would change the metric).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dialogclip.core.io import read_json

COCO_PUBLISHED_AT = (
    "Karpathy's dataset_coco.json: https://cs.stanford.edu/people/karpathy/deepimagesent/ "
    "(caption_datasets.zip); CLIP_benchmark's coco_test_karpathy.json: "
    "https://github.com/mehdidc/retrieval_annotations/releases/download/1.0.0/"
    "coco_test_karpathy.json; val2014 images: https://cocodataset.org/#download"
)
FLICKR_PUBLISHED_AT = (
    "Karpathy's dataset_flickr30k.json: https://cs.stanford.edu/people/karpathy/deepimagesent/ "
    "(caption_datasets.zip); images (flickr30k-images/): the request form at "
    "https://shannon.cs.illinois.edu/DenotationGraph/"
)
RETRIEVAL_PUBLISHED_AT = {"coco": COCO_PUBLISHED_AT, "flickr30k": FLICKR_PUBLISHED_AT}
VQA_PUBLISHED_AT = {
    "vqa_real": "https://visualqa.org/vqa_v1_download.html (questions and annotations: "
    "'Real Images'; images: COCO val2014 from https://cocodataset.org/#download)",
    "vqa_abstract": "https://visualqa.org/vqa_v1_download.html ('Abstract Scenes': questions, "
    "annotations and the val2015 scenes, abstract_v002_val2015_*.png)",
}
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
    image_paths: list[Path]  # each image once, in order of first use by a question
    questions: list[MultipleChoiceQuestion]


def published_at(dataset: str) -> str:
    """Where the files of ``dataset`` (a name of ``EVAL_DATASETS``) are published."""
    return {**RETRIEVAL_PUBLISHED_AT, **VQA_PUBLISHED_AT}[dataset]


def check_dataset_files(dataset: str, files: Mapping[str, Any]) -> None:
    """Raise FileNotFoundError naming the first missing file or folder of ``dataset`` and where
    it is published. ``files``: the config's ``evaluate.<dataset>`` section."""
    wanted = [("annotations", False), ("images", True)]
    if dataset not in RETRIEVAL_PUBLISHED_AT:
        wanted.insert(0, ("questions", False))
    for key, is_folder in wanted:
        value = files.get(key)
        if value is None:
            raise FileNotFoundError(f"evaluate.{dataset}.{key} is not set")
        path = Path(value)
        if not (path.is_dir() if is_folder else path.is_file()):
            kind = "folder" if is_folder else "file"
            raise FileNotFoundError(
                f"evaluation {kind} not found: {path} (evaluate.{dataset}.{key}); "
                f"published at {published_at(dataset)}"
            )


def _read_json(path: str | os.PathLike[str], dataset: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"evaluation file not found: {path} (published at {published_at(dataset)})"
        )
    return read_json(path, f"{dataset} JSON", hint=f"download it again ({published_at(dataset)})")


def load_retrieval_set(
    annotation_json: str | os.PathLike[str],
    images_root: str | os.PathLike[str],
    split: str = "test",
    dataset: str = "coco",
) -> RetrievalSet:
    """The Karpathy ``split`` of a retrieval set (``coco``, ``flickr30k``) from a published
    annotation format: Karpathy's split file, or for COCO the COCO-captions format.

    ``images_root``: for ``dataset_coco.json`` the folder holding ``val2014/`` (its
    ``filepath``); for the COCO-captions format the folder of the images themselves, as
    CLIP_benchmark's ``root/val2014``; for ``dataset_flickr30k.json`` the images' folder.
    """
    data = _read_json(annotation_json, dataset)
    if "annotations" in data:
        return _coco_captions_format(data, Path(images_root), annotation_json)
    return _karpathy_format(data, Path(images_root), split, annotation_json)


def _coco_captions_format(data: dict, root: Path, source: Any) -> RetrievalSet:
    captions_of: dict[int, list[str]] = defaultdict(list)
    for ann in data["annotations"]:
        captions_of[ann["image_id"]].append(ann["caption"].strip())
    images = sorted(data["images"], key=lambda image: image["id"])
    unknown = set(captions_of) - {image["id"] for image in images}
    if unknown:
        raise ValueError(f"{source}: captions for unknown image ids, e.g. {sorted(unknown)[:5]}")
    paths, captions, owners = [], [], []
    for i, image in enumerate(images):
        paths.append(root / image["file_name"])
        captions += captions_of[image["id"]]
        owners += [i] * len(captions_of[image["id"]])
    return RetrievalSet(paths, captions, owners)


def _karpathy_format(data: dict, root: Path, split: str, source: Any) -> RetrievalSet:
    images = [image for image in data["images"] if image["split"] == split]
    if not images:
        raise ValueError(f"{source}: no image in split {split!r}")
    paths, captions, owners = [], [], []
    for i, image in enumerate(images):
        paths.append(root / image.get("filepath", "") / image["filename"])
        for sentence in image["sentences"]:
            captions.append(sentence["raw"].strip())
            owners.append(i)
    return RetrievalSet(paths, captions, owners)


def load_vqa_multiple_choice(
    questions_json: str | os.PathLike[str],
    images_root: str | os.PathLike[str],
    dataset: str = "vqa_real",
) -> MultipleChoiceSet:
    """VQA v1 multiple-choice questions with the path of each question's image."""
    data = _read_json(questions_json, dataset)
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


def image_paths_of(dataset: str, files: Mapping[str, Any]) -> list[Path]:
    """The images of an evaluation set, in the order its image embeddings are stored."""
    if dataset in RETRIEVAL_PUBLISHED_AT:
        return load_retrieval_set(
            files["annotations"], files["images"], files.get("split", "test"), dataset
        ).image_paths
    return load_vqa_multiple_choice(files["questions"], files["images"], dataset).image_paths
