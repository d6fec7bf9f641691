"""VQA v1 files as published, and scoring a results file as the official evaluator does."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dialogclip.core.io import InputFileError, read_json
from dialogclip.evaluate.vqa_accuracy import score_predictions, summarize_accuracy

PUBLISHED_AT = "https://visualqa.org/vqa_v1_download.html"


def load_official_json(path: str | os.PathLike[str], key: str | None = None) -> Any:
    """Read an official VQA JSON file; a missing file names itself and where it is published.

    ``key`` selects the list inside (``questions`` or ``annotations``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"VQA file not found: {path} (VQA v1 files are published at {PUBLISHED_AT})"
        )
    data = read_json(path, "VQA JSON", hint=f"download it again ({PUBLISHED_AT})")
    if key is None:
        return data
    if not isinstance(data, dict) or key not in data:
        raise InputFileError(
            path, f"{path}: expected a JSON object with a '{key}' list (official format)"
        )
    return data[key]


def score_results(
    questions_json: str | os.PathLike[str],
    annotations_json: str | os.PathLike[str],
    results_json: str | os.PathLike[str],
) -> dict[str, Any]:
    """Official VQA accuracy of a results file ``[{"question_id": ..., "answer": ...}]``.

    As the official API requires, the results must answer exactly the questions of the
    questions file, and for a multiple-choice questions file every answer must be one of its
    question's ``multiple_choices``. Returns ``overall``, ``per_answer_type`` and
    ``per_question_type`` (percent, 2 decimals) and ``n_questions``.
    """
    questions = load_official_json(questions_json, "questions")
    question_ids = {q["question_id"] for q in questions}
    annotations = [
        record
        for record in load_official_json(annotations_json, "annotations")
        if record["question_id"] in question_ids
    ]
    results = read_json(results_json, "VQA results JSON")
    if not isinstance(results, list):
        raise InputFileError(
            results_json, f"{results_json}: results must be a JSON array of objects"
        )
    predictions = {item["question_id"]: item["answer"] for item in results}
    missing = question_ids - set(predictions)
    extra = set(predictions) - question_ids
    if missing or extra or len(predictions) != len(results):
        raise InputFileError(
            results_json,
            f"{results_json}: results do not correspond to the questions in {questions_json}: "
            f"{len(missing)} unanswered, {len(extra)} unknown, "
            f"{len(results) - len(predictions)} duplicated question ids",
        )
    not_a_choice = [
        q["question_id"]
        for q in questions
        if "multiple_choices" in q and predictions[q["question_id"]] not in q["multiple_choices"]
    ]
    if not_a_choice:
        raise InputFileError(
            results_json,
            f"{results_json}: {len(not_a_choice)} answer(s) are not one of their question's "
            f"multiple choices, e.g. question ids {not_a_choice[:5]}",
        )
    unannotated = question_ids - {record["question_id"] for record in annotations}
    if unannotated:
        raise InputFileError(
            annotations_json,
            f"{annotations_json}: no annotation for {len(unannotated)} question(s) of "
            f"{questions_json}, e.g. {sorted(unannotated)[:5]}",
        )
    return summarize_accuracy(score_predictions(annotations, predictions))
