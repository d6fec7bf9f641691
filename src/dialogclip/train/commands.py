"""Commands of the train stage (data part: frozen-tower caches, training rows; the run).

The data commands take a block of ingested shards (``--shards`` / ``--ingested``: one or more,
in order) and write one file for it.

``--params`` carries what the output depends on (the rule's params); ``--batch-size``,
``--device`` and ``--threads`` are machine settings (the rule's resources and threads), which
never change what is computed beyond float rounding.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dialogclip.core.cli_utils import add_params_argument
from dialogclip.core.machine import add_machine_arguments, apply_machine_arguments

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's commands to the `dialogclip` parser."""
    images = subparsers.add_parser(
        "embed-train-images",
        help="frozen image-tower embeddings I(x) of a block of ingested shards (training cache)",
    )
    _add_cache_arguments(images)
    images.set_defaults(func=_embed_train_images)

    captions = subparsers.add_parser(
        "embed-train-captions",
        help="frozen text-tower embeddings T(caption) of a block of ingested shards",
    )
    _add_cache_arguments(captions)
    captions.set_defaults(func=_embed_train_captions)

    rows = subparsers.add_parser(
        "train-rows",
        help="training rows of a block of shards: ingested images joined with one generator's "
        "dialogue",
    )
    add_params_argument(rows, "train rows (architecture, sample_form, include_truncated, text)")
    rows.add_argument(
        "--ingested", required=True, nargs="+", type=Path, help="ingested shards .parquet"
    )
    rows.add_argument(
        "--dialogue",
        required=True,
        nargs="+",
        type=Path,
        help="dialogue shards .parquet, one per ingested shard, in the same order",
    )
    rows.add_argument("--output", required=True, type=Path, help="rows .arrow to write")
    rows.add_argument("--stats", required=True, type=Path, help="stats .json to write")
    rows.set_defaults(func=_train_rows)

    train = subparsers.add_parser(
        "train",
        help="train one run (third tower or DRAFT) on its cached data; resumes from checkpoints",
    )
    add_params_argument(train, "one train.runs entry")
    train.add_argument("--rows", required=True, nargs="+", type=Path, help="rows .arrow files")
    train.add_argument(
        "--image-emb", required=True, nargs="+", type=Path, help="image caches, one per block"
    )
    train.add_argument(
        "--caption-emb", nargs="*", type=Path, default=[], help="caption caches (third tower)"
    )
    train.add_argument("--run-dir", required=True, type=Path, help="checkpoints and metrics")
    train.add_argument("--final", required=True, type=Path, help="trained tower .safetensors")
    train.add_argument("--metrics", required=True, type=Path, help="metrics .jsonl copy")
    machine = add_machine_arguments(train)
    machine.add_argument("--checkpoint-every", type=int, default=500, help="updates per checkpoint")
    machine.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    machine.add_argument(
        "--processes",
        type=int,
        default=1,
        help="data-parallel processes (one per GPU); >1 relaunches under torch.distributed.run",
    )
    train.set_defaults(func=_train)


def _add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_argument(parser, "tower (architecture, pretrained, quickgelu)")
    parser.add_argument(
        "--shards", required=True, nargs="+", type=Path, help="ingested shards .parquet, in order"
    )
    parser.add_argument("--output", required=True, type=Path, help="cache .arrow to write")
    machine = add_machine_arguments(
        parser,
        batch_size=256,
        batch_help="rows per forward pass",
        threads_help="CPU threads (torch, decoding)",
    )
    machine.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:N")


def _tower_spec(params: dict):
    from dialogclip.core.config import ConfigError
    from dialogclip.models.openclip import ClipSpec

    unknown = sorted(set(params) - {"architecture", "pretrained", "quickgelu"})
    if unknown or "architecture" not in params or "pretrained" not in params:
        raise ConfigError(
            f"--params needs architecture and pretrained (and optionally quickgelu), got {params}"
        )
    return ClipSpec(params["architecture"], params["pretrained"], params.get("quickgelu", "auto"))


def _embed_train_images(args: argparse.Namespace) -> int:
    apply_machine_arguments(args)
    from dialogclip.train.cache import embed_images

    embed_images(
        args.shards,
        _tower_spec(args.params),
        args.output,
        batch_size=args.batch_size,
        device=args.device,
        threads=args.threads or 1,
        weights_dir=args.weights_dir,
    )
    return 0


def _embed_train_captions(args: argparse.Namespace) -> int:
    apply_machine_arguments(args)
    from dialogclip.train.cache import embed_captions

    embed_captions(
        args.shards,
        _tower_spec(args.params),
        args.output,
        batch_size=args.batch_size,
        device=args.device,
        weights_dir=args.weights_dir,
    )
    return 0


def _train_rows(args: argparse.Namespace) -> int:
    from dialogclip.train.rows import build_rows, rows_settings_from_params, write_rows

    settings = rows_settings_from_params(args.params)
    write_rows(build_rows(args.ingested, args.dialogue, settings), args.output, args.stats)
    return 0


def _train(args: argparse.Namespace) -> int:
    import os
    import sys

    if args.processes > 1 and "LOCAL_RANK" not in os.environ:
        # One process per GPU: relaunch this same command under torchrun, which sets the
        # ranks the trainer's accelerate reads; the relaunched processes take this branch no more.
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        argv += [f"--nproc-per-node={args.processes}", "-m", "dialogclip.cli", *sys.argv[1:]]
        log.info("relaunching with %d processes: %s", args.processes, " ".join(argv))
        os.execv(sys.executable, argv)
    apply_machine_arguments(args)
    from dialogclip.core.config import ConfigError
    from dialogclip.train.datasets import ShardFiles
    from dialogclip.train.run import publish, train_run
    from dialogclip.train.trainer import RunSettings

    if len(args.rows) != len(args.image_emb) or (
        args.caption_emb and len(args.caption_emb) != len(args.rows)
    ):
        raise ConfigError(
            f"train: {len(args.rows)} rows files but {len(args.image_emb)} image caches and "
            f"{len(args.caption_emb)} caption caches (one of each per block)"
        )
    captions = args.caption_emb or [None] * len(args.rows)
    shards = [
        ShardFiles(rows, image, caption)
        for rows, image, caption in zip(args.rows, args.image_emb, captions, strict=True)
    ]
    machine = RunSettings(checkpoint_every=args.checkpoint_every, num_workers=args.num_workers)
    train_run(args.params, shards, args.run_dir, machine, args.weights_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        publish(args.run_dir, args.final, args.metrics)
    return 0
