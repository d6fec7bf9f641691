"""Running the workflow from tests: snakemake on a copy of the demo, and what a dry run plans.

``finished_demo`` (a session fixture in ``tests/conftest.py``) runs the whole demo DAG once;
tests that ask "what would an edit rerun?" dry-run against it with :func:`planned_jobs` (or
:func:`planned`, which also lists each job's wildcards and resources, e.g. to tell the jobs of
rule ``generate`` apart by generator), which never writes to the folder, so they can share it.
What the demo's edits plan is counted from its layout and runs (:data:`DEMO_RUNS`,
:func:`demo_after_dialogue`), stated once here for every test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
GENERATED = ("results", "logs", "benchmarks", ".snakemake")
# What the demo profile sets and a run without profile needs (workflow/rules/common.smk): GPU
# jobs may run on the CPU. Followed by another option, never by targets (it takes every word).
CPU_DEFAULT_RESOURCES = ("--default-resources", "allow_cpu=1")


def _demo_threads() -> tuple[str, ...]:
    """The demo profile's ``set-threads`` as options: the tests run the demo's jobs with the
    threads `make demo` gives them, so their results are `make demo`'s bit for bit (float sums
    can depend on the thread count)."""
    profile = yaml.safe_load((REPO_ROOT / "workflow/profiles/demo/config.yaml").read_text())
    threads = profile.get("set-threads") or {}
    return ("--set-threads", *(f"{rule}={n}" for rule, n in threads.items())) if threads else ()


DEMO_THREADS = _demo_threads()


def pretend_generators_fetched(
    workdir: Path, config_path: Path = REPO_ROOT / "config.yaml"
) -> None:
    """Mark the hub generators of ``config_path`` as fetched in ``workdir`` (their folders with a
    fetch record, no weights): enough for a dry run of a config such as the thesis', which the
    workflow refuses to plan while the generators' weights are missing."""
    from dialogclip.models.vlm_weights import is_hub_id, weights_folder, write_record

    generate = yaml.safe_load(config_path.read_text())["generate"]
    for generator in generate["generators"]:
        model, revision = generate[generator]["model"], generate[generator].get("revision")
        if is_hub_id(model):
            write_record(workdir / weights_folder(model, revision), model, revision, None, {})


def copy_demo(workdir: Path, source: Path | None = None) -> Path:
    """Copy ``resources/demo`` (or ``source``, e.g. a finished demo) to ``workdir``.

    From ``resources/demo`` earlier outputs are left out; from another folder everything is
    copied, outputs and Snakemake's metadata included (a finished run stays finished).
    """
    if source is None:
        shutil.copytree(
            REPO_ROOT / "resources" / "demo", workdir, ignore=shutil.ignore_patterns(*GENERATED)
        )
    else:
        shutil.copytree(source, workdir, symlinks=True)
    return workdir


# The whole demo DAG on 2 cores (e.g. the finished_demo fixture): 7 min on an idle machine, 20-40
# min at a load of 4-6 (the world demo's first runs, two threads per job; issue 17). A run that
# hangs fails after this long.
DEMO_RUN_TIMEOUT_S = 3600


