"""The evaluation rules end to end on the demo (the world's sets in the official formats, its
CLIP), with two explicit blend entries beside `tiny` (tests/demo_blends.py: the first DRAFT
run's text tower blended by embeddings and by weights); the stopping errors on a fresh copy,
evaluation targets only."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from demo_blends import BLENDS, blended_demo
from workflow_helpers import CPU_DEFAULT_RESOURCES, copy_demo, edited_config

from dialogclip.core.io import read_json
from dialogclip.evaluate.datasets import load_retrieval_set
from dialogclip.evaluate.embedding import load_image_embeddings
from dialogclip.evaluate.jobs import build_text_encoder
from dialogclip.evaluate.retrieval import retrieval_metrics
from dialogclip.evaluate.settings import job_from_params
from dialogclip.evaluate.vqa import score_results
from dialogclip.models.naming import image_model_key
from dialogclip.models.openclip import load_clip

pytestmark = pytest.mark.dag

VQA = ("vqa_real", "vqa_abstract")
# The demo's entry `tiny` (resources/demo/config.yaml) and the blends beside it, with the sets
# each is evaluated on (its `datasets`, else all three); one image tower, the world's CLIP.
EXPECTED = {
    "tiny": ("coco", *VQA),
    **{blend["name"]: tuple(blend.get("datasets") or ("coco", *VQA)) for blend in BLENDS},
}
ARCHITECTURE = "world-clip"
IMAGE_MODEL = image_model_key(ARCHITECTURE, "results/models/world-clip.safetensors")


def _targets() -> list[str]:
    return [
        f"results/eval/{'retrieval' if dataset == 'coco' else 'vqa'}/{name}/{dataset}.json"
        for name, datasets in EXPECTED.items()
        for dataset in datasets
    ]


def _snakemake(repo_root: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    venv_bin = repo_root / ".venv" / "bin"
    return subprocess.run(
        [
            str(venv_bin / "snakemake"),
            "--snakefile",
            str(repo_root / "Snakefile"),
            "--directory",
            str(workdir),
            *CPU_DEFAULT_RESOURCES,  # the default profile's GPU jobs would refuse the CPU
            "--cores",
            "2",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,  # a hang must fail the test, not the suite
        env={**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"},
    )


@pytest.fixture(scope="module")
def evaluated(finished_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The finished demo with the blends evaluated too (shared: dry runs only)."""
    return blended_demo(finished_demo, tmp_path_factory)


def test_every_entry_and_set_has_a_clip_benchmark_record(evaluated: Path) -> None:
    config = yaml.safe_load((evaluated / "config.yaml").read_text())["evaluate"]
    for target in _targets():
        record = read_json(evaluated / target)
        assert {"dataset", "model", "pretrained", "task", "metrics", "language"} <= set(record)
        assert record["quickgelu"] is False and record["model"] == ARCHITECTURE
        if record["task"] == "zeroshot_retrieval":
            assert record["dataset"] == "mscoco_captions"
            assert set(record["metrics"]) == {
                f"{kind}_retrieval_recall@{k}" for kind in ("image", "text") for k in (1, 5, 10)
            }
            assert all(0 <= value <= 1 for value in record["metrics"].values())
        else:
            assert record["task"] == "vqa_multiple_choice"
            assert 0 <= record["metrics"]["overall"] <= 100
            dataset = Path(target).stem  # results/eval/vqa/<entry>/<set>.json
            questions = read_json(evaluated / config[dataset]["questions"])
            assert record["metrics"]["n_questions"] == len(questions["questions"])
    # No other result: the weight blend skips vqa_real (its `datasets`).
    assert not (evaluated / "results/eval/vqa/tiny-weight-blend/vqa_real.json").exists()


def test_image_embeddings_are_computed_once_per_tower_and_set(evaluated: Path) -> None:
    cache = evaluated / "results" / "eval" / "image_emb"
    assert [path.name for path in cache.iterdir()] == [IMAGE_MODEL]
    assert sorted(path.name for path in (cache / IMAGE_MODEL).iterdir()) == [
        "coco.safetensors",
        "vqa_abstract.safetensors",
        "vqa_real.safetensors",
    ]
    assert len(list((evaluated / "logs" / "embed_eval_images").rglob("*.log"))) == 3


