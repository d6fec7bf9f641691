"""LLaVA reply parsing: format variants, failures kept with a status, the structured schema."""

from __future__ import annotations

import json
import random
import string

import jsonschema
import pytest

from dialogclip.generate.parsing import (
    PARSE_OK,
    PARSE_UNPARSED,
    PARSE_WRONG_COUNT,
    parse_qa_pairs,
    qa_json_schema,
)

EXPECTED = [
    ("What is in the image?", "A dog."),
    ("What color is it?", "Brown."),
    ("Where is it?", "On a beach."),
]

VARIANTS = {
    "q1_a1": "Q1: What is in the image?\nA1: A dog.\nQ2: What color is it?\nA2: Brown.\n"
    "Q3: Where is it?\nA3: On a beach.",
    "inline_labels": "Q1: What is in the image? A1: A dog. Q2: What color is it? A2: Brown. "
    "Q3: Where is it? A3: On a beach.",
    "markdown_bold": "Here are three questions:\n\n**Question 1:** What is in the image?\n"
    "**Answer:** A dog.\n\n**Question 2:** What color is it?\n**Answer:** Brown.\n\n"
    "**Question 3:** Where is it?\n**Answer:** On a beach.",
    "numbered_labels": "1. Question: What is in the image?\n   Answer: A dog.\n"
    "2. Question: What color is it?\n   Answer: Brown.\n3. Question: Where is it?\n"
    "   Answer: On a beach.",
    "numbered_question_mark": "1. What is in the image? A dog.\n2) What color is it? Brown.\n"
    "3. Where is it? On a beach.",
    "bullets": "- What is in the image?\n  A dog.\n- What color is it?\n  Brown.\n"
    "- Where is it?\n  On a beach.",
    "alternating_lines": "What is in the image?\nA dog.\n\nWhat color is it?\nBrown.\n"
    "Where is it?\nOn a beach.",
    "dash_separator": "Question 1 - What is in the image? Answer 1 - A dog. Question 2 - What "
    "color is it? Answer 2 - Brown. Question 3 - Where is it? Answer 3 - On a beach.",
    "lowercase_q_a": "q: What is in the image?\na: A dog.\nq: What color is it?\na: Brown.\n"
    "q: Where is it?\na: On a beach.",
    "json_list": json.dumps([{"question": q, "answer": a} for q, a in EXPECTED]),
    "json_in_prose": "Sure! " + json.dumps({"pairs": [{"Q": q, "A": a} for q, a in EXPECTED]}),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_gives_the_three_pairs(name: str) -> None:
    parsed = parse_qa_pairs(VARIANTS[name])
    assert parsed.status == PARSE_OK, (name, parsed)
    assert list(zip(parsed.questions, parsed.answers, strict=True)) == EXPECTED


def test_an_article_is_not_an_answer_label() -> None:
    text = "Q1: Who is there? A1: a 2-year-old child. Q2: Where? A2: A. park. Q3: When? A3: Noon."
    parsed = parse_qa_pairs(text)
    assert parsed.status == PARSE_OK
    assert parsed.answers == ["a 2-year-old child.", "A. park.", "Noon."]


def test_two_pairs_are_kept_with_wrong_count() -> None:
    parsed = parse_qa_pairs("Q1: What is it? A1: A dog.\nQ2: Where? A2: A park.")
    assert parsed.status == PARSE_WRONG_COUNT
    assert parsed.questions == ["What is it?", "Where?"]


def test_four_pairs_are_wrong_count_not_truncated() -> None:
    text = "\n".join(f"Q{i}: Question {i}? A{i}: Answer {i}." for i in range(1, 5))
    parsed = parse_qa_pairs(text)
    assert parsed.status == PARSE_WRONG_COUNT
    assert len(parsed.questions) == 4


@pytest.mark.parametrize("text", ["", "   ", "A sunny beach with people.", "usow,m t~SERio"])
def test_unreadable_reply_is_unparsed(text: str) -> None:
    parsed = parse_qa_pairs(text)
    assert parsed.status == PARSE_UNPARSED
    assert parsed.questions == [] and parsed.answers == []


def test_parser_never_raises_on_random_text() -> None:
    rng = random.Random(0)
    alphabet = string.printable + "?:{}[]\"'**"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        parsed = parse_qa_pairs(text)
        assert parsed.status in (PARSE_OK, PARSE_WRONG_COUNT, PARSE_UNPARSED)
        assert len(parsed.questions) == len(parsed.answers)


def test_json_schema_accepts_exactly_three_pairs() -> None:
    schema = qa_json_schema(3, max_chars=20)
    validator = jsonschema.Draft202012Validator(schema)
    good = [{"question": "Q?", "answer": "A."}] * 3
    assert validator.is_valid(good)
    assert not validator.is_valid(good[:2])
    assert not validator.is_valid([*good, good[0]])
    assert not validator.is_valid([{"question": "Q?"}] * 3)
    assert not validator.is_valid([{"question": "Q?", "answer": "A", "extra": "x"}] * 3)
    assert not validator.is_valid([{"question": "Q" * 21, "answer": "A"}] * 3)
    # Properties in this order: the constrained reply writes the question first.
    assert list(schema["items"]["properties"]) == ["question", "answer"]
