"""Crash-proof end to end (issue 10, point 6): the documented demo command (`make demo`'s recipe,
scripts/run.sh) is killed with SIGKILL -- its whole process group, Snakemake and every job --
during a download, a generation and a training job, and rerun each time with the same command.

Checked: each kill lands mid-job (the job's outputs are incomplete, and generation/training had
persisted a chunk/checkpoint first); the process group is gone; each rerun clears the stale lock
by itself; the dry run right after a kill plans exactly the jobs whose outputs are not complete;
the finished outputs are never rewritten; generation and training resume from what they had
persisted; the final results equal an uninterrupted run's (the session fixture finished_demo).

What "complete" means (Snakemake's own bookkeeping, the same it uses to decide what to rerun):
a job's outputs get an "incomplete" marker under .snakemake/incomplete/ when the job starts,
and, when it finishes, a metadata record under .snakemake/metadata/ after which the marker is
removed. An output that exists, has a record and no marker was written by a finished job; a
kill between the two steps leaves both, which counts as incomplete (and Snakemake, with the
demo profile's rerun-incomplete, reruns it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from base64 import urlsafe_b64decode
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from workflow_helpers import DEMO_RUN_TIMEOUT_S, REPO_ROOT, VENV_BIN, copy_demo

pytestmark = [pytest.mark.dag, pytest.mark.crash]

POLL_S = 0.05
# A phase runs at most the whole demo (the last one: everything after the training kill).
PHASE_TIMEOUT_S = DEMO_RUN_TIMEOUT_S
STALE_LOCK_CLEARED = "removed the stale lock of a Snakemake run that was killed"
LOCK_REFUSED = "Directory cannot be locked"

# What legitimately differs between two runs of the same DAG (found by comparing two
# uninterrupted runs: the demo command's and the fixture's, which uses `--workflow-profile none`,
# so other machine settings); everything else must be equal, bit for bit:
# - metrics.jsonl lines of a training run: samples_per_s (wall-clock throughput);
# - ingest stats JSONs (results/ingest/[retried/]stats/*.json): their wall-clock fields;
# - dialogue stats JSONs (results/dialogue/<generator>/stats/*.json): `timing` (wall clock),
#   `machine` (machine settings, e.g. the demo profile's chunk_size), `chunks` (how the job
#   was cut into chunks and how many a resumed job found finished), and which job started an
#   engine and made which chunks (work ahead): `job` and `engine.settings` (none in a job that
#   only assembled chunks made ahead);
# - ingested shards (results/ingest/[retried/]shards/*.parquet): error_message of a missing local
#   file names its absolute path, i.e. the demo's folder (compared with that folder masked).
WALL_CLOCK_FIELDS = {"samples_per_s"}
INGEST_STATS_VOLATILE = {"seconds", "download_seconds", "images_per_second"}
DIALOGUE_STATS_VOLATILE = {"timing", "machine", "chunks", "job"}


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}


def demo_command(workdir: Path) -> list[str]:
    """`make demo`'s run command (read from the Makefile, so it is the one users run), pointed
    at ``workdir`` instead of resources/demo."""
    dry = subprocess.run(
        ["make", "-n", "demo"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    recipe = [line for line in dry.stdout.splitlines() if "scripts/run.sh" in line]
    assert len(recipe) == 1, f"no single run.sh line in `make -n demo`:\n{dry.stdout}"
    return [*shlex.split(recipe[0]), "--directory", str(workdir)]


# --- processes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    state: str
    argv: tuple[str, ...]


def group_processes(pgid: int) -> list[Proc]:
    """The processes of process group ``pgid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid:
            argv = tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)
            found.append(Proc(int(entry.name), fields[0], argv))
    return found


def dialogclip_command(argv: tuple[str, ...], subcommand: str) -> bool:
    """Whether ``argv`` is the Python process of `dialogclip ... <subcommand> ...` (not the
    shell that started it, whose one argument is the whole command line)."""
    heads = [i for i, arg in enumerate(argv) if os.path.basename(arg) == "dialogclip"]
    return bool(heads) and subcommand in argv[heads[0] + 1 :]


def option(argv: tuple[str, ...], name: str) -> str:
    return argv[argv.index(name) + 1]


