"""Writing the world in the formats the pipeline reads, each set beside its scene records.

:func:`write_world` lays the world out as the demo lays out its data (``resources/demo/``):

- ``cc3m/world.tsv`` (caption TAB url, no header, as ``Train_GCC-training.tsv``) with
  ``cc3m/images/`` and ``cc3m/scenes.jsonl``: the training pool. Each good row's caption is a
  PARTIAL alt-text (:func:`~dialogclip.world.language.partial_caption`) and its url a relative
  ``file:`` URL; among them sit, at the demo's row positions, the rows a real crawl meets (dead
  links, a web page served as an image, a truncated file, a disallowed scheme, malformed lines:
  :data:`SPECIAL_ROWS`), and a few images come as grayscale or transparent PNG, WebP or an
  oversized JPEG (:data:`ODD_ENCODINGS`).
- ``eval/coco/dataset_coco.json`` (Karpathy's format; the test split again as CLIP_benchmark's
  ``coco_test_karpathy.json``) with ``eval/coco/val2014/COCO_val2014_*.jpg`` and
  ``eval/coco/scenes.jsonl``: retrieval, five COMPLETE captions per image.
- VQA v1 multiple choice, real (``MultipleChoice_mscoco_val2014_questions.json``,
  ``mscoco_val2014_annotations.json``, images with COCO val2014 names in ``eval/coco/val2014``)
  and abstract scenes (``MultipleChoice_abstract_v002_val2015_questions.json``,
  ``abstract_v002_val2015_annotations.json``, ``eval/scene_img_abstract_v002_val2015/*.png``),
  each with its ``*_scenes.jsonl``: 18 candidates and ten annotators' answers per question.

Every record line is a scene record (:meth:`~dialogclip.world.scenes.Scene.to_record`) plus the
file's own join keys (the TSV row ``key``, the COCO / VQA ``image_id``) and the image's path
relative to the records file. Everything is seeded: a rebuild writes the same bytes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from dialogclip.core.io import atomic_path, write_json_atomic
from dialogclip.world import language
from dialogclip.world.scenes import draw_scene, render, scene_rng

log = logging.getLogger(__name__)

KEY_DIGITS = 9  # the pipeline's image key: the TSV row position, 9 digits
MANIFEST = "world.json"  # beside the sets: the seed and sizes write_world was given

# Rows that are not plain good images, by row position (0-based; line = position + 1): the
# cases a real crawl meets, spread over the first 67 rows (the demo's first shard meets them all).
SPECIAL_ROWS: dict[int, bytes] = {
    3: b"a picture that no longer exists\tfile:images/missing-0001.jpg\n",
    9: b"a caption without its url\n",  # one column
    14: b"a web page served instead of a picture\tfile:images/broken-not-an-image.jpg\n",
    21: b"\tfile:images/0000.jpg\n",  # empty caption
    37: b"a photo that stops halfway\tfile:images/broken-truncated.jpg\n",
    42: "a caf\u00e9 table in the sun\tfile:images/0001.jpg\n".encode("latin-1"),  # not UTF-8
    50: b"an image on an ftp server\tftp://example.invalid/image.jpg\n",
    55: b"too\tmany\tcolumns\n",
    64: b"a caption whose url is empty\t\n",
    66: b"another vanished picture\tfile:images/missing-0002.jpg\n",
}
# Good images stored in other formats and modes the ingestion must normalise (by image number).
ODD_ENCODINGS = {5: "png-grey", 11: "png-alpha", 17: "webp", 23: "jpeg-large"}
JPEG_QUALITY = 92
VQA_FILES = {
    "vqa_real": ("mscoco", "val2014", "coco/val2014", "COCO_val2014_{image_id:012d}.jpg"),
    "vqa_abstract": (
        "abstract_v002",
        "val2015",
        "scene_img_abstract_v002_val2015",
        "abstract_v002_val2015_{image_id:012d}.png",
    ),
}
COCO_IMAGE = "COCO_val2014_{image_id:012d}.jpg"
VQA_REAL_FIRST_ID = 500_000  # VQA's real images share COCO val2014's folder, not its ids


@dataclass(frozen=True)
class WorldSizes:
    """How many scenes each set has (the world seed decides which)."""

    cc3m: int = 3000  # good rows of the TSV (the special rows come on top)
    coco_test: int = 300  # Karpathy test split: the retrieval set
    coco_other: int = 20  # train/val entries of dataset_coco.json (read past by the evaluation)
    vqa_real: int = 300  # images; three questions each
    vqa_abstract: int = 300
    questions_per_image: int = 3


def encode_image(image: Image.Image, encoding: str) -> tuple[str, bytes]:
    """(file suffix, bytes) of ``image`` in one of the encodings a crawl meets."""
    buffer = io.BytesIO()
    if encoding == "png-grey":  # stored as RGB by the ingestion (and grey to every model)
        image.convert("L").save(buffer, "PNG")
        return ".png", buffer.getvalue()
    if encoding == "png-alpha":  # matted onto white by the ingestion
        rgba = image.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(image.size))
        rgba.save(buffer, "PNG")
        return ".png", buffer.getvalue()
    if encoding == "webp":
        image.save(buffer, "WEBP", quality=90)
        return ".webp", buffer.getvalue()
    if encoding == "jpeg-large":  # larger than the ingestion's image_size: downscaled there
        image.resize((640, 640), Image.Resampling.NEAREST).save(buffer, "JPEG", quality=85)
        return ".jpg", buffer.getvalue()
    if encoding == "png":
        image.save(buffer, "PNG")
        return ".png", buffer.getvalue()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    return ".jpg", buffer.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _write_lines(path: Path, records: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True) + "\n")


def write_cc3m(out_dir: Path, seed: int, n_good: int, tsv_name: str = "world.tsv") -> Path:
    """The CC3M-format TSV, its images and scene records under ``out_dir`` (see module doc)."""
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    for stale in images.iterdir():
        stale.unlink()
    n_rows = n_good + len(SPECIAL_ROWS)
    lines: list[bytes] = []
    records = []
    first_jpeg = b""
    number = 0
    for row in range(n_rows):
        if row in SPECIAL_ROWS:
            lines.append(SPECIAL_ROWS[row])
            continue
        scene = draw_scene(seed, "cc3m", number)
        encoding = ODD_ENCODINGS.get(number, "jpeg")
        suffix, data = encode_image(render(scene), encoding)
        name = f"{number:04d}{suffix}"
        _write_bytes(images / name, data)
        if encoding == "jpeg":
            first_jpeg = first_jpeg or data
        caption = language.partial_caption(scene, scene_rng(seed, "cc3m", number, "caption"))
        lines.append(f"{caption}\tfile:images/{name}\n".encode())
        records.append(
            {
                **scene.to_record(),
                "key": f"{row:0{KEY_DIGITS}d}",
                "image": f"images/{name}",
                "encoding": encoding,
                "caption": caption,
            }
        )
        number += 1
    _write_bytes(images / "broken-not-an-image.jpg", b"<html><body>Not found</body></html>\n")
    _write_bytes(images / "broken-truncated.jpg", first_jpeg[: len(first_jpeg) // 2])
    tsv = out_dir / tsv_name
    _write_bytes(tsv, b"".join(lines))
    _write_lines(out_dir / "scenes.jsonl", records)
    log.info("CC3M-format TSV: %d rows (%d images) in %s", n_rows, n_good, tsv)
    return tsv


def write_coco(out_dir: Path, seed: int, n_test: int, n_other: int) -> Path:
    """Karpathy's dataset_coco.json (+ coco_test_karpathy.json), images and records."""
    entries, records = [], []
    sentence_id = 0
    for index in range(n_test + n_other):
        scene = draw_scene(seed, "coco", index)
        image_id = index + 1
        name = COCO_IMAGE.format(image_id=image_id)
        _write_bytes(out_dir / "val2014" / name, encode_image(render(scene), "jpeg")[1])
        captions = language.complete_captions(scene)
        # The test split first (the retrieval set), then a few train / val entries.
        split = "test" if index < n_test else ("train", "val", "restval")[index % 3]
        sentences = []
        for caption in captions:
            tokens = caption.replace(",", " ").replace(":", " ").split()
            sentences.append(
                {"raw": caption, "tokens": tokens, "imgid": index, "sentid": sentence_id}
            )
            sentence_id += 1
        entries.append(
            {
                "filepath": "val2014",
                "filename": name,
                "imgid": index,
                "cocoid": image_id,
                "split": split,
                "sentids": [s["sentid"] for s in sentences],
                "sentences": sentences,
            }
        )
        records.append(
            {
                **scene.to_record(),
                "image_id": image_id,
                "image": f"val2014/{name}",
                "coco_split": split,
                "captions": captions,
            }
        )
    # compact, as the published files (and small enough to keep in git)
    write_json_atomic(
        {"images": entries, "dataset": "coco"}, out_dir / "dataset_coco.json", indent=None
    )
    test = [entry for entry in entries if entry["split"] == "test"]
    write_json_atomic(
        {
            "images": [{"id": e["cocoid"], "file_name": e["filename"]} for e in test],
            "annotations": [
                {"image_id": e["cocoid"], "id": s["sentid"], "caption": s["raw"]}
                for e in test
                for s in e["sentences"]
            ],
        },
        out_dir / "coco_test_karpathy.json",
        indent=None,
    )
    _write_lines(out_dir / "scenes.jsonl", records)
    log.info("COCO Karpathy-format retrieval set: %d test images in %s", n_test, out_dir)
    return out_dir / "dataset_coco.json"


