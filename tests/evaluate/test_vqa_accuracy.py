"""VQA accuracy: the official evaluator's cases, checked by hand-computed values and against a
transcription of the evaluator's loop (GT-Vision-Lab/VQA vqaEval.py at a013f00) on a seeded
fixture heavy in contractions, punctuation, number words and articles."""

import copy
import math
import random
import re
from fractions import Fraction

import pytest

from dialogclip.evaluate.vqa_accuracy import (
    normalize_answer,
    normalize_punctuation,
    question_accuracy,
    round_half_away,
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
        ("dont", "don't"),  # straight apostrophe since upstream 458a8b2
        ("isnt it", "isn't it"),
        ("youre", "you're"),
        ("5 oclock", "5 o'clock"),
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
        ("don't", ["dont"] * 3 + ["no"] * 7, 0.9),  # ... and it writes a straight apostrophe
        ("1,000", ["1000"] * 2 + ["many"] * 8, 0.6),  # digit,digit comma removed
        ("10.5", ["10.5"] * 2 + ["10 5"] * 8, 0.6),  # a period before a digit is kept
    ],
)
def test_normalisation_cases_scored(prediction: str, humans: list[str], expected: float) -> None:
    assert question_accuracy(prediction, humans) == pytest.approx(expected)


# --- the two cases of issue 7 (the contraction map of upstream master) ---------------------


def test_dont_know_written_both_ways_is_one_answer() -> None:
    # Humans disagree (two spellings), so all are normalised: "dont know" -> "don't know".
    humans = ["dont know"] * 3 + ["don't know"] * 7
    assert question_accuracy("dont know", humans) == 1.0


def test_isnt_matches_the_straight_apostrophe() -> None:
    assert question_accuracy("isn't", ["isnt"] * 5 + ["isn't"] * 5) == 1.0


def test_digits_are_ascii_only_as_in_python_2() -> None:
    # "\d" without re.UNICODE in Python 2: an Arabic-Indic five does not protect the period.
    assert normalize_punctuation("1.\u0665") == "1\u0665"
    assert normalize_punctuation("1.5") == "1.5"


def test_rounding_sends_ties_away_from_zero_as_python_2() -> None:
    # 1 correct of 800: 100 * 1 / 800 = 0.125 exactly; Python 3's round would give 0.12.
    assert round_half_away(0.125, 2) == 0.13
    assert round_half_away(2.675, 2) == 2.67  # the float is just below 2.675: no tie
    annotations = [_annotation(q, ["yes"] * 10, "yes/no", "is the") for q in range(800)]
    predictions = {q: "yes" if q == 0 else "no" for q in range(800)}
    summary = summarize_accuracy(score_predictions(annotations, predictions))
    assert summary["overall"] == 0.13
    assert summary["per_answer_type"] == {"yes/no": 0.13}


def test_identical_records_are_left_out_together() -> None:
    # Records without answer_id compare equal when their answers do: the evaluator's
    # `item != gtAnsDatum` then leaves out all of them at once.
    record = {"question_id": 1, "answer_type": "other", "question_type": "what",
              "answers": [{"answer": "cat"}] * 4 + [{"answer": "dog"}] * 6}  # fmt: skip
    (scored,) = score_predictions([record], {1: "cat"})
    # Leaving out any "cat" drops all four (0 matches); leaving out a "dog" keeps 4 (credit 1).
    assert scored.accuracy == pytest.approx(0.6)
    assert question_accuracy("cat", ["cat"] * 4 + ["dog"] * 6) == 1.0  # distinct records


# --- naive reference: upstream's evaluate() loop, transcribed -------------------------------

UPSTREAM_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
UPSTREAM_MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3",
                       "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
                       "nine": "9", "ten": "10"}  # fmt: skip
UPSTREAM_ARTICLES = ["a", "an", "the"]
# Python 2 semantics of the published patterns (no re.UNICODE flag: \d is [0-9]).
UPSTREAM_PERIOD_STRIP = re.compile("(?!<=\\d)(\\.)(?!\\d)", re.ASCII)
UPSTREAM_COMMA_STRIP = re.compile("(\\d)(\\,)(\\d)", re.ASCII)
UPSTREAM_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                  ">", "<", "@", "`", ",", "?", "!"]  # fmt: skip