def stderr_file(pid: int) -> Path | None:
    """Where a job writes its log: the rules redirect its stderr into logs/..."""
    try:
        return Path(os.readlink(f"/proc/{pid}/fd/2"))
    except OSError:
        return None


# --- Snakemake's bookkeeping -------------------------------------------------------------------


def recorded_keys(folder: Path) -> set[str]:
    """The file keys recorded under a Snakemake persistence folder: each record's path is the
    urlsafe base64 of the key, cut into '@'-prefixed directories when too long for one name
    (snakemake/persistence/file.py, _record_path)."""
    keys = set()
    if not folder.is_dir():
        return keys
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        encoded = "".join(part.removeprefix("@") for part in path.relative_to(folder).parts)
        try:
            keys.add(urlsafe_b64decode(encoded).decode())
        except ValueError:
            continue  # not a record (e.g. a migration flag)
    return keys


def complete_outputs(workdir: Path) -> set[str]:
    """Outputs written by finished jobs (see the module docstring)."""
    meta = recorded_keys(workdir / ".snakemake" / "metadata")
    incomplete = recorded_keys(workdir / ".snakemake" / "incomplete")
    return {key for key in meta - incomplete if (workdir / key).exists()}


def mtimes(workdir: Path, keys: set[str]) -> dict[str, int]:
    return {key: (workdir / key).stat().st_mtime_ns for key in keys}


@dataclass(frozen=True)
class PlannedJob:
    rule: str
    outputs: tuple[str, ...]
    reason: str


_JOB_HEADER = re.compile(r"^(?:local)?rule (\w+):$")


