"""Commands of the generate stage.

- ``dialogclip generate-dialogue``: one generator on one ingested shard (rule generate, one job
  per shard and generator): the science as ``--params JSON`` (the ``generate`` section), the
  machine settings as flags (the rule's resources, ``MACHINE_FLAGS``); then, with
  ``--shards-per-engine`` above 1, the same engine makes pending shards' chunks (the job's
  orchestration: job.py; work_ahead.py);
- ``dialogclip dialogue-summary``: per-shard parse rates and counts in one JSON, and how many
  dialogue texts (in the ``text`` form) exceed each configured CLIP tokenizer's context (rule
  dialogue_summary);
- ``dialogclip fetch-vlm-weights``: one generator's hub model at a pinned commit into
  ``resources/vlm_weights/`` (rule fetch_vlm_weights; dialogclip.models.vlm_weights).

The tiny checkpoints the tests and the demo generate with come from ``dialogclip world
make-tiny-models`` (``dialogclip.world``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from dialogclip.core.cli_utils import add_params_argument, parse_params
from dialogclip.core.config import ConfigError, section_from_dict
from dialogclip.core.io import read_json, write_json_atomic
from dialogclip.core.machine import add_machine_arguments, apply_machine_arguments
from dialogclip.core.text_forms import TextForms
from dialogclip.generate.config import BACKENDS, MACHINE_FLAGS

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's commands to the `dialogclip` parser."""
    parser = subparsers.add_parser(
        "generate-dialogue",
        help="generate one generator's dialogue for one ingested shard (resumable by chunk)",
    )
    parser.add_argument(
        "--generator",
        required=True,
        help="blip2, llava, or the name of a generate.vlms entry in --params",
    )
    parser.add_argument("--shard", required=True, type=Path, help="ingested shard (Parquet)")
    parser.add_argument("--output", required=True, type=Path, help="dialogue shard (Parquet)")
    parser.add_argument("--stats", required=True, type=Path, help="per-shard stats (JSON)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="folder of finished chunks (default: <output dir>/.chunks/<output stem>)",
    )
    add_params_argument(parser, "generate")
    # The rule's resources of the same names: never change a row.
    machine = add_machine_arguments(
        parser, weights_dir=False, threads_help="CPU threads of the job"
    )
    for flag in MACHINE_FLAGS:
        machine.add_argument(
            flag.flag,
            dest=flag.name,
            type=type(flag.default),
            default=flag.default,
            choices=BACKENDS if flag.name == "backend" else None,
            help=f"{flag.help} (default {flag.default})",
        )
    job = parser.add_argument_group(
        "engine reuse (rule resources; never change a row): see dialogclip.generate.work_ahead"
    )
    job.add_argument(
        "--shards-per-engine",
        type=int,
        default=1,
        help="shards one engine start serves: after its own shard the job makes the chunks of "
        "up to this many - 1 pending shards beside it (default 1: its own only)",
    )
    job.add_argument(
        "--model-dir",
        default="",
        help="load the model from this folder, fetched by `dialogclip fetch-vlm-weights` (the "
        "rule's resource model_dir); the config's model id and revision stay what the rows "
        "record (default: load the config's model itself, e.g. a local checkpoint)",
    )
    job.add_argument(
        "--runtime",
        type=int,
        default=0,
        help="the job's wall-time limit in minutes (Snakemake's runtime resource): working "
        "ahead starts no chunk that could end past 95%% of it (default 0: no limit)",
    )
    parser.set_defaults(func=_generate_dialogue)

    parser = subparsers.add_parser(
        "dialogue-summary",
        help="collect the per-shard stats of one generator into one JSON, with the dialogue "
        "texts' lengths for each CLIP tokenizer",
    )
    parser.add_argument("--stats", nargs="*", type=Path, default=[], help="per-shard stats")
    parser.add_argument(
        "--shards", nargs="*", type=Path, default=[], help="the dialogue shards (Parquet)"
    )
    parser.add_argument(
        "--text",
        type=parse_params,
        default={},
        help="JSON object with the 'text' section of the workflow config (the text form)",
    )
    parser.add_argument(
        "--architectures",
        nargs="*",
        default=[],
        help="open_clip architectures whose tokenizers measure the dialogue texts",
    )
    parser.add_argument("--output", required=True, type=Path)
    parser.set_defaults(func=_dialogue_summary)

    parser = subparsers.add_parser(
        "fetch-vlm-weights",
        help="copy a generator's hub model at a pinned commit into a local folder (once, on a "
        "machine with internet access)",
    )
    parser.add_argument("--model", required=True, help="hub id, e.g. llava-hf/llava-1.5-7b-hf")
    parser.add_argument("--revision", required=True, help="the commit (40 hex digits)")
    parser.add_argument("--output", required=True, type=Path, help="the folder to fill")
    parser.set_defaults(func=_fetch_vlm_weights)


