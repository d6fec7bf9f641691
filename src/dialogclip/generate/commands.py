"""Commands of the generate stage.

- ``dialogclip generate-dialogue``: one generator on one ingested shard (rule generate, one job
  per shard and generator): the science as ``--params JSON`` (the ``generate`` section), the
  machine settings as flags (the rule's resources, ``MACHINE_FLAGS``); then, with
  ``--shards-per-engine`` above 1, the same engine makes pending shards' chunks (work_ahead.py);
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
import shutil
import time
from pathlib import Path
from typing import Any

from dialogclip.core.cli_utils import add_params_argument, parse_params
from dialogclip.core.config import ConfigError, section_from_dict
from dialogclip.core.io import read_json, write_json_atomic
from dialogclip.core.text_forms import TextForms
from dialogclip.generate.config import BACKENDS, MACHINE_FLAGS

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's commands to the `dialogclip` parser."""
    parser = subparsers.add_parser(
        "generate-dialogue",
        help="generate BLIP-2 or LLaVA dialogue for one ingested shard (resumable by chunk)",
    )
    parser.add_argument("--generator", required=True, choices=["blip2", "llava"])
    parser.add_argument("--shard", required=True, type=Path, help="ingested shard (Parquet)")
    parser.add_argument("--output", required=True, type=Path, help="dialogue shard (Parquet)")
    parser.add_argument("--stats", required=True, type=Path, help="per-shard stats (JSON)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="folder of finished chunks (default: <output dir>/.chunks/<output stem>)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the job")
    add_params_argument(parser, "generate")
    machine = parser.add_argument_group(
        "machine settings (the rule's resources of the same names; never change a row)"
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
    from dialogclip.generate.config import generate_config_from_dict, machine_settings
    from dialogclip.generate.runner import LazyEngine, generate_shard
    from dialogclip.generate.work_ahead import (
        RUNTIME_MARGIN,
        ShardLock,
        ShardPaths,
        shards_per_engine_here,
        work_ahead,
    )

    if args.shards_per_engine < 1:
        raise ConfigError(f"--shards-per-engine must be >= 1, got {args.shards_per_engine}")
    args.shards_per_engine = shards_per_engine_here(args.shards_per_engine)
    started = time.monotonic()
    config = generate_config_from_dict(args.params)
    machine = machine_settings(
        threads=args.threads, **{flag.name: getattr(args, flag.name) for flag in MACHINE_FLAGS}
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    own = ShardPaths(
        shard=args.shard,
        output=args.output,
        work_dir=args.work_dir or args.output.parent / ".chunks" / args.output.stem,
    )
    model_path = _fetched_model(args.model_dir, args.generator, config)
    engine = LazyEngine(args.generator, config, machine, model_path=model_path)
    lock = ShardLock(own.work_dir)
    try:
        lock.acquire_as_owner()
        try:
            # Its chunks stay until the job ends: killed while working ahead, it resumes from
            # them instead of generating its shard again.
            stats = generate_shard(
                shard_path=own.shard,
                output_path=own.output,
                stats_path=args.stats,
                work_dir=own.work_dir,
                generator=args.generator,
                config=config,
                backend=engine,
                machine=machine,
                keep_chunks=True,
            )
        finally:
            lock.release()
        ahead = None
        if args.shards_per_engine > 1:
            try:
                ahead = work_ahead(
                    own,
                    engine,
                    args.generator,
                    config,
                    machine,
                    max_shards=args.shards_per_engine - 1,
                    deadline=started + RUNTIME_MARGIN * args.runtime * 60 if args.runtime else None,
                    slowest_chunk_s=max(stats["timing"]["chunk_busy_s"], default=0.0),
                )
            except Exception:
                # The job's own shard is written: an error while working ahead must not fail
                # the job (Snakemake would delete that shard). The shard it was on keeps its
                # finished chunks; its own job makes the rest, and meets the error, if any.
                log.exception("working ahead stopped by an error; this job's shard is done")
    finally:
        engine_close_s = engine.close()
    shutil.rmtree(own.work_dir, ignore_errors=True)  # the job is done: its chunks can go
    # The whole job's account beside its own shard's: where the engine's start went, and what
    # it made ahead of other shards' jobs.
    wall_s = time.monotonic() - started
    start_s = engine.start_s
    stats["job"] = {
        "wall_s": round(wall_s, 3),
        "engine_start_s": None if start_s is None else round(start_s, 3),
        "engine_close_s": None if engine_close_s is None else round(engine_close_s, 3),
        "engine_start_share": None if start_s is None else round(start_s / wall_s, 4),
        "shards_per_engine": args.shards_per_engine,
        "work_ahead": ahead.as_dict() if ahead else None,
    }
    write_json_atomic(stats, args.stats)
    log.info(
        "job: %.1f s in all; engine start %s s (%s of the job); shards made ahead: %s",
        wall_s,
        stats["job"]["engine_start_s"],
        stats["job"]["engine_start_share"],
        ahead.shards if ahead else [],
    )
    return 0


def _fetched_model(model_dir: str, generator: str, config: Any) -> str | None:
    """The fetched folder the job loads (None: the config's model itself); checked against the
    config's model and revision. Such a job needs no hub: it runs offline."""
    if not model_dir:
        return None
    import os

    from dialogclip.generate.generators import generator_settings
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
    from dialogclip.generate.text_lengths import read_pairs, text_length_summary, token_counter

    stats = {path.stem: read_json(path) for path in args.stats}
    summary = summarize_stats(stats)
    forms = section_from_dict(TextForms, args.text, "text")
    counters = [token_counter(architecture) for architecture in args.architectures]
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