@pytest.mark.parametrize("name", list(EXPECTED))
def test_retrieval_records_equal_an_in_process_computation(evaluated: Path, name: str) -> None:
    record = read_json(evaluated / f"results/eval/retrieval/{name}/coco.json")
    settings = record["settings"]
    cwd = Path.cwd()
    os.chdir(evaluated)  # the config's paths are relative to the demo folder
    try:
        job = job_from_params(settings)
        data = load_retrieval_set(job.files.annotations, job.files.images, job.files.split)
        image_emb = load_image_embeddings(
            Path(f"results/eval/image_emb/{IMAGE_MODEL}/coco.safetensors"), data.image_paths
        )
        encoder = build_text_encoder(job, load_clip(job.model.spec))
        expected = retrieval_metrics(
            image_emb, encoder.encode(data.captions), torch.tensor(data.text_to_image)
        )
    finally:
        os.chdir(cwd)
    assert record["metrics"] == pytest.approx(expected, abs=1e-6)


def test_vqa_results_are_official_and_scored_officially(evaluated: Path) -> None:
    config = yaml.safe_load((evaluated / "config.yaml").read_text())["evaluate"]
    for name, datasets in EXPECTED.items():
        for dataset in (d for d in datasets if d != "coco"):
            results_file = evaluated / f"results/eval/vqa/{name}/{dataset}_results.json"
            results = json.loads(results_file.read_text())
            questions = json.loads((evaluated / config[dataset]["questions"]).read_text())
            choices = {q["question_id"]: q["multiple_choices"] for q in questions["questions"]}
            assert sorted(r["question_id"] for r in results) == sorted(choices)
            assert all(r["answer"] in choices[r["question_id"]] for r in results)
            rescored = score_results(
                evaluated / config[dataset]["questions"],
                evaluated / config[dataset]["annotations"],
                results_file,
            )
            record = read_json(evaluated / f"results/eval/vqa/{name}/{dataset}.json")
            assert record["metrics"] == rescored


def test_a_finished_evaluation_has_nothing_left_to_do(repo_root: Path, evaluated: Path) -> None:
    result = _snakemake(repo_root, evaluated, "--dry-run", *_targets())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr


def test_editing_a_variant_reruns_its_jobs_but_not_the_image_cache(
    repo_root: Path, evaluated: Path, tmp_path: Path
) -> None:
    def edit(config: dict) -> None:
        (blend,) = (e for e in config["evaluate"]["models"] if e["name"] == "tiny-embedding-blend")
        blend["beta"] = 0.5

    edited = edited_config(evaluated, tmp_path, edit)
    # targets first: --configfile takes every word after it
    result = _snakemake(repo_root, evaluated, "--dry-run", *_targets(), "--configfile", edited)
    assert result.returncode == 0, result.stderr[-3000:]
    planned = {
        path
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip().startswith("output:")
        for path in line.split(":", 1)[1].strip().split(", ")
    }
    assert not any(path.endswith(".safetensors") for path in planned)  # the cache is kept
    assert {path for path in planned if path.endswith(".json")} == {
        "results/eval/retrieval/tiny-embedding-blend/coco.json",
        *(
            f"results/eval/vqa/tiny-embedding-blend/{d}{s}.json"
            for d in VQA
            for s in ("", "_results")
        ),
    }


@pytest.mark.parametrize(
    ("damage", "message"),
    [("delete", "evaluation image missing"), ("corrupt", "cannot be decoded")],
)
def test_a_missing_or_broken_image_stops_the_job_naming_it(
    repo_root: Path, tmp_path: Path, damage: str, message: str
) -> None:
    workdir = copy_demo(tmp_path / "demo")
    image = workdir / "eval/coco/val2014/COCO_val2014_000000000003.jpg"
    if damage == "delete":
        image.unlink()
    else:
        image.write_bytes(image.read_bytes()[:100])  # a truncated JPEG
    result = _snakemake(repo_root, workdir, "results/eval/retrieval/tiny/coco.json")
    assert result.returncode != 0
    log = (workdir / f"logs/embed_eval_images/{IMAGE_MODEL}/coco.log").read_text()
    assert message in log and "COCO_val2014_000000000003.jpg" in log
    assert not (workdir / f"results/eval/image_emb/{IMAGE_MODEL}/coco.safetensors").exists()


def test_a_missing_annotation_file_is_named_with_where_it_is_published(
    repo_root: Path, tmp_path: Path
) -> None:
    workdir = copy_demo(tmp_path / "demo")
    (workdir / "eval/abstract_v002_val2015_annotations.json").unlink()
    result = _snakemake(repo_root, workdir, "--dry-run", "results/eval/vqa/tiny/vqa_abstract.json")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "abstract_v002_val2015_annotations.json" in output
    assert "visualqa.org" in output
