"""Commands of the evaluate stage."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's commands to the `dialogclip` parser."""
    score = subparsers.add_parser(
        "vqa-score",
        help="score a VQA results file with the official VQA accuracy",
        description="Official VQA accuracy (overall, per answer type, per question type) of a "
        'results file [{"question_id": ..., "answer": ...}].',
    )
    score.add_argument("--questions", required=True, type=Path, help="*_questions.json")
    score.add_argument("--annotations", required=True, type=Path, help="*_annotations.json")
    score.add_argument("--results", required=True, type=Path, help="results JSON to score")
    score.add_argument("--output", type=Path, help="metrics JSON to write (default: stdout)")
    score.set_defaults(func=_vqa_score)


def _vqa_score(args: argparse.Namespace) -> int:
    import json

    from dialogclip.core.io import write_json_atomic
    from dialogclip.evaluate.vqa import score_results

    metrics = score_results(args.questions, args.annotations, args.results)
    log.info("VQA accuracy %.2f%% over %d questions", metrics["overall"], metrics["n_questions"])
    if args.output:
        write_json_atomic(metrics, args.output)
    else:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0