def planned(workdir: Path) -> list[PlannedJob]:
    """The jobs a dry run of the demo command plans (the target `all` left out)."""
    result = subprocess.run(
        [*demo_command(workdir), "--dry-run"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return parse_plan(result.stdout + result.stderr)


def parse_plan(text: str) -> list[PlannedJob]:
    """The job blocks of a dry run's output: `rule X:` (or `localrule X:`) up to a blank line."""
    jobs: list[PlannedJob] = []
    rule, outputs, reason = None, (), ""
    for line in [*text.splitlines(), ""]:
        header = _JOB_HEADER.match(line)
        if header or not line.strip():
            if rule is not None and rule != "all":
                jobs.append(PlannedJob(rule, outputs, reason))
            rule, outputs, reason = (header.group(1) if header else None), (), ""
        elif rule is not None and line.startswith("    output: "):
            outputs = tuple(line.removeprefix("    output: ").split(", "))
        elif rule is not None and line.startswith("    reason: "):
            reason = line.removeprefix("    reason: ")
    return jobs


# --- the three moments ---------------------------------------------------------------------


@dataclass
class Victim:
    """The job a kill lands in: its process's command line and what it had persisted."""

    stage: str
    argv: tuple[str, ...]
    log: Path
    output: str
    resumable: list[str]  # finished chunks / checkpoint (empty for a download)
    resume_line: str = ""  # the line its rerun must log


def download_moment(workdir: Path, proc: Proc) -> Victim | None:
    # A shard downloading while an earlier shard is complete (that one must be kept).
    if not dialogclip_command(proc.argv, "ingest-shard"):
        return None
    output = option(proc.argv, "--output")
    done = [k for k in complete_outputs(workdir) if k.startswith("results/ingest/shards/")]
    log = stderr_file(proc.pid)
    if not done or log is None or (workdir / output).exists():
        return None
    return Victim("download", proc.argv, log, output, [])


_CHUNKS_LINE = re.compile(r"(\d+) chunk\(s\) of <= \d+; (\d+) already finished")
_CHUNK_FILE = re.compile(r"^\d{5}\.parquet$")


def finished_chunks(workdir: Path, argv: tuple[str, ...]) -> list[str]:
    work_dir = workdir / option(argv, "--work-dir")
    if not work_dir.is_dir():
        return []
    return sorted(p.name for p in work_dir.iterdir() if _CHUNK_FILE.match(p.name))


def generate_moment(workdir: Path, proc: Proc) -> Victim | None:
    # A generation job (generate_blip2/generate_llava or one rule `generate`: matched by its
    # command) with at least one chunk persisted and at least one still to do.
    if not dialogclip_command(proc.argv, "generate-dialogue"):
        return None
    log = stderr_file(proc.pid)
    if log is None or not log.is_file():
        return None
    plan = _CHUNKS_LINE.search(log.read_text(errors="replace"))
    chunks = finished_chunks(workdir, proc.argv)
    if plan is None or not 0 < len(chunks) < int(plan.group(1)):
        return None
    return Victim("generation", proc.argv, log, option(proc.argv, "--output"), chunks)


def newest_checkpoint(workdir: Path, argv: tuple[str, ...]) -> tuple[Path, int, int] | None:
    """The newest complete checkpoint of a training job: (dir, step, total steps)."""
    root = workdir / option(argv, "--run-dir") / "checkpoints"
    steps = sorted(root.glob("step-*")) if root.is_dir() else []
    if not steps:
        return None
    state = json.loads((steps[-1] / "state.json").read_text())
    return steps[-1], state["step"], state["total_steps"]


def train_moment(workdir: Path, proc: Proc) -> Victim | None:
    # A training job with a checkpoint written and updates left after it.
    if not dialogclip_command(proc.argv, "train"):
        return None
    log = stderr_file(proc.pid)
    newest = newest_checkpoint(workdir, proc.argv)
    if log is None or newest is None or newest[1] >= newest[2] - 1:
        return None
    return Victim("training", proc.argv, log, option(proc.argv, "--final"), [newest[0].name])


Moment = Callable[[Path, Proc], "Victim | None"]


# --- running and killing -------------------------------------------------------------------


def assert_group_gone(pgid: int) -> None:
    """No live process of the group is left (zombies waiting for their reaper are dead)."""
    deadline = time.monotonic() + 30
    while True:
        alive = [p for p in group_processes(pgid) if p.state not in ("Z", "X")]
        if not alive:
            return
        assert time.monotonic() < deadline, f"still alive after SIGKILL: {alive}"
        time.sleep(0.1)


def run_and_kill(workdir: Path, log: Path, moment: Moment) -> Victim:
    """Start the demo command; SIGKILL its process group while ``moment`` finds a victim."""
    with log.open("w") as out:
        run = subprocess.Popen(
            demo_command(workdir),
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=_env(),
        )
    try:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        victim = None
        while victim is None:
            if run.poll() is not None:
                pytest.fail(
                    f"the demo run ended (rc {run.returncode}) before a kill window of "
                    f"{moment.__name__} came up (the stage finished too fast or failed); "
                    f"log {log}:\n{log.read_text()[-4000:]}"
                )
            assert time.monotonic() < deadline, f"{moment.__name__}: no window in time"
            for proc in group_processes(run.pid):
                victim = moment(workdir, proc)
                if victim is not None:
                    break
            else:
                time.sleep(POLL_S)
        os.killpg(run.pid, signal.SIGKILL)
        assert run.wait(timeout=60) == -signal.SIGKILL
        assert_group_gone(run.pid)
        return victim
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=60)


def after_kill(workdir: Path, victim: Victim, all_outputs: set[str]) -> dict[str, int]:
    """Check the state a kill left; return the mtimes of the complete outputs."""
    complete = complete_outputs(workdir)
    # The kill landed inside the job: its output is not complete, and it is marked incomplete.
    assert victim.output not in complete
    assert victim.output in recorded_keys(workdir / ".snakemake" / "incomplete")
    if victim.stage == "generation":
        chunks = finished_chunks(workdir, victim.argv)
        assert chunks, f"{victim.output}: no chunk survived the kill"
        victim.resume_line = f"resuming after finished chunk(s) {[int(c[:5]) for c in chunks]}"
    if victim.stage == "training":
        newest = newest_checkpoint(workdir, victim.argv)
        assert newest is not None and newest[1] < newest[2], newest
        where = Path(option(victim.argv, "--run-dir")) / "checkpoints" / newest[0].name
        victim.resume_line = f"resuming from {where} (step {newest[1]} of {newest[2]})"
    # The plan right after the kill: exactly the jobs with an output that is not complete --
    # the killed job (for its incomplete output) and those not run yet, nothing finished.
    jobs = planned(workdir)
    outputs = {path for job in jobs for path in job.outputs}
    assert outputs & complete == set()
    assert outputs == all_outputs - complete
    killed = [job for job in jobs if victim.output in job.outputs]
    # Snakemake names the killed job's output: missing (a job that writes its output last) or
    # incomplete (one killed after writing it).
    assert len(killed) == 1, killed
    assert re.match(
        rf"(Missing|Incomplete) output files: .*{re.escape(victim.output)}", killed[0].reason
    )
    return mtimes(workdir, complete)


def rerun_log_checks(log: Path) -> None:
    text = log.read_text()
    assert LOCK_REFUSED not in text
    assert STALE_LOCK_CLEARED in text, f"{log}: the stale lock was not cleared by run.sh"


# --- the final results -------------------------------------------------------------------------


def _comparable(root: Path, rel: str) -> object:
    """A result file's content, less what legitimately differs (see the top of this module)."""
    path = root / rel
    if path.suffix == ".safetensors":
        return {name: tensor for name, tensor in load_file(str(path)).items()}
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in records]
    if re.fullmatch(r"results/ingest/(retried/)?stats/\d+\.json", rel):
        record = json.loads(path.read_text())
        return {k: v for k, v in record.items() if k not in INGEST_STATS_VOLATILE}
    if re.fullmatch(r"results/dialogue/\w+/stats/\d+\.json", rel):
        record = json.loads(path.read_text())
        record["engine"].pop("settings")
        return {k: v for k, v in record.items() if k not in DIALOGUE_STATS_VOLATILE}
    if re.fullmatch(r"results/ingest/(retried/)?shards/\d+\.parquet", rel):
        rows = pq.read_table(path).to_pylist()
        for row in rows:
            if row["error_message"]:
                row["error_message"] = row["error_message"].replace(str(root), "<demo>")
        return rows
    return path.read_bytes()