def _upstream_process_punctuation(in_text: str) -> str:
    out_text = in_text
    for p in UPSTREAM_PUNCT:
        if (p + " " in in_text or " " + p in in_text) or (
            re.search(UPSTREAM_COMMA_STRIP, in_text) is not None
        ):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    # re.UNICODE lands in `count`, as upstream passes it positionally.
    return UPSTREAM_PERIOD_STRIP.sub("", out_text, int(re.UNICODE))


def _upstream_process_digit_article(in_text: str, contractions: dict[str, str]) -> str:
    out_text = []
    for word in in_text.lower().split():
        word = UPSTREAM_MANUAL_MAP.setdefault(word, word)
        if word not in UPSTREAM_ARTICLES:
            out_text.append(word)
    for word_id, word in enumerate(out_text):
        if word in contractions:
            out_text[word_id] = contractions[word]
    return " ".join(out_text)


def _python2_round(value: float, digits: int) -> float:
    """Python 2's round: exact value, ties away from zero (written with fractions)."""
    scaled = Fraction(value) * 10**digits
    sign = 1 if scaled >= 0 else -1
    return float(Fraction(sign * math.floor(abs(scaled) + Fraction(1, 2)), 10**digits))


def _upstream_evaluate(
    annotations: list[dict], results: dict[int, str], contractions: dict[str, str] | None = None
) -> tuple[dict, dict]:
    """Per-question accuracy and the accuracy dict, as VQAEval.evaluate/setAccuracy compute
    them (the annotation records are mutated in place upstream: work on a copy)."""
    contractions = UPSTREAM_CONTRACTIONS if contractions is None else contractions
    gts = copy.deepcopy(annotations)
    acc_qa, acc_ques_type, acc_ans_type, per_question = [], {}, {}, {}
    for gt in gts:
        for ans_dic in gt["answers"]:
            ans_dic["answer"] = ans_dic["answer"].replace("\n", " ")
            ans_dic["answer"] = ans_dic["answer"].replace("\t", " ")
            ans_dic["answer"] = ans_dic["answer"].strip()
        res_ans = results[gt["question_id"]]
        res_ans = res_ans.replace("\n", " ")
        res_ans = res_ans.replace("\t", " ")
        res_ans = res_ans.strip()
        gt_acc = []
        gt_answers = [ans["answer"] for ans in gt["answers"]]
        if len(set(gt_answers)) > 1:
            for ans_dic in gt["answers"]:
                ans_dic["answer"] = _upstream_process_punctuation(ans_dic["answer"])
                ans_dic["answer"] = _upstream_process_digit_article(ans_dic["answer"], contractions)
            res_ans = _upstream_process_punctuation(res_ans)
            res_ans = _upstream_process_digit_article(res_ans, contractions)
        for gt_ans_datum in gt["answers"]:
            other_gt_ans = [item for item in gt["answers"] if item != gt_ans_datum]
            matching_ans = [item for item in other_gt_ans if item["answer"] == res_ans]
            gt_acc.append(min(1, float(len(matching_ans)) / 3))
        avg_gt_acc = float(sum(gt_acc)) / len(gt_acc)
        acc_qa.append(avg_gt_acc)
        acc_ques_type.setdefault(gt["question_type"], []).append(avg_gt_acc)
        acc_ans_type.setdefault(gt["answer_type"], []).append(avg_gt_acc)
        per_question[gt["question_id"]] = avg_gt_acc

    def percent(values: list[float]) -> float:
        return _python2_round(100 * float(sum(values)) / len(values), 2)

    accuracy = {
        "overall": percent(acc_qa),
        "perQuestionType": {k: percent(v) for k, v in acc_ques_type.items()},
        "perAnswerType": {k: percent(v) for k, v in acc_ans_type.items()},
    }
    return per_question, accuracy


