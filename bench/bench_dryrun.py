"""What a Slurm cluster sees of the thesis DAG at CC3M size (3,318,333 rows -> 332 shards).

    .venv/bin/python bench/bench_dryrun.py --label before|after [--repeats 3] [--root DIR]

In a temporary folder: a synthetic TSV with as many rows as Train_GCC-training.tsv, the thesis
config.yaml (only cc3m.tsv redirected) and stand-in evaluation files (an empty JSON file or
folder at every path of the config's evaluate.<dataset> sections: a dry run only checks that
they exist), so that every stage is planned - downloads, generation, training data, training
runs, evaluations, report - without any data. Measured there:

- ``dry_run``: seconds of ``snakemake --dry-run`` as a user runs it (the workflow's default
  profile, profiles/default; every job listed), median of ``--repeats``: wall seconds, and the
  CPU seconds of Snakemake and its children, which a busy shared machine inflates far less than
  the wall time (``machine`` records its load); ``one_shard``: the same on a 10-row TSV,
  Snakemake's fixed cost. The runs share one working directory, as a user's do: the first
  counts the TSV's 3.3M lines (~0.4 s), the later ones reuse the count the workflow keeps in
  .snakemake/dialogclip/ (a checkout from before that cache counts in every run);
- ``snakemake_floor``: the dry run of as many trivial jobs (one rule, one output, no
  profile) right after: what Snakemake spends per job whatever the rules hold, the part of
  ``dry_run`` that no change to the workflow's rules can cut;
- ``jobs``: the jobs per rule;
- ``slurm``: what workflow/profiles/slurm would submit. A dry run with that profile's settings
  less its executor (the Slurm plugin lives in .venv-controller, not here) makes Snakemake form
  the groups the profile declares (``groups`` / ``group-components``), exactly as the plugin
  receives them; a submission is a group job, or an ungrouped job of a rule that is not a
  localrule (a dry run does not say which jobs are local: the rules that declare
  ``localrule: True`` are read from workflow/rules/). Per group and per ungrouped rule:
  submissions and jobs. Its time (one run) is ``grouped_dry_run``;
- ``gpu``: per rule, the jobs that request GPUs and the GPU-hours they request (GPUs x wall-time
  limit, the profile's ``runtime``: what the scheduler reserves, an upper bound, not a
  measurement); the CPU-only jobs.

The figures go to bench/results/bench_dryrun.json under ``--label``; the other label's figures
stay, and when both exist the after / before ratios are written beside them. ``--root`` measures
another checkout of the repository with this same bench (e.g. the commit before a change,
exported with ``git archive``): its Snakefile, config.yaml, profiles and rules, and its src/
first on PYTHONPATH, so that the workflow imports its own dialogclip. Targets (issue
21): at most 3,000 jobs, a dry run of at most 6 s on 2 cores, at most 1,000 submissions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parents[1]
RESULT = HERE / "bench" / "results" / "bench_dryrun.json"
VENV_BIN = Path(sys.executable).parent
CC3M_TRAIN_ROWS = 3_318_333  # lines of Train_GCC-training.tsv
TARGETS = {"jobs": 3000, "dry_run_seconds": 6.0, "submissions": 1000}  # seconds: wall or CPU
# Profile keys that need the Slurm plugin: left out of the grouped dry run (nothing else of the
# profile depends on them).
EXECUTOR_KEYS = ("executor",)
EXECUTOR_KEY_PREFIX = "slurm-"
PLACEHOLDER_ACCOUNT = "your-account"  # workflow/profiles/slurm's, refused by the workflow

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


def write_workdir(folder: Path, rows: int, root: Path) -> None:
    """The thesis config of ``root`` with a TSV of ``rows`` lines and stand-in evaluation
    files."""
    folder.mkdir()
    tsv = folder / "cc3m.tsv"
    write_tsv(tsv, rows)
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["cc3m"]["tsv"] = str(tsv)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    write_weight_records(folder, config)
    for name, files in config["evaluate"].items():
        if not isinstance(files, dict):
            continue  # activate, ks, models
        for key, path in files.items():
            stand_in = folder / path
            if key == "images":
                stand_in.mkdir(parents=True, exist_ok=True)
            else:
                stand_in.parent.mkdir(parents=True, exist_ok=True)
                stand_in.write_text("{}")
        log.info("stand-in files for %s: %s", name, sorted(files))


def write_weight_records(folder: Path, config: dict) -> None:
    """Record the generators' pinned weights as fetched: the workflow plans no generation job
    without them, and a dry run reads only the records. (A config from before weights were
    pinned, measured with ``--root``, has no revision and needs none.)"""
    from dialogclip.models.vlm_weights import weights_folder, write_record

    for generator in config["generate"]["generators"]:
        model, revision = (config["generate"][generator].get(key) for key in ("model", "revision"))
        if revision is not None:
            write_record(folder / weights_folder(model, revision), model, revision, None, {})


def slurm_profile_without_executor(folder: Path, root: Path) -> Path:
    """A copy of ``root``'s Slurm profile less the settings of its executor plugin."""
    profile = yaml.safe_load((root / "workflow/profiles/slurm/config.yaml").read_text())
    kept = {
        key: value
        for key, value in profile.items()
        if key not in EXECUTOR_KEYS and not key.startswith(EXECUTOR_KEY_PREFIX)
    }
    # An account over the placeholder the workflow refuses, as a user sets it (no effect on
    # the jobs or the groups).
    defaults = kept.get("default-resources") or {}
    if defaults.get("slurm_account") == PLACEHOLDER_ACCOUNT:
        defaults["slurm_account"] = "bench-account"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(kept, sort_keys=False))
    return folder