def result_files(root: Path) -> list[str]:
    """Every file under results/ but the runs' scratch (training checkpoints under work/,
    generation chunks under .chunks/, both removed or pruned as a run goes)."""
    files = []
    for path in sorted((root / "results").rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and "/work/" not in rel and "/.chunks/" not in rel:
            files.append(rel)
    return files


def assert_same_results(got_root: Path, want_root: Path) -> None:
    files = result_files(got_root)
    assert files == result_files(want_root)
    assert sum(rel.startswith("results/eval/") and rel.endswith(".json") for rel in files) > 20
    for rel in files:
        got, want = _comparable(got_root, rel), _comparable(want_root, rel)
        if rel.endswith(".safetensors"):
            assert sorted(got) == sorted(want), rel
            for name, tensor in want.items():
                assert torch.equal(got[name], tensor), f"{rel}: tensor {name} differs"
        else:
            assert got == want, f"{rel} differs from the uninterrupted run's"


# --- the test ----------------------------------------------------------------------------------


# The crash part is about one demo run (and 4 restarts); finished_demo another unless reused.
@pytest.mark.timeout(3 * DEMO_RUN_TIMEOUT_S)
def test_sigkill_during_download_generation_and_training(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    workdir = copy_demo(tmp_path / "demo")
    all_outputs = {path for job in planned(workdir) for path in job.outputs}
    assert any(p.startswith("results/train/runs/") for p in all_outputs)

    finished: dict[str, int] = {}  # complete output -> mtime, over every kill
    victims = []
    for index, moment in enumerate((download_moment, generate_moment, train_moment)):
        log = tmp_path / f"run{index}.log"
        victim = run_and_kill(workdir, log, moment)
        if index:
            rerun_log_checks(log)
        kept = after_kill(workdir, victim, all_outputs)
        # What was complete at an earlier kill is complete still, and untouched.
        assert {k: kept.get(k) for k in finished} == finished
        finished.update(kept)
        victims.append(victim)

    last = tmp_path / "final.log"
    with last.open("w") as out:
        result = subprocess.run(
            demo_command(workdir),
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=PHASE_TIMEOUT_S,
            env=_env(),
        )
    assert result.returncode == 0, last.read_text()[-6000:]
    rerun_log_checks(last)

    # Nothing finished before a kill was recomputed; nothing is left to do.
    assert mtimes(workdir, set(finished)) == finished
    assert planned(workdir) == []
    # The killed generation and training jobs resumed from what they had persisted.
    for victim in victims:
        if victim.resume_line:
            assert victim.resume_line in (workdir / victim.log).read_text(), victim
    # The uninterrupted run (the session fixture) is asked for last: run alone, this test then
    # builds it only once the crash part has passed.
    assert_same_results(workdir, request.getfixturevalue("finished_demo"))
