"""Time of ``snakemake -n`` on a CC3M-sized TSV (3,318,333 rows -> 332 shards of 10,000).

    .venv/bin/python bench/bench_dryrun.py [--repeats 3]

A synthetic TSV with as many rows as Train_GCC-training.tsv is written to a temporary folder
with the thesis config.yaml (only cc3m.tsv redirected), and the whole workflow is dry-run
there: parsing, config validation, counting the TSV's lines, and building the DAG of every job
the config asks for. The baseline is the same dry run on a 10-row TSV (1 shard): the fixed
cost of starting Snakemake. Results go to bench/results/bench_dryrun.json (target < 15 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "bench_dryrun.json"
VENV_BIN = Path(sys.executable).parent
CC3M_TRAIN_ROWS = 3_318_333  # lines of Train_GCC-training.tsv
TARGET_SECONDS = 15.0

log = logging.getLogger("bench_dryrun")


def write_tsv(path: Path, rows: int) -> None:
    """``rows`` CC3M-like lines (caption TAB url), written in blocks."""
    block = 100_000
    with path.open("w") as handle:
        for start in range(0, rows, block):
            handle.write(
                "".join(
                    f"a synthetic caption for image number {i}\t"
                    f"http://images.example.com/cc3m/{i:07d}.jpg\n"
                    for i in range(start, min(start + block, rows))
                )
            )


def write_config(folder: Path, tsv: Path) -> None:
    """The thesis config on ``tsv``, with its generators' weights recorded as fetched (the
    workflow plans no generation job without them; a dry run reads only the records)."""
    from dialogclip.models.vlm_weights import weights_folder, write_record

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["cc3m"]["tsv"] = str(tsv)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for generator in config["generate"]["generators"]:
        model, revision = (config["generate"][generator][key] for key in ("model", "revision"))
        write_record(folder / weights_folder(model, revision), model, revision, None, {})


def dry_run(folder: Path) -> tuple[float, int]:
    """Wall seconds of one dry run in ``folder`` and the number of jobs it planned."""
    command = [
        str(VENV_BIN / "snakemake"),
        *("--snakefile", str(ROOT / "Snakefile"), "--directory", str(folder)),
        *("--workflow-profile", "none", "--default-resources", "allow_cpu=0"),
        *("--cores", "16", "--dry-run", "--quiet", "rules"),
    ]
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"dry run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    match = re.search(r"^total\s+(\d+)", result.stdout + result.stderr, re.MULTILINE)
    return seconds, int(match.group(1)) if match else -1


def measure(folder: Path, repeats: int, name: str) -> dict:
    times, jobs = [], -1
    for run in range(repeats):
        seconds, jobs = dry_run(folder)
        times.append(round(seconds, 3))
        log.info("%s run %d: %.2f s, %d jobs", name, run, seconds, jobs)
    return {"wall_seconds": times, "median_seconds": statistics.median(times), "jobs": jobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench_dryrun_") as tmp:
        full, small = Path(tmp) / "full", Path(tmp) / "small"
        for folder, rows in ((full, CC3M_TRAIN_ROWS), (small, 10)):
            folder.mkdir()
            write_tsv(folder / "cc3m.tsv", rows)
            write_config(folder, folder / "cc3m.tsv")
        log.info("TSV: %d rows, %.0f MB", CC3M_TRAIN_ROWS, (full / "cc3m.tsv").stat().st_size / 1e6)
        baseline = measure(small, args.repeats, "1 shard")
        cc3m = measure(full, args.repeats, "332 shards")
    result = {
        "benchmark": "snakemake --dry-run of the whole workflow (thesis config.yaml)",
        "tsv_rows": CC3M_TRAIN_ROWS,
        "shards": -(-CC3M_TRAIN_ROWS // 10_000),
        "cc3m_332_shards": cc3m,
        "baseline_1_shard": baseline,
        "ratio_to_baseline": round(cc3m["median_seconds"] / baseline["median_seconds"], 3),
        "target_seconds": TARGET_SECONDS,
        "meets_target": cc3m["median_seconds"] < TARGET_SECONDS,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    log.info(
        "332 shards: %.2f s (target < %.0f s), baseline %.2f s -> %s",
        cc3m["median_seconds"],
        TARGET_SECONDS,
        baseline["median_seconds"],
        RESULT,
    )


if __name__ == "__main__":
    main()