def dry_run(root: Path, workdir: Path, *options: str) -> tuple[float, float, str]:
    """Wall and CPU seconds of one ``snakemake --dry-run`` of ``root``'s Snakefile in
    ``workdir``, and its output."""
    command = [
        str(VENV_BIN / "snakemake"),
        *("--snakefile", str(root / "Snakefile"), "--directory", str(workdir), "--dry-run"),
        *options,
    ]
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if root != HERE:
        env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), env.get("PYTHONPATH", "")])
    cpu_before = _children_cpu_seconds()
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    cpu = _children_cpu_seconds() - cpu_before
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"dry run failed ({' '.join(command)}):\n{output[-4000:]}")
    return seconds, cpu, output


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(root: Path, workdir: Path, repeats: int, name: str, *options: str) -> tuple[dict, str]:
    wall, cpu, output = [], [], ""
    for run in range(repeats):
        seconds, cpu_seconds, output = dry_run(root, workdir, *options)
        wall.append(round(seconds, 3))
        cpu.append(round(cpu_seconds, 3))
        log.info("%s, run %d: %.2f s (%.2f s CPU)", name, run, seconds, cpu_seconds)
    figures = {
        "wall_seconds": wall,
        "median_seconds": statistics.median(wall),
        "cpu_seconds": cpu,
        "median_cpu_seconds": statistics.median(cpu),
    }
    return figures, output


_JOB_HEADER = re.compile(r"^(\s*)rule (\w+):$")
_GROUP_HEADER = re.compile(r"Group job (\S+) \(jobs in lexicogr\. order\):$")
_RESOURCES = re.compile(r"^\s+resources: (.*)$")


@dataclass
class Job:
    rule: str
    local: bool
    group: str | None
    resources: dict[str, str] = field(default_factory=dict)


def local_rules(root: Path) -> set[str]:
    """The rules of workflow/rules/ that declare ``localrule: True`` (run by the controller)."""
    found = set()
    for path in sorted((root / "workflow" / "rules").glob("*.smk")):
        rule = None
        for line in path.read_text().splitlines():
            if match := re.match(r"^(?:rule|checkpoint) (\w+):", line):
                rule = match[1]
            elif rule and re.match(r"^\s+localrule: True", line):
                found.add(rule)
    return found


def parse_listing(output: str, local: set[str]) -> tuple[list[Job], Counter[str]]:
    """The jobs of a dry run's listing (``all`` left out) and the number of group jobs per
    group name. A group job's member jobs follow its header, indented."""
    jobs: list[Job] = []
    groups: Counter[str] = Counter()
    group = None
    for line in output.splitlines():
        if match := _GROUP_HEADER.search(line):
            group = match[1]
            groups[group] += 1
        elif match := _JOB_HEADER.match(line):
            indent, rule = match.groups()
            if not indent:
                group = None  # a top-level job ends the group listed before it
            jobs.append(Job(rule, rule in local, group if indent else None))
        elif (match := _RESOURCES.match(line)) and jobs:
            jobs[-1].resources = dict(item.split("=", 1) for item in match[1].split(", "))
    return [job for job in jobs if job.rule != "all"], groups


def job_stats(output: str) -> Counter[str]:
    """Snakemake's own "Job stats" table: {rule: jobs}, ``all`` and the total left out."""
    rows = output.split("Job stats:", 1)[1].splitlines()[3:]
    counts: Counter[str] = Counter()
    for line in rows:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        if parts[0] not in ("all", "total"):
            counts[parts[0]] = int(parts[1])
    return counts


def cluster_figures(jobs: list[Job], groups: Counter[str]) -> dict:
    """Submissions (per group, per ungrouped rule) and GPU / CPU jobs of a grouped listing."""
    ungrouped = Counter(job.rule for job in jobs if job.group is None and not job.local)
    grouped_jobs = Counter(job.group for job in jobs if job.group is not None)
    gpu_jobs: Counter[str] = Counter()
    gpu_hours: Counter[str] = Counter()
    for job in jobs:
        gpus = int(job.resources.get("gpu", "0"))
        if gpus:
            gpu_jobs[job.rule] += 1
            gpu_hours[job.rule] += gpus * int(job.resources["runtime"]) / 60
    return {
        "submissions": sum(groups.values()) + sum(ungrouped.values()),
        "group_submissions": {
            name: {"submissions": groups[name], "jobs": grouped_jobs[name]}
            for name in sorted(groups)
        },
        "ungrouped_submissions": dict(sorted(ungrouped.items())),
        "local_jobs": sum(job.local for job in jobs),
        "gpu": {
            "jobs": sum(gpu_jobs.values()),
            "jobs_per_rule": dict(sorted(gpu_jobs.items())),
            "gpu_hours_requested": round(sum(gpu_hours.values()), 1),
            "gpu_hours_requested_per_rule": {
                rule: round(hours, 1) for rule, hours in sorted(gpu_hours.items())
            },
        },
        "cpu_only_jobs": sum(not int(job.resources.get("gpu", "0")) for job in jobs),
    }


