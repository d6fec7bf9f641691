"""Official-format readers, image embedding errors and VQA multiple-choice prediction."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from dialogclip.evaluate.datasets import (
    check_dataset_files,
    load_retrieval_set,
    load_vqa_multiple_choice,
)
from dialogclip.evaluate.embedding import (
    EvaluationImageError,
    candidate_texts,
    embed_images,
    encode_unique,
    load_image_embeddings,
    predict_multiple_choice,
    save_image_embeddings,
)
from dialogclip.models.openclip import ClipSpec, load_clip, make_tiny_clip
from dialogclip.models.text_encoders import TowerTextEncoder


def _image(path: Path, color: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), color).save(path)
    return path


def test_karpathy_split_keeps_only_the_split_and_all_its_captions(tmp_path: Path) -> None:
    data = {
        "images": [
            {"filepath": "val2014", "filename": "a.jpg", "split": "test",
             "sentences": [{"raw": " A dog. "}, {"raw": "A puppy."}]},
            {"filepath": "val2014", "filename": "b.jpg", "split": "train",
             "sentences": [{"raw": "Train only."}]},
            {"filepath": "val2014", "filename": "c.jpg", "split": "test",
             "sentences": [{"raw": "A cat."}]},
        ]
    }  # fmt: skip
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    result = load_retrieval_set(tmp_path / "dataset_coco.json", tmp_path / "coco")
    assert result.image_paths == [tmp_path / "coco/val2014/a.jpg", tmp_path / "coco/val2014/c.jpg"]
    assert result.captions == ["A dog.", "A puppy.", "A cat."]
    assert result.text_to_image == [0, 0, 1]


def test_flickr30k_karpathy_file_reads_its_test_split_from_one_folder(tmp_path: Path) -> None:
    data = {
        "images": [
            {"filename": "1000092795.jpg", "split": "test", "sentences": [{"raw": "Two men."}]},
            {"filename": "10002456.jpg", "split": "train", "sentences": [{"raw": "Train."}]},
            {"filename": "1000268201.jpg", "split": "test", "sentences": [{"raw": "A girl."}]},
        ],
        "dataset": "flickr30k",
    }
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(data))
    images = tmp_path / "flickr30k-images"
    result = load_retrieval_set(tmp_path / "dataset_flickr30k.json", images, "test", "flickr30k")
    assert result.image_paths == [images / "1000092795.jpg", images / "1000268201.jpg"]
    assert (result.captions, result.text_to_image) == (["Two men.", "A girl."], [0, 1])
    # Missing, it is named with where Flickr30k is published (not COCO).
    with pytest.raises(FileNotFoundError, match=r"absent\.json.*dataset_flickr30k.*illinois"):
        load_retrieval_set(tmp_path / "absent.json", images, "test", "flickr30k")
    with pytest.raises(FileNotFoundError, match=r"evaluate\.flickr30k\.images.*illinois"):
        check_dataset_files(
            "flickr30k", {"annotations": str(tmp_path / "dataset_flickr30k.json"), "images": "no"}
        )


def test_coco_captions_format_is_read_as_published(tmp_path: Path) -> None:
    data = {
        "images": [{"id": 7, "file_name": "x.jpg"}, {"id": 3, "file_name": "y.jpg"}],
        "annotations": [
            {"image_id": 3, "id": 1, "caption": "y one"},
            {"image_id": 7, "id": 2, "caption": "x one"},
            {"image_id": 3, "id": 3, "caption": "y two"},
        ],
    }
    (tmp_path / "coco_test_karpathy.json").write_text(json.dumps(data))
    result = load_retrieval_set(tmp_path / "coco_test_karpathy.json", tmp_path)
    # As torchvision's CocoCaptions serves it to CLIP_benchmark: images by id, captions grouped.
    assert result.image_paths == [tmp_path / "y.jpg", tmp_path / "x.jpg"]
    assert list(zip(result.captions, result.text_to_image, strict=True)) == [
        ("y one", 0),
        ("y two", 0),
        ("x one", 1),
    ]


def test_missing_annotation_file_names_it_and_where_it_is_published(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"dataset_coco\.json.*karpathy"):
        load_retrieval_set(tmp_path / "dataset_coco.json", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"visualqa\.org"):
        load_vqa_multiple_choice(tmp_path / "MultipleChoice_x.json", tmp_path)


def _vqa_questions(tmp_path: Path, data_type: str, subtype: str) -> Path:
    choices = ["red", "blue", "yes", "no"]
    data = {
        "data_type": data_type,
        "data_subtype": subtype,
        "task_type": "Multiple-Choice",
        "questions": [
            {
                "question_id": qid,
                "image_id": image_id,
                "question": text,
                "multiple_choices": choices,
            }
            for qid, image_id, text in [
                (1, 42, "What color?"),
                (2, 5, "Is it red?"),
                (3, 42, "Is it red?"),
            ]
        ],
    }
    path = tmp_path / f"MultipleChoice_{data_type}_{subtype}_questions.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("data_type", "subtype", "first_image"),
    [
        ("mscoco", "val2014", "COCO_val2014_000000000042.jpg"),
        ("abstract_v002", "val2015", "abstract_v002_val2015_000000000042.png"),
    ],
)
def test_vqa_questions_locate_their_images(tmp_path, data_type, subtype, first_image) -> None:
    mc = load_vqa_multiple_choice(_vqa_questions(tmp_path, data_type, subtype), tmp_path / "img")
    assert mc.image_paths[0] == tmp_path / "img" / first_image
    assert len(mc.image_paths) == 2  # two distinct images, one shared by questions 1 and 3
    assert [q.image_index for q in mc.questions] == [0, 1, 0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny.safetensors", seed=0)
    return load_clip(ClipSpec("tiny-clip", str(path)))


def test_missing_or_undecodable_images_are_errors_naming_the_file(tmp_path, tiny) -> None:
    good = _image(tmp_path / "good.png", (200, 10, 10))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(EvaluationImageError, match=r"missing: .*absent\.png"):
        embed_images([good, tmp_path / "absent.png"], tiny.model, tiny.preprocess)
    with pytest.raises(EvaluationImageError, match=r"cannot be decoded: .*broken\.jpg"):
        embed_images([good, broken], tiny.model, tiny.preprocess)


def test_multiple_choice_with_dedup_equals_naive_per_question_encoding(tmp_path, tiny) -> None:
    mc = load_vqa_multiple_choice(_vqa_questions(tmp_path, "mscoco", "val2014"), tmp_path / "img")
    for path, color in zip(mc.image_paths, [(220, 20, 20), (20, 20, 220)], strict=True):
        _image(path, color)
    image_emb = embed_images(mc.image_paths, tiny.model, tiny.preprocess, batch_size=1)
    assert image_emb.shape == (2, 32)
    encoder = TowerTextEncoder(tiny.model, tiny.tokenizer)
    got = predict_multiple_choice(image_emb, mc, encoder)
    naive = []
    for question, texts in zip(mc.questions, candidate_texts(mc), strict=True):
        scores = [float(encoder.encode([t])[0] @ image_emb[question.image_index]) for t in texts]
        naive.append(
            {
                "question_id": question.question_id,
                "answer": question.choices[scores.index(max(scores))],
            }
        )
    assert got == naive
    assert candidate_texts(mc)[0][0] == "What color? red"


def test_both_coco_formats_of_the_demo_fixtures_give_the_same_set(repo_root) -> None:
    coco = repo_root / "resources" / "demo" / "eval" / "coco"
    karpathy = load_retrieval_set(coco / "dataset_coco.json", coco)
    captions_format = load_retrieval_set(coco / "coco_test_karpathy.json", coco / "val2014")
    assert karpathy == captions_format
    # the test split of Karpathy's file, five captions an image
    images = json.loads((coco / "dataset_coco.json").read_text())["images"]
    n_test = sum(image["split"] == "test" for image in images)
    assert (len(karpathy.image_paths), len(karpathy.captions)) == (n_test, 5 * n_test) != (0, 0)
    assert all(path.is_file() for path in karpathy.image_paths)


def test_missing_dataset_files_name_themselves_and_where_published(repo_root, tmp_path) -> None:
    eval_dir = repo_root / "resources" / "demo" / "eval"
    files = {
        "questions": str(eval_dir / "MultipleChoice_mscoco_val2014_questions.json"),
        "annotations": str(eval_dir / "mscoco_val2014_annotations.json"),
        "images": str(eval_dir / "coco" / "val2014"),
    }
    check_dataset_files("vqa_real", files)
    with pytest.raises(FileNotFoundError, match=r"folder not found: .*nowhere.*visualqa\.org"):
        check_dataset_files("vqa_real", {**files, "images": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match=r"absent\.json \(evaluate\.coco\.annotations\)"):
        check_dataset_files("coco", {"annotations": str(tmp_path / "absent.json"), "images": "."})


def test_image_embedding_cache_is_tied_to_its_image_set(tmp_path) -> None:
    paths = [tmp_path / f"{i}.jpg" for i in range(3)]
    emb = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    save_image_embeddings(emb, paths, tmp_path / "emb.safetensors", {"dataset": "coco"})
    assert torch.equal(load_image_embeddings(tmp_path / "emb.safetensors", paths), emb)
    for other in (paths[:2], [paths[1], paths[0], paths[2]]):
        with pytest.raises(ValueError, match="another image set"):
            load_image_embeddings(tmp_path / "emb.safetensors", other)


class _CountingEncoder:
    def __init__(self, inner) -> None:
        self.inner, self.seen = inner, []

    def encode(self, texts):
        self.seen.append(list(texts))
        return self.inner.encode(texts)


def test_texts_are_encoded_once_each(tiny) -> None:
    texts = ["a cat", "a dog", "a cat", "two cats", "a dog"]
    encoder = _CountingEncoder(TowerTextEncoder(tiny.model, tiny.tokenizer, batch_size=2))
    got = encode_unique(encoder, texts)
    assert sorted(encoder.seen[0]) == ["a cat", "a dog", "two cats"]
    direct = TowerTextEncoder(tiny.model, tiny.tokenizer, batch_size=2).encode(texts)
    assert torch.allclose(got, direct, atol=1e-6)
