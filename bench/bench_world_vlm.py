"""Training time and held-out behaviour of one world VLM (issue 17, phase 1).

Trains the world's ``blip2`` or ``llava`` (:func:`dialogclip.world.vlms.train_world_vlm`, the
training settings of ``--params``, the default config's prompts), then generates greedily on
held-out scenes (split ``heldout``, which no model trains on) exactly as
:func:`dialogclip.world.build.behaviour` does and scores the replies with the world's grounding
checker; LLaVA's replies are also read by the generation stage's own free-text parser
(:func:`dialogclip.generate.parsing.parse_qa_pairs`, three pairs expected). Writes a JSON
record (``--output``) with the time of each training stage and the machine's load; the targets
of phase 2 (>= 80 % grounded, >= 90 % parsed) are reported beside the figures, not asserted.

    nice -n 10 .venv/bin/python bench/bench_world_vlm.py blip2 --output benchmarks/world_blip2.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from benchlib import machine_record

from dialogclip.core.logging import setup_logging
from dialogclip.generate.config import LLAVA_QUESTION
from dialogclip.generate.parsing import PARSE_OK, parse_qa_pairs
from dialogclip.world.build import (
    blip2_replies,
    llava_replies,
    score_blip2,
    score_llava,
)
from dialogclip.world.scenes import draw_scenes
from dialogclip.world.vlms import VlmPrompts, VlmTraining, train_world_vlm

log = logging.getLogger("bench_world_vlm")

TARGETS = {"grounding_rate": 0.80, "llava_parse_rate": 0.90}  # issue 17, point 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=["blip2", "llava"])
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--model-dir", type=Path, help="where the model goes (default: beside)")
    parser.add_argument("--params", default="{}", help="VlmTraining fields as JSON")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--held-out", type=int, default=200, help="held-out scenes generated on")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    settings = VlmTraining(**json.loads(args.params))
    prompts = VlmPrompts(llava_question=LLAVA_QUESTION)  # the default config's prompts
    model_dir = args.model_dir or args.output.with_suffix("")
    record = {"settings": vars(args) | {"output": str(args.output), "model_dir": str(model_dir)}}
    record["training"] = train_world_vlm(args.name, model_dir, prompts, settings, args.world_seed)
    scenes = draw_scenes(args.world_seed, "heldout", args.held_out)
    started = time.monotonic()
    if args.name == "blip2":
        answers = blip2_replies(model_dir, prompts, scenes)
        record["behaviour"] = score_blip2(answers, scenes)
        record["samples"] = answers[:5]
    else:
        replies = llava_replies(model_dir, prompts, scenes)
        record["behaviour"] = score_llava(replies, scenes)
        parsed = [parse_qa_pairs(reply, 3) for reply in replies]
        record["behaviour"]["generate_parser_ok_rate"] = round(
            sum(p.status == PARSE_OK for p in parsed) / len(parsed), 4
        )
        record["samples"] = replies[:5]
    record["generation_seconds"] = round(time.monotonic() - started, 1)
    record["targets"] = TARGETS
    record["machine"] = machine_record(args.threads)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2, default=str) + "\n")
    log.info("%s behaviour on %d held-out scenes: %s", args.name, len(scenes), record["behaviour"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
