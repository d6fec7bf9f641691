"""Build the demo's miniature evaluation sets in the official file formats (seeded, offline).

COCO Karpathy (`dataset_coco.json` + `val2014/COCO_val2014_*.jpg`; its test split also as
CLIP_benchmark's `coco_test_karpathy.json`), VQA v1 real
(`MultipleChoice_mscoco_val2014_questions.json`, `mscoco_val2014_annotations.json`) and VQA v1
abstract scenes (`MultipleChoice_abstract_v002_val2015_questions.json`,
`abstract_v002_val2015_annotations.json`, `scene_img_abstract_v002_val2015/*.png`). Images are
flat colour fields with a shape, so captions and answers are true of them. Run from this folder:
`python make_fixtures.py` (the outputs are committed; rerunning gives the same bytes).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (40, 60, 220),
    "yellow": (230, 210, 40),
}
SHAPES = ("square", "circle")
ANSWER_POOL = ["red", "green", "blue", "yellow", "yes", "no", "0", "1", "2", "3", "square",
               "circle", "cat", "dog", "white", "black", "4", "5"]  # fmt: skip


def draw(path: Path, color: str, shape: str, count: int, size: int = 48) -> None:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    pen = ImageDraw.Draw(image)
    for i in range(count):
        box = (4 + 14 * i, 16, 16 + 14 * i, 28)
        (pen.rectangle if shape == "square" else pen.ellipse)(box, fill=COLORS[color])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def scenes(rng: random.Random, n: int) -> list[tuple[str, str, int]]:
    return [(rng.choice(list(COLORS)), rng.choice(SHAPES), rng.randint(1, 3)) for _ in range(n)]


def coco(rng: random.Random) -> None:
    images = []
    for image_id, (color, shape, count) in enumerate(scenes(rng, 10), start=1):
        name = f"COCO_val2014_{image_id:012d}.jpg"
        draw(HERE / "coco" / "val2014" / name, color, shape, count)
        sentences = [
            f"{count} {color} {shape}{'s' if count > 1 else ''} on a white background.",
            f"A picture of {color} {shape}s.",
            f"Some {color} shapes.",
            f"{shape.capitalize()}s coloured {color}.",
            f"An image with {count} {shape}{'s' if count > 1 else ''}.",
        ]
        images.append({
            "filepath": "val2014", "filename": name, "imgid": image_id, "cocoid": image_id,
            "split": "test" if image_id <= 8 else "train",
            "sentences": [{"raw": s, "tokens": s.lower().strip(".").split()} for s in sentences],
        })  # fmt: skip
    (HERE / "coco" / "dataset_coco.json").write_text(
        json.dumps({"images": images, "dataset": "coco"})
    )
    coco_captions_format(images)


def coco_captions_format(karpathy_images: list[dict]) -> None:
    """The test split again as CLIP_benchmark's coco_test_karpathy.json (COCO captions format;
    file names relative to val2014/)."""
    test = [image for image in karpathy_images if image["split"] == "test"]
    images = [{"id": image["cocoid"], "file_name": image["filename"]} for image in test]
    annotations = [
        {"image_id": image["cocoid"], "id": 10 * image["cocoid"] + i, "caption": sentence["raw"]}
        for image in test
        for i, sentence in enumerate(image["sentences"])
    ]
    (HERE / "coco" / "coco_test_karpathy.json").write_text(
        json.dumps({"images": images, "annotations": annotations})
    )


def vqa(rng: random.Random, data_type: str, subtype: str, folder: str, pattern: str) -> None:
    questions, annotations = [], []
    qid = 1
    for image_id, (color, shape, count) in enumerate(scenes(rng, 4), start=1):
        draw(HERE / folder / pattern.format(image_id=image_id), color, shape, count)
        for text, answer, qtype, atype in [
            ("What color are the shapes?", color, "what color are the", "other"),
            (f"How many {shape}s are there?", str(count), "how many", "number"),
            (f"Is there a {shape}?", "yes", "is there a", "yes/no"),
        ]:
            choices = [*(a for a in ANSWER_POOL if a != answer), answer]  # 18, as in VQA v1
            rng.shuffle(choices)
            humans = [answer] * 8 + [rng.choice(ANSWER_POOL) for _ in range(2)]
            questions.append({"question_id": qid, "image_id": image_id, "question": text,
                              "multiple_choices": choices})  # fmt: skip
            annotations.append({
                "question_id": qid, "image_id": image_id, "question_type": qtype,
                "answer_type": atype, "multiple_choice_answer": answer,
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                            for i, a in enumerate(humans)],
            })  # fmt: skip
            qid += 1
    header = {"info": {}, "license": {}, "data_type": data_type, "data_subtype": subtype}
    (HERE / f"MultipleChoice_{data_type}_{subtype}_questions.json").write_text(
        json.dumps({**header, "task_type": "Multiple-Choice", "questions": questions})
    )
    (HERE / f"{data_type}_{subtype}_annotations.json").write_text(
        json.dumps({**header, "annotations": annotations})
    )


def main() -> None:
    rng = random.Random(0)
    coco(rng)
    vqa(rng, "mscoco", "val2014", "coco/val2014", "COCO_val2014_{image_id:012d}.jpg")
    vqa(rng, "abstract_v002", "val2015", "scene_img_abstract_v002_val2015",
        "abstract_v002_val2015_{image_id:012d}.png")  # fmt: skip


if __name__ == "__main__":
    main()