def snakemake(
    workdir: Path, *args: str, timeout: float = DEMO_RUN_TIMEOUT_S, cores: int = 2
) -> subprocess.CompletedProcess[str]:
    """Run the repository's Snakefile in ``workdir`` (``--workflow-profile none``: tests set
    every option they rely on; ``allow_cpu=1`` as the demo profile: the GPU rules run on the
    CPU here). A hang fails the test after ``timeout`` seconds."""
    return subprocess.run(
        [
            str(VENV_BIN / "snakemake"),
            "--snakefile",
            str(REPO_ROOT / "Snakefile"),
            "--directory",
            str(workdir),
            "--workflow-profile",
            "none",
            *CPU_DEFAULT_RESOURCES,
            *DEMO_THREADS,
            "--cores",
            str(cores),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"},
    )


_JOB_STATS_ROW = re.compile(r"^(\S+)\s+(\d+)$")
_JOB_HEADER = re.compile(r"^(?:local)?rule (\w+):$")
_JOB_FIELD = re.compile(r"^\s+(wildcards|resources): (.*)$")


@dataclass(frozen=True)
class PlannedJob:
    """One job of a dry run's listing: its rule, wildcard values and resources (as printed)."""

    rule: str
    wildcards: dict[str, str]
    resources: dict[str, str]


@dataclass(frozen=True)
class Plan:
    """What ``snakemake --dry-run`` plans: ``jobs`` is {rule: number of jobs} and ``listing``
    every planned job, in the order listed (``all`` left out of both)."""

    jobs: Counter[str]
    listing: tuple[PlannedJob, ...]

    def of(self, rule: str) -> list[PlannedJob]:
        """The planned jobs of ``rule``."""
        return [job for job in self.listing if job.rule == rule]

    def by(self, rule: str, wildcard: str) -> Counter[str]:
        """{value of ``wildcard``: number of planned jobs of ``rule`` with it}."""
        return Counter(job.wildcards[wildcard] for job in self.of(rule))


def planned(workdir: Path, *args: str) -> Plan:
    """The :class:`Plan` of ``snakemake --dry-run`` in ``workdir`` (empty when there is nothing
    to be done). Fails on a DAG error, or when the job listing and Snakemake's job stats
    disagree (the listing's parser would be wrong)."""
    result = snakemake(workdir, "--dry-run", *args, timeout=300)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise AssertionError(f"snakemake --dry-run failed:\n{output[-6000:]}")
    if "Nothing to be done" in output:
        return Plan(Counter(), ())
    jobs: Counter[str] = Counter()
    stats = output.split("Job stats:", 1)[1].splitlines()
    for line in stats[3:]:  # after the header and its ---- rule
        match = _JOB_STATS_ROW.match(line.strip())
        if match is None:
            break
        rule, count = match.groups()
        if rule not in ("all", "total"):
            jobs[rule] = int(count)
    listing: list[PlannedJob] = []
    for line in output.splitlines():
        if match := _JOB_HEADER.match(line):
            listing.append(PlannedJob(match[1], {}, {}))
        elif (match := _JOB_FIELD.match(line)) and listing:
            field = getattr(listing[-1], match[1])
            field.update(item.split("=", 1) for item in match[2].split(", "))
    listing = [job for job in listing if job.rule != "all"]
    listed = Counter(job.rule for job in listing)
    if listed != jobs:
        raise AssertionError(f"job listing {dict(listed)} != job stats {dict(jobs)}")
    return Plan(jobs, tuple(listing))


def planned_jobs(workdir: Path, *args: str) -> Counter[str]:
    """{rule: number of jobs} that ``snakemake --dry-run`` plans in ``workdir`` (``all`` and
    the total left out; empty when there is nothing to be done). Fails on a DAG error."""
    return planned(workdir, *args).jobs


# --- the demo in numbers (resources/demo/config.yaml): what a dry run of an edit plans ------------

DEMO = REPO_ROOT / "resources" / "demo"


def demo_tsv(workdir: Path = DEMO) -> Path:
    """The CC3M-format TSV of the demo in ``workdir`` (its config's ``cc3m.tsv``)."""
    return workdir / yaml.safe_load((workdir / "config.yaml").read_text())["cc3m"]["tsv"]


def _demo_layout() -> tuple[int, int]:
    """(shards, training-data blocks) of the demo: its TSV's rows in shards of cc3m.shard_size,
    the shards in blocks of train.shards_per_block."""
    from dialogclip.core.shards import ShardPlan, count_lines

    config = yaml.safe_load((DEMO / "config.yaml").read_text())
    plan = ShardPlan(count_lines(demo_tsv()), config["cc3m"]["shard_size"])
    return plan.n_shards, len(plan.blocks(config["train"]["shards_per_block"]))


DEMO_SHARDS, DEMO_BLOCKS = _demo_layout()


@dataclass(frozen=True)
class DemoRun:
    """One training run of the demo as the dry runs count its jobs: whose dialogue it reads,
    its rows set (the sample form), and the evaluation jobs of the entries it adds."""

    generator: str
    form: str  # "concatenated" (third tower) or "pairs" (DRAFT): rows per generator and form
    eval_retrieval: int
    eval_vqa: int


# resources/demo/config.yaml, train.runs: a third tower on each generator's dialogue, evaluated
# at its six betas on COCO only; two DRAFT runs on LLaVA pairs at betas 0.9 and 0 on COCO and
# both VQA sets, the first one also blended by the weights at 0.9 (one more entry on each set).
DEMO_RUNS = {
    "tiny-c3m-blip2": DemoRun("blip2", "concatenated", eval_retrieval=6, eval_vqa=0),
    "tiny-c3m-llava": DemoRun("llava", "concatenated", eval_retrieval=6, eval_vqa=0),
    "tiny-draft-llava": DemoRun("llava", "pairs", eval_retrieval=3, eval_vqa=6),
    "tiny-draft-llava-nommd": DemoRun("llava", "pairs", eval_retrieval=2, eval_vqa=4),
}
# The baseline entry `tiny` (evaluate.models): COCO retrieval and both VQA sets.
DEMO_BASELINE_EVAL = Counter({"eval_retrieval": 1, "eval_vqa": 2})


def demo_after_runs(runs: list[str], blocks: int = DEMO_BLOCKS) -> Counter[str]:
    """The jobs that redo the demo's ``runs`` once their training data changes in ``blocks``
    blocks: the rows of each rows set they read (one job per set and block), the runs, and
    their evaluation entries."""
    chosen = [DEMO_RUNS[name] for name in runs]
    return +Counter(  # no zero counts (a plan has none): no VQA of runs on COCO only
        {
            "train_rows": len({(run.generator, run.form) for run in chosen}) * blocks,
            "train_run": len(chosen),
            "eval_retrieval": sum(run.eval_retrieval for run in chosen),
            "eval_vqa": sum(run.eval_vqa for run in chosen),
        }
    )


def demo_runs_of(generator: str) -> list[str]:
    """The demo's runs that learn from ``generator``'s dialogue."""
    return [name for name, run in DEMO_RUNS.items() if run.generator == generator]


def demo_after_dialogue(*generators: str) -> Counter[str]:
    """The jobs a change to these generators' dialogue (every shard) reruns downstream: each
    one's statistics (summary and quality), the runs that learn from it with their rows and
    evaluations, and the report."""
    total: Counter[str] = Counter({"report": 1})
    for generator in generators:
        total += Counter({"dialogue_summary": 1, "dialogue_quality": 1})
        total += demo_after_runs(demo_runs_of(generator))
    return total


def edited_config(workdir: Path, tmp_path: Path, edit: Callable[[dict], object]) -> str:
    """A copy of ``workdir``'s config.yaml changed by ``edit`` (in place), as a file for
    ``--configfile``: Snakemake merges it over config.yaml, so it can change or add keys."""
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    edit(config)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


# The one rule that generates every generator's dialogue (workflow/rules/generate.smk).
GENERATE_RULE = "generate"


def generate_resources(**settings: int | str) -> list[str]:
    """``--set-resources`` arguments giving the generation rule these machine settings, e.g.
    ``generate_resources(backend="vllm")``: the way a user switches the backend (or a profile's
    ``set-resources``). Put them after the targets: the option takes every word after it."""
    return [
        "--set-resources",
        *(f"{GENERATE_RULE}:{name}={value}" for name, value in settings.items()),
    ]
