"""The one text form of question/answer pairs (training, VQA candidates, statistics)."""

from __future__ import annotations

import pytest

from dialogclip.core.config import ConfigError
from dialogclip.core.text_forms import TextForms

QUESTIONS = ["What is it?", "What colour?", "Where?"]
ANSWERS = ["a dog", "brown", "on a beach"]


def test_default_form_is_question_followed_by_answer() -> None:
    forms = TextForms()
    assert forms.pair("What is it?", "a dog") == "What is it? a dog"
    assert forms.dialogue(QUESTIONS, ANSWERS) == (
        "What is it? a dog What colour? brown Where? on a beach"
    )


def test_custom_template_and_separator() -> None:
    forms = TextForms(qa_template="Q: {question} A: {answer}.", pair_separator=" | ")
    assert forms.pairs(QUESTIONS[:2], ANSWERS[:2]) == [
        "Q: What is it? A: a dog.",
        "Q: What colour? A: brown.",
    ]
    assert (
        forms.dialogue(QUESTIONS[:2], ANSWERS[:2])
        == "Q: What is it? A: a dog. | Q: What colour? A: brown."
    )


def test_truncate_keeps_every_pair() -> None:
    text, dropped = TextForms().fitted_dialogue(QUESTIONS, ANSWERS, lambda t: len(t.split()), 3)
    assert (text, dropped) == (TextForms().dialogue(QUESTIONS, ANSWERS), 0)


def test_drop_pairs_drops_trailing_pairs_until_it_fits() -> None:
    forms = TextForms(long_texts="drop_pairs")
    words = lambda text: len(text.split()) + 2  # noqa: E731 - start and end tokens
    # pairs have 5, 3 and 4 words: 5+2 = 7 tokens for one pair, 8+2 = 10 for two, 14 for three.
    assert forms.fitted_dialogue(QUESTIONS, ANSWERS, words, 14) == (
        forms.dialogue(QUESTIONS, ANSWERS),
        0,
    )
    assert forms.fitted_dialogue(QUESTIONS, ANSWERS, words, 13) == (
        "What is it? a dog What colour? brown",
        1,
    )
    assert forms.fitted_dialogue(QUESTIONS, ANSWERS, words, 9) == ("What is it? a dog", 2)
    # The first pair is always kept (the tokenizer then truncates it).
    assert forms.fitted_dialogue(QUESTIONS, ANSWERS, words, 3) == ("What is it? a dog", 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"qa_template": "{question}"}, "text.qa_template must contain"),
        ({"long_texts": "cut"}, "text.long_texts must be one of"),
    ],
)
def test_bad_settings_name_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TextForms(**kwargs)


def test_pairs_must_align() -> None:
    with pytest.raises(ValueError, match="2 questions but 1 answers"):
        TextForms().pairs(QUESTIONS[:2], ANSWERS[:1])
