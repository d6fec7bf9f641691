"""scripts/run.sh (dialogclip.core.run_workflow): a rerun after a SIGKILL clears the stale lock by
itself; while a Snakemake (or another run.sh run) is live on the directory it refuses and leaves
the lock alone. Real Snakemake processes on a copy of the demo, killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from workflow_helpers import CPU_DEFAULT_RESOURCES, REPO_ROOT, VENV_BIN, copy_demo

from dialogclip.core.run_workflow import (
    RUN_LOCK,
    is_snakemake_command,
    lock_files,
    workflow_directory,
)

RUN_SH = REPO_ROOT / "scripts" / "run.sh"
# One cheap job (rule world_clip: the demo's baseline CLIP, expanded from its compact file), and
# a longer chain that is still running when we look.
QUICK_TARGET = "results/models/world-clip.safetensors"
LONG_TARGETS = ("results/eval/retrieval/tiny/coco.json", "results/eval/vqa/tiny/vqa_real.json")


def _args(workdir: Path, *targets: str) -> list[str]:
    return [
        "--snakefile",
        str(REPO_ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--workflow-profile",
        "none",
        *CPU_DEFAULT_RESOURCES,
        "--cores",
        "1",
        *targets,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}


def _run(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env())


@contextmanager
def _locked_run(command: list[str], workdir: Path, log: Path) -> Iterator[subprocess.Popen]:
    """Start ``command`` in its own process group and yield once Snakemake has locked
    ``workdir``; the whole group is SIGKILLed on exit (if still alive)."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=_env()
        )
    try:
        deadline = time.monotonic() + 180
        while not lock_files(workdir):
            assert proc.poll() is None, f"snakemake ended before locking:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no lock after 180 s:\n{log.read_text()}"
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


@pytest.mark.dag
def test_stale_lock_after_sigkill_is_cleared(tmp_path: Path) -> None:
    workdir = copy_demo(tmp_path / "demo")
    args = _args(workdir, QUICK_TARGET)
    with _locked_run([str(VENV_BIN / "snakemake"), *args], workdir, tmp_path / "killed.log"):
        pass  # SIGKILL of the whole process group, right after Snakemake took its lock
    stale = lock_files(workdir)
    assert stale, "SIGKILL left no lock"

    # Plain Snakemake refuses the stale lock: this is what users met.
    plain = _run([str(VENV_BIN / "snakemake"), *args])
    assert plain.returncode != 0
    assert "Directory cannot be locked" in plain.stdout + plain.stderr

    wrapped = _run(["bash", str(RUN_SH), *args])
    assert wrapped.returncode == 0, wrapped.stderr[-4000:]
    where = workdir.resolve()
    assert (
        "removed the stale lock of a Snakemake run that was killed: no Snakemake process is "
        f"running on {where} ({len(stale)} file(s) in {where / '.snakemake/locks'}"
    ) in wrapped.stderr
    assert (workdir / QUICK_TARGET).stat().st_size > 0
    assert lock_files(workdir) == []


@pytest.mark.dag
def test_live_snakemake_keeps_its_lock(tmp_path: Path) -> None:
    workdir = copy_demo(tmp_path / "demo")
    args = _args(workdir, *LONG_TARGETS)
    with _locked_run([str(VENV_BIN / "snakemake"), *args], workdir, tmp_path / "live.log") as live:
        locks = lock_files(workdir)
        contents = [p.read_text() for p in locks]
        refused = _run(["bash", str(RUN_SH), *args])
        assert live.poll() is None, "the live run ended before the check was over"
        assert refused.returncode == 1
        message = refused.stderr
        assert f"Snakemake is running on {workdir.resolve()} (pid {live.pid}: " in message
        assert f"not clearing its lock ({workdir.resolve() / '.snakemake/locks'})" in message
        assert "Snakemake version" not in refused.stdout + message  # it never started one
        assert lock_files(workdir) == locks
        assert [p.read_text() for p in locks] == contents


@pytest.mark.dag
def test_second_run_sh_run_is_refused(tmp_path: Path) -> None:
    workdir = copy_demo(tmp_path / "demo")
    args = _args(workdir, *LONG_TARGETS)
    with _locked_run(["bash", str(RUN_SH), *args], workdir, tmp_path / "first.log") as first:
        # The first run's Snakemake holds the flock under the pid of run.sh (exec keeps it).
        assert (workdir / RUN_LOCK).read_text() == f"{first.pid}\n"
        locks = lock_files(workdir)
        second = _run(["bash", str(RUN_SH), *args])
        assert first.poll() is None, "the first run ended before the check was over"
        assert second.returncode == 1
        assert (
            f"another run started by scripts/run.sh is using {workdir.resolve()} "
            f"(pid {first.pid}, it holds {workdir.resolve() / RUN_LOCK})"
        ) in second.stderr
        assert lock_files(workdir) == locks


@pytest.mark.dag
def test_dry_run_ignores_the_lock(tmp_path: Path) -> None:
    # A dry run takes no lock, so a stale one neither blocks it nor is removed by it.
    workdir = copy_demo(tmp_path / "demo")
    (workdir / ".snakemake" / "locks").mkdir(parents=True)
    stale = workdir / ".snakemake" / "locks" / "0.input.lock"
    stale.write_text("x\n")
    result = _run(["bash", str(RUN_SH), *_args(workdir, QUICK_TARGET), "--dry-run"])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "world_clip" in result.stdout
    assert stale.read_text() == "x\n"


def test_snakemake_command_lines() -> None:
    assert is_snakemake_command(["snakemake", "--cores", "1"])
    assert is_snakemake_command(["/x/.venv/bin/snakemake"])
    assert is_snakemake_command(["/x/.venv/bin/python3.11", "/x/.venv/bin/snakemake", "-n"])
    assert is_snakemake_command(["python", "-u", "-m", "snakemake", "--unlock"])
    assert is_snakemake_command(["python3", "-msnakemake"])
    assert not is_snakemake_command(["python", "-m", "dialogclip.core.run_workflow"])
    assert not is_snakemake_command(["python", "/x/bin/dialogclip", "snakemake"])
    assert not is_snakemake_command(["bash", "scripts/run.sh"])
    assert not is_snakemake_command([])


def test_make_targets_use_run_sh() -> None:
    result = subprocess.run(
        ["make", "-n", "demo", "run"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    lines = result.stdout.splitlines()
    assert "bash scripts/run.sh --workflow-profile workflow/profiles/demo" in lines
    assert "bash scripts/run.sh" in lines


def test_workflow_directory_comes_from_the_profile(monkeypatch) -> None:
    # `make demo` names no --directory: the demo profile's `directory:` is where the lock lives.
    monkeypatch.chdir(REPO_ROOT)
    demo = REPO_ROOT / "resources" / "demo"
    assert workflow_directory(["--workflow-profile", "workflow/profiles/demo"]) == (demo, False)
    assert workflow_directory(["--workflow-profile", "demo", "-n"]) == (demo, True)
    assert workflow_directory(["--unlock"]) == (REPO_ROOT, True)
    assert workflow_directory(["-d", "/tmp", "--workflow-profile", "demo"]) == (
        Path(os.path.realpath("/tmp")),
        False,
    )
    assert workflow_directory(["--no-such-option"]) is None
