"""The world's files, read back by the pipeline's own readers (ingest TSV, evaluate.datasets,
the official VQA scoring)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest

from dialogclip.cli import main
from dialogclip.evaluate.datasets import load_retrieval_set, load_vqa_multiple_choice
from dialogclip.evaluate.vqa import score_results
from dialogclip.ingest.tsv import (
    EMPTY_CAPTION,
    EMPTY_URL,
    INVALID_UTF8,
    WRONG_COLUMN_COUNT,
    read_rows,
)
from dialogclip.ingest.urls import DisallowedUrl, fetchable_url
from dialogclip.world import language
from dialogclip.world.formats import SPECIAL_ROWS, WorldSizes, write_world
from dialogclip.world.grounding import check_text
from dialogclip.world.scenes import Scene

SIZES = WorldSizes(cc3m=80, coco_test=12, coco_other=3, vqa_real=40, vqa_abstract=30)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small world written by the command line (seed 5)."""
    out = tmp_path_factory.mktemp("world")
    params = json.dumps(
        {"cc3m": 80, "coco_test": 12, "coco_other": 3, "vqa_real": 40, "vqa_abstract": 30}
    )
    assert main(["world", "write", str(out), "--seed", "5", "--params", params]) == 0
    return out


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def test_rewriting_gives_the_same_bytes(world: Path, tmp_path: Path) -> None:
    write_world(tmp_path, 5, SIZES)
    assert _digest(tmp_path) == _digest(world)


def test_cc3m_tsv_reads_as_the_demo_tsv_with_partial_captions(world: Path) -> None:
    tsv = world / "cc3m" / "world.tsv"
    n_rows = SIZES.cc3m + len(SPECIAL_ROWS)
    rows = list(read_rows(tsv, 0, n_rows))
    problems = {row.index: row.problem for row in rows if row.problem}
    assert problems == {
        9: WRONG_COLUMN_COUNT,
        21: EMPTY_CAPTION,
        42: INVALID_UTF8,
        55: WRONG_COLUMN_COUNT,
        64: EMPTY_URL,
    }
    with pytest.raises(DisallowedUrl, match="ftp"):
        fetchable_url(rows[50].url, allow_file_urls=True, base_dir=tsv.parent)
    records = {r["key"]: r for r in _records(world / "cc3m" / "scenes.jsonl")}
    assert len(records) == SIZES.cc3m
    missing = []
    for row in rows:
        if row.problem or row.index in SPECIAL_ROWS:
            continue
        record = records[f"{row.index:09d}"]
        assert row.caption == record["caption"]
        url = fetchable_url(row.url, allow_file_urls=True, base_dir=tsv.parent)
        path = Path(url2pathname(urlsplit(url).path))
        assert path == (world / "cc3m" / record["image"]).resolve() and path.is_file()
        scene = Scene.from_record(record)
        assert not language.is_complete_caption(row.caption, scene)
        assert check_text(row.caption, scene).true == check_text(row.caption, scene).stated
    for row in (3, 66):  # dead links stay dead
        path = Path(url2pathname(urlsplit(rows[row].url.removeprefix("file:")).path))
        missing.append((world / "cc3m" / path).exists())
    assert missing == [False, False]
    encodings = {r["encoding"] for r in records.values()}
    assert encodings == {"jpeg", "png-grey", "png-alpha", "webp", "jpeg-large"}


def test_coco_retrieval_set_in_both_published_formats(world: Path) -> None:
    coco = world / "eval" / "coco"
    karpathy = load_retrieval_set(coco / "dataset_coco.json", coco)
    clip_benchmark = load_retrieval_set(coco / "coco_test_karpathy.json", coco / "val2014")
    assert len(karpathy.image_paths) == SIZES.coco_test
    assert len(karpathy.captions) == 5 * SIZES.coco_test
    assert karpathy.image_paths == clip_benchmark.image_paths
    assert karpathy.captions == clip_benchmark.captions
    assert all(path.is_file() for path in karpathy.image_paths)
    records = _records(coco / "scenes.jsonl")
    by_name = {r["image"].split("/")[-1]: Scene.from_record(r) for r in records}
    for caption, owner in zip(karpathy.captions, karpathy.text_to_image, strict=True):
        assert language.is_complete_caption(caption, by_name[karpathy.image_paths[owner].name])


@pytest.mark.parametrize("dataset", ["vqa_real", "vqa_abstract"])
def test_vqa_sets_read_and_score_with_soft_accuracy(
    world: Path, tmp_path: Path, dataset: str
) -> None:
    prefix = "mscoco_val2014" if dataset == "vqa_real" else "abstract_v002_val2015"
    questions = world / "eval" / f"MultipleChoice_{prefix}_questions.json"
    annotations = world / "eval" / f"{prefix}_annotations.json"
    images = world / "eval" / ("coco/val2014" if dataset == "vqa_real" else
                               "scene_img_abstract_v002_val2015")  # fmt: skip
    mc_set = load_vqa_multiple_choice(questions, images, dataset)
    n_images = SIZES.vqa_real if dataset == "vqa_real" else SIZES.vqa_abstract
    assert len(mc_set.image_paths) == n_images
    assert len(mc_set.questions) == SIZES.questions_per_image * n_images
    assert all(path.is_file() for path in mc_set.image_paths)
    assert all(len(q.choices) == 18 for q in mc_set.questions)
    records = _records(world / "eval" / f"{dataset}_scenes.jsonl")
    truth = {q["question_id"]: q["answer"] for r in records for q in r["questions"]}
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"question_id": q, "answer": a} for q, a in truth.items()]))
    scored = score_results(questions, annotations, results)
    # The true answer everywhere, yet annotators disagree: the soft accuracy stays below 100 ...
    assert 85 < scored["overall"] < 100
    assert set(scored["per_answer_type"]) == {"yes/no", "number", "other"}
    # ... and an answer only some annotators gave earns partial credit, not 0.
    humans = {
        a["question_id"]: [h["answer"] for h in a["answers"]]
        for a in json.loads(annotations.read_text())["annotations"]
    }
    minority = {
        q.question_id: answer
        for q in mc_set.questions
        for answer in q.choices
        if answer != truth[q.question_id] and answer in humans[q.question_id]
    }
    assert minority, "no annotator disagreed anywhere"
    results.write_text(json.dumps([{"question_id": q, "answer": a} for q, a in minority.items()]))
    kept = tmp_path / "questions.json"
    data = json.loads(questions.read_text())
    data["questions"] = [q for q in data["questions"] if q["question_id"] in minority]
    kept.write_text(json.dumps(data))
    assert 0 < score_results(kept, annotations, results)["overall"] < 100
