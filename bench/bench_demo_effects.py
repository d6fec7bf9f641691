"""The demo's effects and their seed-to-seed spread, by the pipeline itself (issue 17, point 3).

The finished demo (resources/demo after `make demo`, or a copy) is one seed of its own recipe.
For each further training seed this script copies it, sets every training run's
``optim.seed`` (a config file merged over the demo's, as a user would) and lets Snakemake redo
what the seed changes: the training runs and the evaluations the effects read
(:func:`dialogclip.world.effects.effect_targets`). The *shuffled* arm does the same on a copy
whose dialogue shards give each image another image's dialogue
(:func:`dialogclip.world.effects.shuffle_dialogue`): the sabotage whose gains must vanish. The
*captions* arm is its control: DRAFT trained on its caption term alone
(:func:`dialogclip.world.effects.without_dialogue`), i.e. what DRAFT's training would gain
without the dialogue (the third tower is the demo's there).

Per arm and effect it records each seed's value, the mean and the sample standard deviation
(points: image R@1 x 100, VQA accuracy 0-100) with the machine record, and each run's wall
seconds (under ``--reuse``, a copy already up to date shows only Snakemake's check); nothing is
asserted here: tests/world/test_world_demo.py checks its margins against these figures.

    nice -n 10 .venv/bin/python bench/bench_demo_effects.py --demo resources/demo \
        --seeds 0 1 2 --work /tmp/demo-effects --output bench/results/demo_effects.json
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from benchlib import machine_record

from dialogclip.core.io import write_json_atomic
from dialogclip.core.logging import setup_logging
from dialogclip.world.effects import (
    demo_effects,
    effect_targets,
    shuffle_dialogue,
    without_dialogue,
)

log = logging.getLogger("bench_demo_effects")
ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
ARMS = ("demo", "shuffled", "captions")


def _arm_config(workdir: Path, arm: str, seed: int) -> Path | None:
    """A config file merged over the demo's: every training run's seed, and in the captions arm
    DRAFT without its dialogue terms (lists replace lists when merged); None when it would
    change nothing."""
    if seed == 0 and arm != "captions":
        return None
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    for run in config["train"]["runs"]:
        run.setdefault("optim", {})["seed"] = seed
    if arm == "captions":
        without_dialogue(config["train"])
    path = workdir / f"{arm}-seed{seed}.yaml"
    path.write_text(yaml.safe_dump({"train": config["train"]}, sort_keys=False))
    return path


def run_arm(demo: Path, work: Path, arm: str, seed: int, cores: int, reuse: bool) -> dict[str, Any]:
    """The effects of ``arm`` at training seed ``seed``: the finished demo itself for the demo
    arm's seed 0, otherwise a copy redone by Snakemake (with ``reuse``, an existing copy is
    brought up to date instead: Snakemake then runs only what it lacks)."""
    if arm == "demo" and seed == 0:
        return {"seed": seed, "seconds": 0.0, **demo_effects(demo).as_dict()}
    workdir = work / f"{arm}-seed{seed}"
    if not (reuse and workdir.exists()):
        if workdir.exists():
            shutil.rmtree(workdir)
        # not the demo's lock, which a Snakemake running there meanwhile holds
        locks = shutil.ignore_patterns("locks")
        shutil.copytree(demo, workdir, symlinks=True, ignore=locks)
        if arm == "shuffled":
            for shard in sorted((workdir / "results" / "dialogue").glob("*/*.parquet")):
                shuffle_dialogue(shard)
    config = _arm_config(workdir, arm, seed)
    command = [
        str(VENV_BIN / "snakemake"),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        # the demo's machine settings (threads: float sums can depend on them)
        "--workflow-profile",
        str(ROOT / "workflow" / "profiles" / "demo"),
        "--cores",
        str(cores),
        *effect_targets(),
        # last: --configfile takes every word after it
        *(("--configfile", str(config)) if config else ()),
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{arm} seed {seed}: snakemake failed:\n{result.stderr[-4000:]}")
    effects = demo_effects(workdir).as_dict()
    log.info("%s seed %d (%.0f s): %s", arm, seed, seconds, effects)
    return {"seed": seed, "seconds": round(seconds, 1), **effects}


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    names = [name for name in runs[0] if name not in ("seed", "seconds")]
    out = {}
    for name in names:
        values = [run[name] for run in runs]
        out[name] = {
            "mean": round(statistics.fmean(values), 3),
            "sd": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0,
            "values": [round(value, 3) for value in values],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, required=True, help="a finished demo folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the copies")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument(
        "--reuse", action="store_true", help="bring existing copies under --work up to date"
    )
    args = parser.parse_args(argv)
    setup_logging()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = {
        arm: [run_arm(args.demo, args.work, arm, s, args.cores, args.reuse) for s in args.seeds]
        for arm in args.arms
    }
    write_json_atomic(
        {
            "demo": str(args.demo),
            "runs": runs,
            "summary": {arm: summarise(arm_runs) for arm, arm_runs in runs.items()},
            "machine": machine_record(args.cores),
        },
        args.output,
    )
    log.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