def _generate_dialogue(args: argparse.Namespace) -> int:
    from dialogclip.generate.config import (
        generate_config_from_dict,
        generator_entry,
        machine_settings,
    )
    from dialogclip.generate.job import GenerationJob, run_generation_job
    from dialogclip.generate.work_ahead import ShardPaths, shards_per_engine_here

    if args.shards_per_engine < 1:
        raise ConfigError(f"--shards-per-engine must be >= 1, got {args.shards_per_engine}")
    started = time.monotonic()
    config = generate_config_from_dict(args.params)
    generator_entry(args.generator, config)  # an unknown name fails here, naming the entries
    machine = machine_settings(
        threads=args.threads, **{flag.name: getattr(args, flag.name) for flag in MACHINE_FLAGS}
    )
    apply_machine_arguments(args)
    job = GenerationJob(
        generator=args.generator,
        own=ShardPaths(
            shard=args.shard,
            output=args.output,
            work_dir=args.work_dir or args.output.parent / ".chunks" / args.output.stem,
        ),
        stats_path=args.stats,
        config=config,
        machine=machine,
        shards_per_engine=shards_per_engine_here(args.shards_per_engine),
        runtime_min=args.runtime,
        model_path=_fetched_model(args.model_dir, args.generator, config),
    )
    run_generation_job(job, started)
    return 0


def _fetched_model(model_dir: str, generator: str, config: Any) -> str | None:
    """The fetched folder the job loads (None: the config's model itself); checked against the
    config's model and revision. Such a job needs no hub: it runs offline."""
    if not model_dir:
        return None
    import os

    from dialogclip.generate.config import generator_settings
    from dialogclip.models.vlm_weights import require_fetched

    settings = generator_settings(generator, config)
    folder = require_fetched(model_dir, settings.model, settings.revision)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[name] = "1"  # read when transformers / vLLM first import the hub client
    log.info("model %s at %s from %s", settings.model, settings.revision, folder)
    return str(folder)


def _fetch_vlm_weights(args: argparse.Namespace) -> int:
    from dialogclip.models.vlm_weights import fetch_vlm_weights

    fetch_vlm_weights(args.model, args.revision, args.output)
    return 0


def summarize_stats(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Totals over shards plus each shard's parse rate (``stats``: shard name -> its stats)."""
    totals = {"input": 0, "downloaded": 0, "image_errors": 0, "generated": 0}
    parse: dict[str, int] = {}
    for shard_stats in stats.values():
        for key in totals:
            totals[key] += shard_stats["rows"][key]
        for status, count in shard_stats["parse"].items():
            parse[status] = parse.get(status, 0) + count
    return {
        "shards": len(stats),
        "rows": totals,
        "parse": dict(sorted(parse.items())),
        "parse_rate": (
            round(parse.get("ok", 0) / totals["generated"], 6) if totals["generated"] else None
        ),
        "parse_rate_per_shard": {name: s["parse_rate"] for name, s in sorted(stats.items())},
    }


def _dialogue_summary(args: argparse.Namespace) -> int:
    from dialogclip.generate.text_lengths import (
        architecture_token_counter,
        read_pairs,
        text_length_summary,
    )

    stats = {path.stem: read_json(path) for path in args.stats}
    summary = summarize_stats(stats)
    forms = section_from_dict(TextForms, args.text, "text")
    counters = [architecture_token_counter(architecture) for architecture in args.architectures]
    summary["text"] = dataclasses.asdict(forms)
    summary["text_lengths"] = text_length_summary(read_pairs(args.shards), forms, counters)
    write_json_atomic(summary, args.output)
    log.info(
        "%d shard(s): %d dialogues, parse rate %s",
        summary["shards"],
        summary["rows"]["generated"],
        summary["parse_rate"],
    )
    lengths = summary["text_lengths"]
    for architecture, figures in lengths["architectures"].items():
        log.info(
            "%s: %d of %d dialogue texts exceed its %d-token context (%s); under "
            "long_texts: drop_pairs %d would lose pairs",
            architecture,
            figures["n_too_long"],
            lengths["n_texts"],
            figures["context_length"],
            figures["fraction_too_long"],
            figures["drop_pairs"]["n_losing_pairs"],
        )
    return 0