FLOOR_SNAKEFILE = """\
rule all:
    input:
        expand("out/{{i}}.txt", i=range({jobs})),


rule job:
    output:
        "out/{{i}}.txt",
    shell:
        "touch {{output:q}}"
"""


def snakemake_floor(folder: Path, jobs: int, repeats: int) -> dict:
    """The dry run of ``jobs`` trivial jobs (one rule, no input, one output, a one-word shell
    line, no profile): what Snakemake itself spends on a DAG of that many jobs, on this machine
    at this load, whatever the rules hold."""
    folder.mkdir()
    (folder / "Snakefile").write_text(FLOOR_SNAKEFILE.format(jobs=jobs))
    figures, output = timed(folder, folder, repeats, f"{jobs} trivial jobs", "--cores", "1")
    if job_stats(output) != Counter({"job": jobs}):
        raise RuntimeError(f"the floor's dry run did not plan {jobs} jobs:\n{output[-2000:]}")
    return {"jobs": jobs, **figures}


def measure(root: Path, repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_dryrun_") as tmp:
        full, small = Path(tmp) / "full", Path(tmp) / "small"
        write_workdir(full, CC3M_TRAIN_ROWS, root)
        write_workdir(small, 10, root)
        profile = slurm_profile_without_executor(Path(tmp) / "slurm-profile", root)
        # No --workflow-profile: Snakemake applies the workflow's profiles/default, as it does
        # for a plain `snakemake -n` in the repository.
        one_shard, _ = timed(root, small, repeats, "1 shard")
        cc3m, output = timed(root, full, repeats, "332 shards")
        grouped, grouped_output = timed(
            root, full, 1, "332 shards, Slurm profile", "--workflow-profile", str(profile)
        )
        jobs = job_stats(output)
        floor = snakemake_floor(Path(tmp) / "floor", sum(jobs.values()), repeats)
    listed, groups = parse_listing(grouped_output, local_rules(root))
    if Counter(job.rule for job in listed) != jobs:
        raise RuntimeError("the grouped listing and the plain dry run plan different jobs")
    return {
        "jobs": sum(jobs.values()),
        "jobs_per_rule": dict(sorted(jobs.items())),
        "dry_run": cc3m,
        "one_shard": one_shard,
        "grouped_dry_run": grouped,
        "snakemake_floor": floor,
        "slurm": cluster_figures(listed, groups),
    }


def ratios(before: dict, after: dict) -> dict:
    """after / before of the headline figures."""
    pairs = {
        "jobs": (before["jobs"], after["jobs"]),
        "dry_run_seconds": (
            before["dry_run"]["median_seconds"],
            after["dry_run"]["median_seconds"],
        ),
        "dry_run_cpu_seconds": (
            before["dry_run"]["median_cpu_seconds"],
            after["dry_run"]["median_cpu_seconds"],
        ),
        "submissions": (before["slurm"]["submissions"], after["slurm"]["submissions"]),
    }
    return {name: round(new / old, 3) for name, (old, new) in pairs.items()}


def meets_targets(figures: dict) -> dict[str, bool]:
    return {
        "jobs": figures["jobs"] <= TARGETS["jobs"],
        "dry_run_seconds": figures["dry_run"]["median_seconds"] <= TARGETS["dry_run_seconds"],
        "dry_run_cpu_seconds": (
            figures["dry_run"]["median_cpu_seconds"] <= TARGETS["dry_run_seconds"]
        ),
        "submissions": figures["slurm"]["submissions"] <= TARGETS["submissions"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, choices=("before", "after"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--root", type=Path, default=HERE, help="the repository to measure (default: this one)"
    )
    parser.add_argument("--commit", help="the commit of --root, when it is no git checkout")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    root = args.root.resolve()
    figures = measure(root, args.repeats)
    git = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    figures["commit"] = args.commit or git.stdout.strip()
    figures["meets_targets"] = meets_targets(figures)
    figures["machine"] = {
        "cpus": os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
    }
    result = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    if not {"before", "after"} & set(result):
        result = {}  # the earlier dry-run bench's file: replaced
    result.update(
        benchmark="the thesis DAG at CC3M size as a Slurm cluster sees it (bench_dryrun.py)",
        tsv_rows=CC3M_TRAIN_ROWS,
        targets=TARGETS,
    )
    result[args.label] = figures
    if "before" in result and "after" in result:
        result["after_over_before"] = ratios(result["before"], result["after"])
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    log.info(
        "%s: %d jobs, dry run %.2f s, %d Slurm submissions -> %s",
        args.label,
        figures["jobs"],
        figures["dry_run"]["median_seconds"],
        figures["slurm"]["submissions"],
        RESULT,
    )


if __name__ == "__main__":
    main()