def write_vqa(
    eval_dir: Path, seed: int, dataset: str, n_images: int, per_image: int
) -> tuple[Path, Path]:
    """A VQA v1 multiple-choice set (questions, annotations, images, records)."""
    data_type, subtype, folder, pattern = VQA_FILES[dataset]
    first_id = VQA_REAL_FIRST_ID if dataset == "vqa_real" else 1
    encoding = "jpeg" if dataset == "vqa_real" else "png"
    # First every question and its annotators (the popular answers are the set's own), then
    # the candidates of each.
    asked: list[tuple[int, int, language.VqaQuestion, list[str], random.Random]] = []
    records = []
    for index in range(n_images):
        scene = draw_scene(seed, dataset, index)
        image_id = first_id + index
        name = pattern.format(image_id=image_id)
        _write_bytes(eval_dir / folder / name, encode_image(render(scene), encoding)[1])
        rng = scene_rng(seed, dataset, index, "questions")
        questions_of_scene = language.vqa_questions(scene, rng, per_image)
        for number, question in enumerate(questions_of_scene):
            humans = language.human_answers(question, rng)
            asked.append((image_id, image_id * 10 + number, question, humans, rng))
        records.append(
            {
                **scene.to_record(),
                "image_id": image_id,
                "image": f"{folder}/{name}",
                "questions": [
                    {"question_id": image_id * 10 + n, "kind": q.kind, "answer": q.answer}
                    for n, q in enumerate(questions_of_scene)
                ],
            }
        )
    popular = language.popular_answers([humans for *_, humans, _ in asked])
    true_answers = [question.answer for _, _, question, _, _ in asked]
    questions, annotations = [], []
    for image_id, question_id, question, humans, rng in asked:
        choices = language.multiple_choices(question, rng, humans, popular, true_answers)
        questions.append(
            {
                "question_id": question_id,
                "image_id": image_id,
                "question": question.question,
                "multiple_choices": choices,
            }
        )
        annotations.append(
            {
                "question_id": question_id,
                "image_id": image_id,
                "question_type": question.question_type,
                "answer_type": question.answer_type,
                "multiple_choice_answer": language.majority(humans),
                "answers": [
                    {
                        "answer": answer,
                        "answer_confidence": "yes" if answer == question.answer else "maybe",
                        "answer_id": i + 1,
                    }
                    for i, answer in enumerate(humans)
                ],
            }
        )
    header = {"info": {}, "license": {}, "data_type": data_type, "data_subtype": subtype}
    questions_json = eval_dir / f"MultipleChoice_{data_type}_{subtype}_questions.json"
    annotations_json = eval_dir / f"{data_type}_{subtype}_annotations.json"
    write_json_atomic(
        {**header, "task_type": "Multiple-Choice", "questions": questions},
        questions_json,
        indent=None,
    )
    write_json_atomic({**header, "annotations": annotations}, annotations_json, indent=None)
    _write_lines(eval_dir / f"{dataset}_scenes.jsonl", records)
    log.info("VQA v1 multiple choice (%s): %d questions in %s", dataset, len(questions), eval_dir)
    return questions_json, annotations_json


def write_world(out_dir: str | os.PathLike[str], seed: int, sizes: WorldSizes) -> dict[str, str]:
    """Write every set of the world under ``out_dir`` (layout in the module docstring) and
    ``world.json``, the seed and sizes that wrote them (what a rebuild needs); returns the
    config paths (relative to ``out_dir``) the workflow reads them from."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"seed": seed, "sizes": asdict(sizes)}, out_dir / MANIFEST)
    tsv = write_cc3m(out_dir / "cc3m", seed, sizes.cc3m)
    eval_dir = out_dir / "eval"
    write_coco(eval_dir / "coco", seed, sizes.coco_test, sizes.coco_other)
    for dataset in VQA_FILES:
        n_images = sizes.vqa_real if dataset == "vqa_real" else sizes.vqa_abstract
        write_vqa(eval_dir, seed, dataset, n_images, sizes.questions_per_image)
    return {"cc3m.tsv": str(tsv.relative_to(out_dir))}
