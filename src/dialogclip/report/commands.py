"""Commands of the report stage.

- ``dialogclip dialogue-quality``: CLIPScore, parse success, finish reasons and token lengths of
  one generator's dialogue (rule ``dialogue_quality``);
- ``dialogclip report``: the tables beside the thesis' numbers and the plots (rule ``report``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dialogclip.core.cli_utils import add_dialogue_argument, add_params_argument, dialogue_shards
from dialogclip.core.config import section_from_dict
from dialogclip.core.io import write_json_atomic, write_parquet_atomic
from dialogclip.core.machine import add_machine_arguments, apply_machine_arguments

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's commands to the `dialogclip` parser."""
    quality = subparsers.add_parser(
        "dialogue-quality",
        help="CLIPScore, parse success, finish reasons, token lengths of one generator",
    )
    add_params_argument(quality, "text, report.clip and report.dialogue_quality")
    quality.add_argument("--generator", required=True, help="names the generator in the output")
    quality.add_argument(
        "--dialogue", required=True, nargs="+", type=Path, help="dialogue shards (Parquet)"
    )
    quality.add_argument(
        "--ingested",
        required=True,
        nargs="+",
        type=Path,
        help="ingested shards with the same names (captions and images)",
    )
    quality.add_argument("--output", required=True, type=Path, help="summary JSON")
    quality.add_argument("--per-image", required=True, type=Path, help="per-image Parquet")
    add_machine_arguments(quality, batch_size=64, batch_help="images per forward pass")
    quality.set_defaults(func=_dialogue_quality)

    report = subparsers.add_parser("report", help="tables beside the thesis' numbers, and plots")
    add_params_argument(report, "evaluate.models, generate.generators, report.decimals")
    report.add_argument("--thesis", required=True, type=Path, help="resources/thesis/numbers.yaml")
    report.add_argument("--results-dir", required=True, type=Path, help="the results/ folder")
    report.add_argument(
        "--metrics", nargs="*", type=Path, default=[], help="each training run's metrics.jsonl"
    )
    report.add_argument(
        "--ingested", nargs="*", type=Path, default=[], help="the ingested shards (the gallery)"
    )
    add_dialogue_argument(report)
    report.add_argument("--output-dir", required=True, type=Path, help="results/report")
    report.set_defaults(func=_report)


def _dialogue_quality(args: argparse.Namespace) -> int:
    from dialogclip.core.text_forms import TextForms
    from dialogclip.report.dialogue_quality import dialogue_quality
    from dialogclip.report.settings import DialogueQualitySettings, ReportClip

    apply_machine_arguments(args)
    params = dict(args.params)
    text = section_from_dict(TextForms, params.pop("text", {}), "text")
    clip = section_from_dict(ReportClip, params.pop("clip", {}), "report.clip")
    settings = section_from_dict(
        DialogueQualitySettings, params.pop("dialogue_quality", {}), "report.dialogue_quality"
    )
    if params:
        log.error("dialogue-quality: unknown --params key(s) %s", sorted(params))
        return 2
    summary, table = dialogue_quality(
        args.generator,
        args.dialogue,
        args.ingested,
        clip,
        settings,
        text,
        batch_size=args.batch_size,
        weights_dir=args.weights_dir,
    )
    write_parquet_atomic(table, args.per_image, metadata={"dialogue_quality": summary["clip"]})
    write_json_atomic(summary, args.output)
    score = summary["clipscore"]
    log.info(
        "%s: parse rate %s, CLIPScore dialogue %s / caption %s over %d images",
        args.generator,
        summary["parse_rate"],
        score["dialogue"]["mean"],
        score["caption"]["mean"],
        score["n_images"],
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from dialogclip.report.build import ReportInputs, build_report
    from dialogclip.report.settings import report_settings_from_params
    from dialogclip.report.thesis import load_thesis_numbers

    inputs = ReportInputs(
        results_dir=args.results_dir,
        thesis=load_thesis_numbers(args.thesis),
        settings=report_settings_from_params(args.params),
    )
    build_report(
        inputs,
        args.output_dir,
        metrics=args.metrics,
        ingested=args.ingested,
        dialogue=dialogue_shards(args.dialogue),
    )
    return 0
