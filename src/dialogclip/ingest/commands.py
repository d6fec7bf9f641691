"""Commands of the ingest stage: download a shard, re-try its failures, summarise the run."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dialogclip.core.cli_utils import add_params_argument

if TYPE_CHECKING:
    from dialogclip.ingest.shard import ShardJob

log = logging.getLogger(__name__)

CC3M_DOWNLOAD_PAGE = "https://ai.google.com/research/ConceptualCaptions/download"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's commands to the `dialogclip` parser."""
    shard = subparsers.add_parser(
        "ingest-shard",
        help="download the images of one shard of the CC3M TSV into a Parquet shard",
        description="Read rows START:STOP of the TSV, download their images with img2dataset "
        "and write one Parquet row per TSV row (failures included) plus a stats JSON.",
    )
    _add_job_arguments(shard)
    shard.add_argument("--rows", required=True, type=_row_range, help="START:STOP (0-based)")
    shard.set_defaults(func=_ingest_shard)

    retry = subparsers.add_parser(
        "ingest-retry",
        help="re-try the failed downloads of an ingested shard",
        description="Download again the rows of --input whose download failed (with an "
        "error kind listed in ingest.retry_failed.error_kinds) and write the merged shard.",
    )
    _add_job_arguments(retry)
    retry.add_argument("--input", required=True, type=Path, help="first-pass shard Parquet")
    retry.set_defaults(func=_ingest_retry)

    summary = subparsers.add_parser(
        "ingest-summary",
        help="merge per-shard stats into summary.json and print a readable summary",
    )
    summary.add_argument("--stats", required=True, nargs="+", type=Path, help="shard stats")
    summary.add_argument("--output", required=True, type=Path, help="summary JSON to write")
    summary.set_defaults(func=_ingest_summary)


def _add_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tsv", required=True, type=Path, help="the CC3M TSV")
    parser.add_argument("--shard", required=True, help="shard name, e.g. 00003")
    add_params_argument(parser, "ingest")
    parser.add_argument(
        "--download-threads", type=int, default=64, help="img2dataset threads (default 64)"
    )
    parser.add_argument("--output", required=True, type=Path, help="shard Parquet to write")
    parser.add_argument("--stats", required=True, type=Path, help="shard stats JSON to write")


def _row_range(text: str) -> range:
    try:
        start, stop = (int(part) for part in text.split(":"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected START:STOP, got {text!r}") from err
    if not 0 <= start < stop:
        raise argparse.ArgumentTypeError(f"expected 0 <= START < STOP, got {text!r}")
    return range(start, stop)


def _job(args: argparse.Namespace) -> ShardJob:
    from dialogclip.ingest.shard import ShardJob

    if not args.tsv.is_file():
        raise FileNotFoundError(
            f"CC3M TSV not found: {args.tsv.resolve()} (Conceptual Captions is published at "
            f"{CC3M_DOWNLOAD_PAGE}; download it and point cc3m.tsv at it)"
        )
    return ShardJob(
        shard=args.shard,
        tsv=args.tsv,
        output=args.output,
        stats=args.stats,
        thread_count=args.download_threads,
    )


def _ingest_shard(args: argparse.Namespace) -> int:
    from dialogclip.ingest.settings import ingest_settings
    from dialogclip.ingest.shard import ingest_shard

    settings = ingest_settings(args.params)
    ingest_shard(_job(args), args.rows, settings)
    return 0


def _ingest_retry(args: argparse.Namespace) -> int:
    from dialogclip.ingest.settings import ingest_settings
    from dialogclip.ingest.shard import retry_failed

    settings = ingest_settings(args.params)
    if not args.input.is_file():
        raise FileNotFoundError(f"first-pass shard not found: {args.input}")
    retry_failed(_job(args), args.input, settings, settings.retry_failed.error_kinds)
    return 0


def _ingest_summary(args: argparse.Namespace) -> int:
    from dialogclip.core.io import read_json, write_json_atomic
    from dialogclip.ingest.stats import format_summary, summarize

    summary = summarize(read_json(path) for path in args.stats)
    write_json_atomic(summary, args.output)
    text = format_summary(summary)
    log.info("summary written to %s\n%s", args.output, text)
    # The summary is this command's product: print it where the person running Snakemake sees it.
    sys.stdout.write(text + "\n")
    return 0
