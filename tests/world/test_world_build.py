"""The build's yardsticks without training: prompts read from a workflow config, the scoring of
replies on held-out scenes, and the comparison of a rebuild with the committed behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dialogclip.core.config import ConfigError
from dialogclip.generate.config import LLAVA_QUESTION
from dialogclip.world import language
from dialogclip.world.build import (
    HELD_OUT_SPLIT,
    compare_behaviour,
    prompts_from_config,
    score_blip2,
    score_llava,
)
from dialogclip.world.scenes import draw_scenes

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
DEMO_CONFIG = ROOT / "resources/demo/config.yaml"


def test_prompts_come_from_the_config_and_free_text_llava_is_required(tmp_path: Path) -> None:
    assert prompts_from_config(DEMO_CONFIG, SCHEMA).llava_question == LLAVA_QUESTION  # free text
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    config["generate"]["llava"]["structured_output"] = True  # LLaVA constrained to JSON
    constrained = tmp_path / "constrained" / "config.yaml"
    constrained.parent.mkdir()
    constrained.write_text(yaml.safe_dump(config))
    with pytest.raises(
        ConfigError, match=r"constrained/config\.yaml: .*structured_output to false"
    ):
        prompts_from_config(constrained, SCHEMA)
    config["generate"]["llava"]["structured_output"] = False
    config["generate"]["llava"]["question"] = "List three pairs."
    config["generate"]["blip2"]["prompt_template"] = "Q: {question} A:"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    prompts = prompts_from_config(path, SCHEMA)
    assert prompts.llava_question == "List three pairs."
    assert prompts.blip2_prompt_template == "Q: {question} A:"
    assert prompts.blip2_questions == language.BLIP2_QUESTIONS


def test_true_replies_score_fully_and_wrong_ones_do_not() -> None:
    scenes = draw_scenes(0, HELD_OUT_SPLIT, 20)
    truth = [list(language.blip2_answers(scene)) for scene in scenes]
    scored = score_blip2(truth, scenes)
    assert scored["grounding"]["rate"] == 1.0
    assert [turn["texts"] for turn in scored["per_turn"]] == [20, 20]
    # Every scene described as the next one: most attributes are then false.
    shifted = score_blip2(truth[1:] + truth[:1], scenes)
    assert shifted["grounding"]["rate"] < 0.8
    replies = [language.llava_reply(language.llava_pairs(scene)) for scene in scenes]
    llava = score_llava(replies, scenes)
    assert llava["grounding"]["rate"] == 1.0 and llava["three_pairs_rate"] == 1.0
    cut = [reply.rsplit("\nQ3:", 1)[0] for reply in replies]  # two pairs each
    assert score_llava(cut, scenes)["three_pairs_rate"] == 0.0
    assert score_llava(["no pairs here"] * 20, scenes)["grounding"]["texts_stating_nothing"] == 20


def test_a_rebuild_is_compared_rate_by_rate() -> None:
    committed = {
        "blip2": {"grounding": {"rate": 0.85}},
        "llava": {"grounding": {"rate": 0.9}, "three_pairs_rate": 1.0},
        "clip": {"r1_complete": 0.3, "r1_partial": 0.05},
    }
    same = {**committed, "clip": {"r1_complete": 0.31, "r1_partial": 0.05}}
    assert compare_behaviour(committed, same, tolerance=0.02) == []
    worse = {**committed, "llava": {"grounding": {"rate": 0.7}, "three_pairs_rate": 1.0}}
    assert compare_behaviour(committed, worse, tolerance=0.02) == [
        "llava grounding: committed 0.9, rebuilt 0.7"
    ]
