"""Prompts (METHOD.md section 3), BLIP-2 answer cleaning, dialogue text, config defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from dialogclip.core.config import ConfigError, load_yaml
from dialogclip.generate.config import (
    BLIP2_QUESTIONS,
    GenerateConfig,
    LlavaSettings,
    generate_config_from_dict,
)
from dialogclip.generate.generators import make_generator
from dialogclip.generate.prompts import (
    blip2_prompt,
    clean_blip2_answer,
    dialogue_pairs,
    dialogue_text,
    llava_prompt,
)

BLIP2 = "Question: {question} Answer:"


def test_blip2_turns_follow_the_method() -> None:
    questions = list(BLIP2_QUESTIONS)
    assert blip2_prompt(BLIP2, questions, []) == "Question: What do you see in this image? Answer:"
    assert blip2_prompt(BLIP2, questions, ["a dog on a beach"]) == (
        "Question: What do you see in this image? Answer: a dog on a beach "
        "Question: What makes this image unique? Answer:"
    )


def test_blip2_empty_first_answer_leaves_no_double_space() -> None:
    prompt = blip2_prompt(BLIP2, ["q1?", "q2?"], [""])
    assert prompt == "Question: q1? Answer: Question: q2? Answer:"


def test_blip2_prompt_rejects_a_turn_past_the_questions() -> None:
    with pytest.raises(ValueError, match="turn 2"):
        blip2_prompt(BLIP2, ["q1?", "q2?"], ["a", "b"])


def test_llava_prompt_is_the_chat_form() -> None:
    assert llava_prompt("USER: <image>\n{question} ASSISTANT:", "Hi?") == (
        "USER: <image>\nHi? ASSISTANT:"
    )


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        (" a dog on a beach ", "a dog on a beach"),
        ("a dog\nQuestion: what else?", "a dog"),
        ("a dog Question: What makes it unique? Answer: nothing", "a dog"),
        ("", ""),
    ],
)
def test_blip2_answer_is_cut_before_invented_turns(response: str, answer: str) -> None:
    assert clean_blip2_answer(response, BLIP2) == answer


def test_dialogue_text_concatenates_the_pairs() -> None:
    pairs = dialogue_pairs(["q1?", "q2?"], ["a1", "a2"], "Question: {question} Answer: {answer}")
    assert pairs == ["Question: q1? Answer: a1", "Question: q2? Answer: a2"]
    assert dialogue_text(pairs, " ") == "Question: q1? Answer: a1 Question: q2? Answer: a2"


def test_config_defaults_equal_the_schema_defaults(repo_root: Path) -> None:
    """The dataclasses and workflow/schemas/config.schema.yaml must describe the same defaults."""
    schema = load_yaml(repo_root / "workflow" / "schemas" / "config.schema.yaml")
    section = schema["properties"]["generate"]
    defaults = GenerateConfig()

    def check(schema_node: dict, value: object, where: str) -> None:
        for key, sub in schema_node["properties"].items():
            field_value = getattr(value, key)
            if sub.get("type") == "object":
                check(sub, field_value, f"{where}.{key}")
            else:
                assert sub["default"] == field_value, f"{where}.{key}"

    check(section, defaults, "generate")


def test_unknown_and_invalid_keys_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="chunksize"):
        generate_config_from_dict({"chunksize": 3})
    with pytest.raises(ConfigError, match="backend"):
        generate_config_from_dict({"backend": "tensorrt"})
    with pytest.raises(ConfigError, match=r"generate\.llava: unknown"):
        generate_config_from_dict({"llava": {"modle": "x"}})
    with pytest.raises(ConfigError, match="question"):
        generate_config_from_dict({"blip2": {"prompt_template": "no placeholder"}})


def test_structured_prompt_is_asked_only_when_switched_on() -> None:
    plain = make_generator("llava", generate_config_from_dict({}))
    structured = make_generator(
        "llava", generate_config_from_dict({"llava": {"structured_output": True}})
    )
    assert plain.schema is None and plain.question == LlavaSettings().question
    assert structured.schema is not None
    assert structured.question == LlavaSettings().structured_question
