"""VQA accuracy exactly as the official evaluator computes it.

Reference: GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` at commit
a013f0043c1e2cdc995922dfe257f7149aa9af06 (2021-03-11, "Fixed processing answers bug"), the newest
commit of its master branch. Two upstream changes matter here and are followed:

- 458a8b2 (2016-10-08) rewrote the contraction map with straight apostrophes (``dont`` ->
  ``don't``); before it, most entries produced a typographic apostrophe (``don’t``), so a
  normalised ``dont`` never matched a human's ``don't``;
- a013f00 normalises the human answers *and* the prediction only when the ten human answers
  (after cleaning) are not all identical; unanimous answers are compared verbatim.

Per question: newlines/tabs become spaces and answers are stripped; when the humans disagree,
every answer goes through the punctuation step then the digit/article/contraction step; the
accuracy is the mean, over the ten leave-one-out subsets of the human answers, of
``min(1, #matches in the subset / 3)``. Overall, per answer type and per question type accuracies
are means of the per-question values, in percent, rounded to 2 decimals as Python 2 rounds (the
evaluator is Python 2 code). The normalisation reproduces the evaluator's quirks on purpose (see
comments).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

# The evaluator's data tables, as published at a013f00. The keys "Id've", "I'dve", "Im" and
# "Ive" can never match (answers are lower-cased first); they are kept for fidelity.
CONTRACTIONS = {
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
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
)  # fmt: skip
# As published: "(?!<=\d)" is a negative *lookahead* (a typo for a lookbehind), so a period is
# kept only when a digit follows it ("2.5" stays, "2." loses its period).
# The evaluator runs under Python 2, where a pattern compiled without re.UNICODE gives \d the
# meaning [0-9] even on unicode text; Python 3 would also match other scripts' digits.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
COMMA_STRIP = re.compile(r"(\d)(,)(\d)", re.ASCII)
# The evaluator passes re.UNICODE (32) positionally to re.sub, i.e. as `count`: at most 32
# periods are removed. Kept for exact agreement.
PERIOD_STRIP_COUNT = int(re.UNICODE)
LEAVE_ONE_OUT_MATCHES = 3  # an answer given by 3 of the other 9 humans counts fully


def normalize_punctuation(text: str) -> str:
    """The evaluator's punctuation step: drop or space out marks, then strip lone periods."""
    out = text
    # Decided on the original text, as the evaluator does: a mark next to a space, or any
    # digit,digit in the text, means the mark is deleted; otherwise it becomes a space.
    has_digit_comma = COMMA_STRIP.search(text) is not None
    for mark in PUNCTUATION:
        if mark + " " in text or " " + mark in text or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=PERIOD_STRIP_COUNT)


def normalize_words(text: str) -> str:
    """Lower-case; number words to digits; drop articles; expand contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """Both normalisation steps, in the evaluator's order."""
    return normalize_words(normalize_punctuation(text))


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def question_accuracy(
    prediction: str,
    human_answers: Sequence[str],
    other_fields: Sequence[Mapping[str, Any]] | None = None,
) -> float:
    """Accuracy in [0, 1] of ``prediction`` against the (ten) human answers of one question.

    ``other_fields``: the rest of each answer record (``answer_id``, ``answer_confidence``).
    The evaluator leaves out one record at a time by dict inequality, so records equal in every
    field (after normalisation) are left out together; None means every answer is a distinct
    record, as in the official files (``answer_id`` 1..10).
    """
    humans = [_clean(answer) for answer in human_answers]
    predicted = _clean(prediction)
    # a013f00: normalise only when the cleaned human answers disagree, prediction included.
    if len(set(humans)) > 1:
        humans = [normalize_answer(answer) for answer in humans]
        predicted = normalize_answer(predicted)
    n = len(humans)
    if other_fields is None:
        rest: Sequence[Any] = range(n)  # every record distinct
    else:
        if len(other_fields) != n:
            raise ValueError(f"{len(other_fields)} answer records for {n} answers")
        rest = other_fields
    scores = []
    for i in range(n):
        others = [humans[j] for j in range(n) if humans[j] != humans[i] or rest[j] != rest[i]]
        matches = sum(answer == predicted for answer in others)
        scores.append(min(1.0, matches / LEAVE_ONE_OUT_MATCHES))
    return sum(scores) / len(scores)


def round_half_away(value: float, digits: int) -> float:
    """``round(value, digits)`` as Python 2 computes it: the float's exact binary value rounded
    to ``digits`` decimals, ties away from zero (Python 3's round sends ties to even:
    ``round(0.125, 2)`` is 0.12 there, 0.13 in Python 2 and in the official results)."""
    quantum = Decimal(1).scaleb(-digits)
    return float(Decimal(value).quantize(quantum, rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class ScoredQuestion:
    """One question's accuracy in [0, 1] with the types it is reported under."""

    question_id: int
    answer_type: str
    question_type: str
    accuracy: float


def score_predictions(
    annotations: Iterable[Mapping[str, Any]], predictions: Mapping[int, str]
) -> list[ScoredQuestion]:
    """Score every annotated question that has a prediction (official annotation records)."""
    scored = []
    for record in annotations:
        qid = record["question_id"]
        if qid not in predictions:
            continue
        humans = [answer["answer"] for answer in record["answers"]]
        answer_ids = [answer.get("answer_id") for answer in record["answers"]]
        # Distinct answer_ids (the official files) make every record distinct: skip comparing
        # whole records.
        other_fields = (
            None
            if None not in answer_ids and len(set(answer_ids)) == len(answer_ids)
            else [{k: v for k, v in a.items() if k != "answer"} for a in record["answers"]]
        )
        scored.append(
            ScoredQuestion(
                question_id=qid,
                answer_type=record["answer_type"],
                question_type=record["question_type"],
                accuracy=question_accuracy(predictions[qid], humans, other_fields),
            )
        )
    return scored


def summarize_accuracy(scored: Sequence[ScoredQuestion], digits: int = 2) -> dict[str, Any]:
    """Overall, per answer type and per question type accuracy in percent, rounded."""
    if not scored:
        raise ValueError("no scored questions: the results match no annotated question")

    def mean_percent(values: list[float]) -> float:
        # Same operations in the same order as the evaluator: 100 * sum first, then / count.
        return round_half_away(100 * float(sum(values)) / len(values), digits)

    per_answer: dict[str, list[float]] = defaultdict(list)
    per_question: dict[str, list[float]] = defaultdict(list)
    for item in scored:
        per_answer[item.answer_type].append(item.accuracy)
        per_question[item.question_type].append(item.accuracy)
    return {
        "overall": mean_percent([item.accuracy for item in scored]),
        "per_answer_type": {k: mean_percent(v) for k, v in sorted(per_answer.items())},
        "per_question_type": {k: mean_percent(v) for k, v in sorted(per_question.items())},
        "n_questions": len(scored),
    }
