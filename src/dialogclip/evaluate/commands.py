"""Commands of the evaluate stage."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from dialogclip.core.cli_utils import add_params_argument
from dialogclip.core.machine import add_machine_arguments, apply_machine_arguments

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's commands to the `dialogclip` parser."""
    tiny = subparsers.add_parser("make-tiny-clip", help="random tiny-clip checkpoint (tests/demo)")
    tiny.add_argument("--output", required=True, type=Path, help=".safetensors to write")
    tiny.add_argument("--seed", type=int, default=0, help="torch seed of the random weights")
    tiny.set_defaults(func=_make_tiny_clip)

    fetch = subparsers.add_parser(
        "fetch-clip-weights",
        help="download an open_clip pretrained tag's weights once (needs network)",
    )
    fetch.add_argument("--architecture", required=True, help="open_clip model, e.g. ViT-B-32")
    fetch.add_argument("--pretrained", required=True, help="tag, e.g. laion2b_s34b_b79k")
    fetch.add_argument("--weights-dir", required=True, type=Path, help="config weights_dir")
    fetch.set_defaults(func=_fetch_clip_weights)

    embed = subparsers.add_parser("embed-images", help="embed an evaluation set's images once")
    add_params_argument(embed, "evaluate job (model, dataset, files)")
    _add_machine_arguments(embed)
    embed.add_argument("--output", required=True, type=Path, help=".safetensors to write")
    embed.set_defaults(func=_embed_images)

    retrieval = subparsers.add_parser("eval-retrieval", help="COCO zero-shot retrieval")
    add_params_argument(retrieval, "evaluate job (model, dataset, files)")
    _add_machine_arguments(retrieval)
    retrieval.add_argument("--image-emb", required=True, type=Path, help="from embed-images")
    retrieval.add_argument("--output", required=True, type=Path, help="metrics JSON")
    retrieval.set_defaults(func=_eval_retrieval)

    vqa = subparsers.add_parser("eval-vqa", help="VQA v1 multiple choice (official scoring)")
    add_params_argument(vqa, "evaluate job (model, dataset, files)")
    _add_machine_arguments(vqa)
    vqa.add_argument("--image-emb", required=True, type=Path, help="from embed-images")
    vqa.add_argument("--results", required=True, type=Path, help="official results JSON")
    vqa.add_argument("--output", required=True, type=Path, help="metrics JSON")
    vqa.set_defaults(func=_eval_vqa)

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


def _add_machine_arguments(parser: argparse.ArgumentParser) -> None:
    add_machine_arguments(parser, batch_size=64, batch_help="images or texts per forward pass")


def _make_tiny_clip(args: argparse.Namespace) -> int:
    from dialogclip.models.openclip import make_tiny_clip

    make_tiny_clip(args.output, args.seed)
    return 0


def _fetch_clip_weights(args: argparse.Namespace) -> int:
    from dialogclip.models.weights import fetch_clip_weights

    fetch_clip_weights(args.architecture, args.pretrained, args.weights_dir)
    return 0


def _embed_images(args: argparse.Namespace) -> int:
    apply_machine_arguments(args)
    from dialogclip.evaluate.jobs import run_embed_images
    from dialogclip.evaluate.settings import job_from_params

    run_embed_images(job_from_params(args.params), args.output, args.batch_size, args.weights_dir)
    return 0


def _eval_retrieval(args: argparse.Namespace) -> int:
    apply_machine_arguments(args)
    from dialogclip.evaluate.jobs import run_retrieval
    from dialogclip.evaluate.settings import job_from_params

    record = run_retrieval(
        job_from_params(args.params), args.image_emb, args.output, args.batch_size, args.weights_dir
    )
    log.info("%s %s: %s", record["name"], record["dataset"], record["metrics"])
    return 0


def _eval_vqa(args: argparse.Namespace) -> int:
    apply_machine_arguments(args)
    from dialogclip.evaluate.jobs import run_vqa
    from dialogclip.evaluate.settings import job_from_params

    job = job_from_params(args.params)
    record = run_vqa(
        job, args.image_emb, args.results, args.output, args.batch_size, args.weights_dir
    )
    log.info("%s %s: %s", record["name"], record["dataset"], record["metrics"])
    return 0


def _vqa_score(args: argparse.Namespace) -> int:
    from dialogclip.core.io import write_json_atomic
    from dialogclip.evaluate.vqa import score_results

    metrics = score_results(args.questions, args.annotations, args.results)
    log.info("VQA accuracy %.2f%% over %d questions", metrics["overall"], metrics["n_questions"])
    if args.output:
        write_json_atomic(metrics, args.output)
    else:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0
