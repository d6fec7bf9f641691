"""The thesis' effects in miniature, on the finished demo (issue 17, point 3).

The demo runs on the world (docs/world.md): its captions leave out what its evaluation asks, and
the world's BLIP-2 and LLaVA put it back. So, on the finished demo:

- the dialogue is grounded in the scenes (>= 80 % of the attributes it states are true, >= 90 %
  of LLaVA's replies parse into three pairs);
- the third tower on BLIP-2 dialogue, blended at beta 0.9, beats the pretrained baseline on
  image R@1 of the world's retrieval set, and DRAFT blended at 0.9 beats it on VQA
  multiple-choice accuracy (its trained tower alone by more), each by at least a margin that
  bench/bench_demo_effects.py shows to be well above seed-to-seed noise
  (test_margins_stand_above_the_bench_noise ties the two);
- the blends go the thesis' way: beta is the original model's weight (beta 1 is the baseline,
  bit for bit; beta 0 is the trained tower alone, which differs from it);
- sabotage: trained on dialogue given to the wrong images (each shard's dialogues rotated by one
  image), the same pipeline loses the gains. The bench, mean of three seeds: the third tower
  +1.51 -> +0.36 R@1; DRAFT's trained tower alone (beta 0, mean of both VQA sets) +2.68 ->
  -1.16 points. DRAFT's 0.9 blend keeps a part (+0.97 -> +0.37 on the real set): a tenth of a
  tower that learned the dialogue's wording without its images. Its control, DRAFT on its
  caption term alone (the bench's captions arm), gains nothing (-0.54 blended, -0.52 alone), so
  what DRAFT gains is the dialogue's, and with the right images.

A reversed loss makes the trained towers worse than the baseline (the effect tests fail); a
blend applied backwards makes beta 1 the trained tower and beta 0 the original (the blend test
and DRAFT alone's margin fail; both seen once, issue 17's closing note).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from workflow_helpers import REPO_ROOT, copy_demo, planned_jobs, snakemake

from dialogclip.models.eval_entry import result_path
from dialogclip.world.effects import (
    BASELINE,
    DRAFT_ALONE,
    demo_effects,
    effect_targets,
    image_recall_at_1,
    shuffle_dialogue,
    vqa_accuracy,
)
from dialogclip.world.grounding import check_dialogue_shards

pytestmark = pytest.mark.dag

# The smallest gain, in points, the demo's effects must show (issue 17: "by a margin well above
# seed-to-seed noise"); bench/results/demo_effects.json records the pipeline's own spread, and
# what the sabotage leaves of the third tower's gain (at most half its margin).
MARGIN = {"third_tower_blip2": 1.0, "draft_vqa_real": 0.5, "draft_alone_vqa": 1.5}
SABOTAGED_CEILING = {"third_tower_blip2": 0.5, "draft_alone_vqa": 0.5}
BENCH = REPO_ROOT / "bench" / "results" / "demo_effects.json"
GENERATORS = ("blip2", "llava")


def _shards(workdir: Path, generator: str) -> list[Path]:
    shards = sorted((workdir / "results" / "dialogue" / generator).glob("*.parquet"))
    assert len(shards) == 3, shards  # the demo's three CC3M shards
    return shards


def test_dialogue_is_grounded_in_the_scenes(finished_demo: Path) -> None:
    records = finished_demo / "cc3m" / "scenes.jsonl"
    blip2 = check_dialogue_shards("blip2", _shards(finished_demo, "blip2"), records)
    llava = check_dialogue_shards("llava", _shards(finished_demo, "llava"), records)
    assert blip2["replies"] >= 550 and llava["replies"] >= 550  # of 600 scenes, a few grey
    assert blip2["grounding"]["rate"] >= 0.8, blip2
    assert llava["parse_ok_rate"] >= 0.9, llava
    assert llava["grounding"]["rate"] >= 0.8, llava


def test_third_tower_and_draft_beat_the_baseline(finished_demo: Path) -> None:
    effects = demo_effects(finished_demo).as_dict()
    for effect, margin in MARGIN.items():
        assert effects[effect] >= margin, (effect, effects)
    # the abstract-scene VQA set asks the same questions of other pictures: no loss there
    assert effects["draft_vqa_abstract"] > 0, effects


def test_blends_weigh_the_original_model_by_beta(finished_demo: Path) -> None:
    """Eq. 4.3.1 (third tower) and the DRAFT blend: beta weighs the original text embedding;
    beta 1 is the baseline exactly, beta 0 the trained tower alone."""
    baseline = json.loads(result_path(finished_demo / "results", BASELINE, "coco").read_text())[
        "metrics"
    ]
    for run in ("tiny-c3m-blip2", "tiny-c3m-llava"):
        at_1 = json.loads(
            result_path(finished_demo / "results", f"{run}-beta1", "coco").read_text()
        )["metrics"]
        assert at_1 == baseline, run
        assert image_recall_at_1(finished_demo, f"{run}-beta0") != image_recall_at_1(
            finished_demo, BASELINE
        ), run
    for dataset in ("vqa_real", "vqa_abstract"):
        alone = vqa_accuracy(finished_demo, DRAFT_ALONE, dataset)
        assert alone - vqa_accuracy(finished_demo, BASELINE, dataset) >= MARGIN["draft_vqa_real"]


def test_margins_stand_above_the_bench_noise() -> None:
    """Each margin is at least three seed-to-seed standard deviations of the pipeline's own
    recipe, and below the bench's mean less two of them (the demo is one of its seeds); each
    sabotaged effect stays below its ceiling by two deviations, and every shuffled mean below
    the demo's; DRAFT without dialogue (the captions arm) stays below DRAFT's margins by two
    deviations."""
    bench = json.loads(BENCH.read_text())["summary"]
    for effect, margin in MARGIN.items():
        summary = bench["demo"][effect]
        assert len(summary["values"]) >= 3, summary
        assert margin >= 3 * summary["sd"], (effect, summary)
        assert summary["mean"] - 2 * summary["sd"] >= margin, (effect, summary)
        assert bench["shuffled"][effect]["mean"] < summary["mean"], effect
    for effect, ceiling in SABOTAGED_CEILING.items():
        sabotaged = bench["shuffled"][effect]
        assert sabotaged["mean"] + 2 * sabotaged["sd"] < ceiling, (effect, sabotaged)
    for effect in ("draft_vqa_real", "draft_alone_vqa"):
        control = bench["captions"][effect]
        assert control["mean"] + 2 * control["sd"] < MARGIN[effect], (effect, control)


def test_shuffled_dialogue_loses_the_gains(finished_demo: Path, tmp_path: Path) -> None:
    workdir = copy_demo(tmp_path / "demo", source=finished_demo)
    for generator in GENERATORS:
        for shard in _shards(workdir, generator):
            shuffle_dialogue(shard)
    targets = effect_targets()
    # the pipeline redoes exactly the training on the moved dialogue and its evaluation
    assert planned_jobs(workdir, *targets) == {
        "train_rows": 6,  # two blocks each: BLIP-2 and LLaVA concatenated, LLaVA's pairs
        "train_run": 3,  # third tower on BLIP-2 and on LLaVA, DRAFT
        "eval_retrieval": 2,
        "eval_vqa": 4,  # DRAFT blended at 0.9 and alone, on both VQA sets
    }
    result = snakemake(workdir, *targets)
    assert result.returncode == 0, result.stderr[-6000:]
    effects = demo_effects(workdir).as_dict()
    original = demo_effects(finished_demo).as_dict()
    for effect, ceiling in SABOTAGED_CEILING.items():
        assert effects[effect] < ceiling, (effect, effects)
        assert original[effect] - effects[effect] >= MARGIN[effect], (effect, original, effects)
    assert effects["draft_vqa_real"] < original["draft_vqa_real"], (original, effects)
    assert image_recall_at_1(workdir, BASELINE) == image_recall_at_1(finished_demo, BASELINE)