# Groups of spellings of one answer, the kind of variation the normalisation exists for.
ANSWER_GROUPS = [
    ["dont know", "don't know", "Dont know", "dont know.", "i dont know", "idk"],
    ["dont", "don't", "do not", "dont!"],
    ["isnt", "isn't", "is not", "isnt it", "isn't it?"],
    ["cant", "can't", "cannot", "cant tell", "can't tell", "can\u2019t tell"],
    ["wont", "won't", "will not"],
    ["thats", "that's", "that's it", "thats it"],
    ["youre", "you're", "you are"],
    ["5 oclock", "5 o'clock", "five oclock", "5:00", "five o'clock"],
    ["whats", "what's", "whats up"],
    ["hes", "he's", "he is", "Hes"],
    ["two", "Two", "2", "2.", "two!", "2 dogs", "two dogs", "the two dogs"],
    ["none", "0", "zero", "None", "no one", "nothing"],
    ["ten", "10", "10.5", "10,5", "1,000", "1000", "one thousand"],
    ["a dog", "the dog", "dog", "The Dog.", "an dog", "dogs", "dog!", " dog\n", "dog\t"],
    ["black/white", "black / white", "black and white", "black-white", "(black) white"],
    ["hot-dog", "hot dog", "hotdog", "hot_dog", "hot dog?"],
    ["yes", "Yes", "yes.", "yes!", "yes !", "yes,", "yeah", "no", "No.", "nope"],
    ["its", "it's", "it is", "its a cat", "it's a cat", "a cat", "cat"],
]
ANSWER_TYPES = ["yes/no", "number", "other"]
QUESTION_TYPES = ["is the", "how many", "what is", "what color", "none of the above"]


def _contraction_heavy_fixture(seed: int, n_questions: int) -> tuple[list[dict], dict[int, str]]:
    rng = random.Random(seed)
    annotations, results = [], {}
    for qid in range(n_questions):
        group = rng.choice(ANSWER_GROUPS)
        if rng.random() < 0.2:  # unanimous humans: compared without normalisation
            answers = [rng.choice(group)] * 10
        else:
            pool = rng.sample(group, k=min(len(group), rng.randint(2, 4)))
            answers = [rng.choice(pool) for _ in range(10)]
        # Official records (distinct answer_id); a few without ids exercise record equality.
        with_ids = rng.random() < 0.9
        annotations.append(
            {
                "question_id": 1000 + qid,
                "answer_type": rng.choice(ANSWER_TYPES),
                "question_type": rng.choice(QUESTION_TYPES),
                "answers": [
                    {
                        "answer": a,
                        "answer_confidence": "yes",
                        **({"answer_id": i + 1} if with_ids else {}),
                    }
                    for i, a in enumerate(answers)
                ],
            }
        )
        source = group if rng.random() < 0.8 else rng.choice(ANSWER_GROUPS)
        results[1000 + qid] = rng.choice(source)
    return annotations, results


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_transcription_of_the_upstream_loop(seed: int) -> None:
    annotations, results = _contraction_heavy_fixture(seed, 600)
    expected_per_question, expected = _upstream_evaluate(annotations, results)
    scored = score_predictions(annotations, results)
    assert {item.question_id: item.accuracy for item in scored} == expected_per_question
    summary = summarize_accuracy(scored)
    assert summary["overall"] == expected["overall"]
    assert summary["per_question_type"] == expected["perQuestionType"]
    assert summary["per_answer_type"] == expected["perAnswerType"]
    assert summary["n_questions"] == 600
    # The fixture exercises what it is meant to: without the contraction map the official
    # overall accuracy moves by more than a point.
    _, without_contractions = _upstream_evaluate(annotations, results, contractions={})
    assert abs(without_contractions["overall"] - expected["overall"]) > 1.0


def test_the_tables_are_upstreams() -> None:
    from dialogclip.evaluate.vqa_accuracy import (
        ARTICLES,
        CONTRACTIONS,
        NUMBER_WORDS,
        PUNCTUATION,
    )

    assert CONTRACTIONS == UPSTREAM_CONTRACTIONS
    assert all("\u2019" not in k + v for k, v in CONTRACTIONS.items())
    # setdefault (as upstream) adds word -> word entries to the map; the published ones differ.
    assert {k: v for k, v in UPSTREAM_MANUAL_MAP.items() if k != v} == NUMBER_WORDS
    assert set(ARTICLES) == set(UPSTREAM_ARTICLES)
    assert list(PUNCTUATION) == UPSTREAM_PUNCT
