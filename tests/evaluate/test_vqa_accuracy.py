"""VQA accuracy: the official evaluator's cases, checked by hand-computed values."""

import random

import pytest

from dialogclip.evaluate.vqa_accuracy import (
    normalize_answer,
    normalize_punctuation,
    question_accuracy,
    score_predictions,
    summarize_accuracy,
)


def test_eight_yes_two_no_answering_no_scores_point_six() -> None:
    # Leaving out a "no": 1 match among the others (1/3); leaving out a "yes": 2 matches (2/3).
    # (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert question_accuracy("no", ["yes"] * 8 + ["no"] * 2) == pytest.approx(0.6)
    assert question_accuracy("yes", ["yes"] * 8 + ["no"] * 2) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("matches", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]
)
def test_leave_one_out_credit(matches: int, expected: float) -> None:
    humans = ["cat"] * matches + [
        "dog",
        "bird",
        "cow",
        "fox",
        "owl",
        "pig",
        "rat",
        "ant",
        "bee",
        "elk",
    ][: 10 - matches]
    # With m matches: the m left-out matching answers see m-1 others, the rest see m.
    assert question_accuracy("cat", humans) == pytest.approx(expected)


def test_unanimous_answers_are_compared_without_normalisation() -> None:
    # All ten humans wrote "two": nothing is normalised, so "2" does not match.
    assert question_accuracy("2", ["two"] * 10) == 0.0
    assert question_accuracy("two", ["two"] * 10) == 1.0
    # One dissenting human switches normalisation on for everyone.
    assert question_accuracy("2", ["two"] * 9 + ["three"]) == pytest.approx(1.0)


def test_newlines_tabs_and_outer_spaces_are_cleaned_before_comparing() -> None:
    assert question_accuracy(" yes\n", ["yes"] * 10) == 1.0
    assert question_accuracy("red\tcar", ["red car"] * 10) == 1.0


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Two", "2"),
        ("none", "0"),
        ("a dog", "dog"),
        ("The Red Car", "red car"),
        ("dont", "don’t"),
        ("isnt it", "isn’t it"),
        ("yes.", "yes"),
        ("2.5", "2.5"),
        ("1,000", "1000"),
        ("black/white", "black white"),
        ("black / white", "black white"),
        ("hot-dog", "hot dog"),
        ("what?", "what"),
        ("it's", "it's"),  # the apostrophe is not in the evaluator's punctuation list
    ],
)
def test_normalization_cases(raw: str, normalized: str) -> None:
    assert normalize_answer(raw) == normalized


def test_marks_next_to_spaces_are_deleted_not_spaced() -> None:
    assert normalize_punctuation("yes !") == "yes "
    assert normalize_punctuation("yes!no") == "yes no"


def test_disagreeing_humans_match_after_normalisation() -> None:
    humans = ["The dog.", "dog", "a dog", "Dog", "dogs", "cat", "dog", "dog!", "dog", "dog"]
    assert question_accuracy("DOG", humans) == pytest.approx(1.0)


def _annotation(qid: int, answers: list[str], answer_type: str, question_type: str) -> dict:
    return {
        "question_id": qid,
        "answer_type": answer_type,
        "question_type": question_type,
        "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)],
    }


def test_summary_averages_per_question_then_per_type() -> None:
    annotations = [
        _annotation(1, ["yes"] * 8 + ["no"] * 2, "yes/no", "is the"),
        _annotation(2, ["2"] * 10, "number", "how many"),
        _annotation(3, ["red"] * 10, "other", "what color"),
        _annotation(4, ["blue"] * 10, "other", "what color"),
    ]
    scored = score_predictions(annotations, {1: "no", 2: "2", 3: "red", 4: "green", 99: "x"})
    assert [s.question_id for s in scored] == [1, 2, 3, 4]
    summary = summarize_accuracy(scored)
    assert summary["overall"] == pytest.approx(round(100 * (0.6 + 1 + 1 + 0) / 4, 2))
    assert summary["per_answer_type"] == {"number": 100.0, "other": 50.0, "yes/no": 60.0}
    assert summary["per_question_type"] == {"how many": 100.0, "is the": 60.0, "what color": 50.0}


def test_summary_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no scored questions"):
        summarize_accuracy([])


@pytest.mark.parametrize(
    ("prediction", "humans", "expected"),
    [
        # Unanimous humans: nothing is normalised, not even the prediction (the evaluator's rule).
        ("yes!", ["yes"] * 10, 0.0),
        ("Yes", ["yes"] * 10, 0.0),
        # Disagreeing humans: everything is normalised.
        ("yes!", ["yes"] * 9 + ["no"], 1.0),
        ("an dog", ["a dog"] * 5 + ["the dog"] * 3 + ["dogs"] * 2, 1.0),  # articles
        ("two dogs", ["2 dogs"] * 4 + ["3"] * 6, 1.0),  # number words
        ("dont", ["dont"] * 3 + ["no"] * 7, 0.9),  # contraction map on both sides
        ("don't", ["dont"] * 3 + ["no"] * 7, 0.0),  # the map writes a curly apostrophe
        ("1,000", ["1000"] * 2 + ["many"] * 8, 0.6),  # digit,digit comma removed
        ("10.5", ["10.5"] * 2 + ["10 5"] * 8, 0.6),  # a period before a digit is kept
    ],
)
def test_normalisation_cases_scored(prediction: str, humans: list[str], expected: float) -> None:
    assert question_accuracy(prediction, humans) == pytest.approx(expected)


def _official_structure(prediction: str, humans: list[str]) -> float:
    """The evaluator's loop shape: answer records with ids, each left out by inequality."""
    records = [{"answer": a.replace("\n", " ").replace("\t", " ").strip(), "answer_id": i}
               for i, a in enumerate(humans)]  # fmt: skip
    predicted = prediction.replace("\n", " ").replace("\t", " ").strip()
    if len({r["answer"] for r in records}) > 1:
        for record in records:
            record["answer"] = normalize_answer(record["answer"])
        predicted = normalize_answer(predicted)
    accs = []
    for left_out in records:
        others = [r for r in records if r != left_out]
        accs.append(min(1, len([r for r in others if r["answer"] == predicted]) / 3))
    return sum(accs) / len(accs)


def test_random_answer_sets_match_the_evaluators_loop() -> None:
    rng = random.Random(0)
    vocabulary = ["yes", "Yes", "yes.", "no", "two", "2", "a cat", "cat", "the cat!", "dont",
                  " red\n", "red", "1,000", "1000"]  # fmt: skip
    for _ in range(500):
        humans = [rng.choice(vocabulary) for _ in range(10)]
        prediction = rng.choice(vocabulary)
        got = question_accuracy(prediction, humans)
        assert got == pytest.approx(_official_structure(prediction, humans)), (prediction, humans)
