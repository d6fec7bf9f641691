"""What an edit reruns in the evaluate stage, as `snakemake --dry-run` plans it on the finished
demo: its entry `tiny` (the world's CLIP) and the evaluation variants of its four training runs,
all on one image tower; an edit of an explicit blend entry on the demo with two of them
(tests/demo_blends.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from demo_blends import blended_demo
from workflow_helpers import (
    DEMO_BASELINE_EVAL,
    DEMO_RUNS,
    copy_demo,
    demo_after_dialogue,
    edited_config,
    planned_jobs,
)

pytestmark = pytest.mark.dag


def _entry(config: dict, name: str) -> dict:
    return next(entry for entry in config["evaluate"]["models"] if entry["name"] == name)


def test_batch_sizes_and_threads_rerun_nothing(finished_demo: Path) -> None:
    assert (
        planned_jobs(
            finished_demo,
            "--set-resources",
            "embed_eval_images:batch_size=3",
            "eval_retrieval:batch_size=5",
            "eval_vqa:batch_size=7",
            "embed_eval_images:mem_mb=9000",
            "--set-threads",
            "embed_eval_images=1",
            "eval_vqa=1",
        )
        == {}
    )


def test_a_beta_edit_reruns_only_that_entrys_evaluations(
    finished_demo: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    demo = blended_demo(finished_demo, tmp_path_factory)
    edited = edited_config(
        demo, tmp_path, lambda c: _entry(c, "tiny-embedding-blend").update(beta=0.8)
    )
    assert planned_jobs(demo, "--configfile", edited) == {
        "eval_retrieval": 1,
        "eval_vqa": 2,
        "report": 1,
    }


def test_recall_cutoffs_rerun_only_retrieval(finished_demo: Path, tmp_path: Path) -> None:
    edited = edited_config(finished_demo, tmp_path, lambda c: c["evaluate"].update(ks=[1, 2]))
    # Every retrieval: `tiny` and the variants of the training runs evaluated on COCO.
    retrievals = DEMO_BASELINE_EVAL["eval_retrieval"]
    retrievals += sum(run.eval_retrieval for run in DEMO_RUNS.values())
    assert planned_jobs(finished_demo, "--configfile", edited) == {
        "eval_retrieval": retrievals,
        "report": 1,
    }


def test_the_text_form_reruns_what_reads_texts_never_generation(
    finished_demo: Path, tmp_path: Path
) -> None:
    edited = edited_config(
        finished_demo,
        tmp_path,
        lambda c: c.setdefault("text", {}).update(qa_template="Q: {question} A: {answer}"),
    )
    # Never generation: the shards keep raw pairs; the form is applied by their readers: the
    # training samples (every rows set in every block, so every run and its evaluations) and
    # the statistics, as after new dialogue of both generators, and the VQA candidates (`tiny`'s
    # VQA evaluations too; its retrieval reads no pair).
    expected = demo_after_dialogue("blip2", "llava")
    expected["eval_vqa"] += DEMO_BASELINE_EVAL["eval_vqa"]
    assert planned_jobs(finished_demo, "--configfile", edited) == expected


def test_a_new_image_tower_embeds_once_for_its_entry(finished_demo: Path, tmp_path: Path) -> None:
    # quickgelu true makes a different image tower: its own cache, shared by nobody else.
    edited = edited_config(
        finished_demo, tmp_path, lambda c: _entry(c, "tiny").update(quickgelu=True)
    )
    assert planned_jobs(finished_demo, "--configfile", edited) == {
        "embed_eval_images": 3,
        "eval_retrieval": 1,
        "eval_vqa": 2,
        "report": 1,
    }


def test_touching_evaluation_files_reruns_nothing(finished_demo: Path, tmp_path: Path) -> None:
    workdir = copy_demo(tmp_path / "demo", source=finished_demo)
    later = (workdir / "config.yaml").stat().st_mtime + 3600
    for path in (workdir / "eval").rglob("*"):
        os.utime(path, (later, later))
    assert planned_jobs(workdir) == {}


def test_switching_evaluation_off_plans_no_evaluation(finished_demo: Path, tmp_path: Path) -> None:
    def edit(config: dict) -> None:
        config["evaluate"]["activate"] = False
        config["evaluate"]["coco"]["annotations"] = "eval/missing.json"  # not needed now

    edited = edited_config(finished_demo, tmp_path, edit)
    # The report is redone without the evaluations; nothing is evaluated.
    assert planned_jobs(finished_demo, "--configfile", edited) == {"report": 1}
