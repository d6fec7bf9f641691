"""Commands of the miniature world: ``dialogclip world <command> ...``.

- ``write DIR``: the world's data sets in the pipeline's formats (:mod:`.formats`);
- ``pretrain-clip --output FILE``: the baseline CLIP, pretrained on partial captions (:mod:`.clip`);
- ``train-vlm {blip2,llava} --output DIR``: a world VLM trained on the generation prompts
  (:mod:`.vlms`); ``--params`` carries the prompts (the workflow's ``generate`` section);
- ``build-models DIR --config CONFIG``: all three models at once, small enough to commit, with
  ``build.json`` (settings, prompts, times, behaviour on held-out scenes; :mod:`.build`);
- ``expand-clip``: the open_clip checkpoint of the compact CLIP ``build-models`` writes;
- ``check-grounding``: how many attributes the dialogue of a pipeline run states truly, and how
  many LLaVA replies parse, against the scene records (:mod:`.grounding`);
- ``make-tiny-models DIR``: tiny *random* LLaVA-1.5 and BLIP-2 checkpoints for the tests
  (:mod:`.tiny_models`; rule ``tiny_models``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

from dialogclip.core.cli_utils import add_params_argument
from dialogclip.core.config import section_from_dict
from dialogclip.core.io import TMP_PREFIX, write_json_atomic

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dialogclip world`` and its subcommands to the `dialogclip` parser."""
    world = subparsers.add_parser("world", help="the miniature world: data, models, checks")
    commands = world.add_subparsers(dest="world_command", metavar="<command>", required=True)

    parser = commands.add_parser("write", help="write the world's data sets into DIR")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="the world seed")
    add_params_argument(parser, "world sizes")
    parser.set_defaults(func=_write)

    parser = commands.add_parser("pretrain-clip", help="pretrain the baseline CLIP")
    parser.add_argument("--output", required=True, type=Path, help="checkpoint (.safetensors)")
    parser.add_argument("--seed", type=int, default=0, help="the world seed")
    add_params_argument(parser, "CLIP pretraining")
    parser.set_defaults(func=_pretrain_clip)

    parser = commands.add_parser("train-vlm", help="train the world's BLIP-2 or LLaVA")
    parser.add_argument("model", choices=["blip2", "llava"])
    parser.add_argument("--output", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--seed", type=int, default=0, help="the world seed")
    add_params_argument(parser, "VLM training")
    parser.set_defaults(func=_train_vlm)

    parser = commands.add_parser(
        "build-models", help="train the baseline CLIP, BLIP-2 and LLaVA into DIR (committable)"
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument(
        "--config", required=True, type=Path, help="workflow config whose prompts to learn"
    )
    parser.add_argument(
        "--schema",
        type=Path,
        default=Path("workflow/schemas/config.schema.yaml"),
        help="the workflow's config schema (its defaults fill the config)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the world seed")
    add_params_argument(parser, "models (clip, blip2, llava training settings)")
    parser.set_defaults(func=_build_models)

    parser = commands.add_parser(
        "expand-clip", help="the open_clip checkpoint of a compact world CLIP"
    )
    parser.add_argument("--compact", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.set_defaults(func=_expand_clip)

    parser = commands.add_parser(
        "check-grounding",
        help="how many attributes a generator's dialogue states truly, against the scene records",
    )
    parser.add_argument("--generator", required=True, choices=["blip2", "llava"])
    parser.add_argument("--shards", nargs="+", required=True, type=Path, help="dialogue shards")
    parser.add_argument("--records", required=True, type=Path, help="cc3m/scenes.jsonl")
    parser.add_argument("--output", required=True, type=Path, help="summary (JSON)")
    parser.set_defaults(func=_check_grounding)

    parser = commands.add_parser(
        "make-tiny-models",
        help="build tiny random LLaVA-1.5 and BLIP-2 checkpoints into DIR/{llava,blip2}",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_make_tiny_models)


def _write(args: argparse.Namespace) -> int:
    from dialogclip.world.formats import WorldSizes, write_world

    write_world(args.out_dir, args.seed, section_from_dict(WorldSizes, args.params, "sizes"))
    return 0


def _pretrain_clip(args: argparse.Namespace) -> int:
    from dialogclip.world.clip import ClipPretraining, pretrain_clip

    settings = section_from_dict(ClipPretraining, args.params, "pretraining")
    pretrain_clip(args.output, settings, args.seed)
    return 0


def _train_vlm(args: argparse.Namespace) -> int:
    from dialogclip.world.vlms import VlmPrompts, VlmTraining, train_world_vlm

    params = dict(args.params)
    prompts = section_from_dict(VlmPrompts, params.pop("prompts", {}), "prompts")
    settings = section_from_dict(VlmTraining, params, "training")
    _into_place(
        args.output, lambda tmp: train_world_vlm(args.model, tmp, prompts, settings, args.seed)
    )
    return 0


def _build_models(args: argparse.Namespace) -> int:
    from dialogclip.world.build import build_models, prompts_from_config, settings_from_params

    prompts = prompts_from_config(args.config, args.schema)
    summary = build_models(args.out_dir, prompts, settings_from_params(args.params), args.seed)
    log.info("world models built in %.0f s: %s", summary["seconds"], summary["behaviour"])
    return 0


def _expand_clip(args: argparse.Namespace) -> int:
    from dialogclip.world.clip import expand_compact

    expand_compact(args.compact, args.output)
    return 0


def _check_grounding(args: argparse.Namespace) -> int:
    from dialogclip.world.grounding import check_dialogue_shards

    summary = check_dialogue_shards(args.generator, args.shards, args.records)
    write_json_atomic(summary, args.output)
    log.info(
        "%s: %s of %s stated attributes true (%s replies, %s parsed)",
        args.generator,
        summary["grounding"]["true"],
        summary["grounding"]["stated"],
        summary["replies"],
        summary["parse_ok_rate"],
    )
    return 0


def _make_tiny_models(args: argparse.Namespace) -> int:
    from dialogclip.world.tiny_models import build_tiny_blip2, build_tiny_llava

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, build in (("llava", build_tiny_llava), ("blip2", build_tiny_blip2)):
        _into_place(args.out_dir / name, lambda tmp, build=build: build(tmp, seed=args.seed))
    return 0


def _into_place(final: Path, build) -> None:
    """Build a checkpoint directory beside ``final``, then rename: a killed build leaves no
    half model."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}.", dir=final.parent))
    try:
        build(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
