"""Run Snakemake after clearing a stale lock: ``python -m dialogclip.core.run_workflow ARGS``.

A Snakemake killed with SIGKILL (by hand, the OOM killer, a closed login session) leaves its lock
files in ``<workdir>/.snakemake/locks``, and the next run stops with "Directory cannot be locked"
until someone runs ``snakemake --unlock``. This wrapper, which ``scripts/run.sh`` (``make demo``,
``make run``, docs/cluster.md) calls, removes such a lock when no Snakemake process is running
on that working directory and refuses to start when one is. Then it replaces itself with
``python -m snakemake ARGS``: the same Python (so the same environment), the same arguments.

"Running on that directory" means either of:

- a process whose command line is Snakemake (``snakemake ...``, ``python .../bin/snakemake ...``,
  ``python -m snakemake ...``) whose current directory is the working directory (Snakemake
  changes into ``--directory`` before it takes its lock) or whose ``--directory`` names it;
- a run started by this wrapper: it holds an flock on ``.snakemake/dialogclip-run.lock`` from
  before Snakemake starts until that Snakemake exits (the descriptor survives ``exec``), which
  covers the seconds before the new Snakemake has changed directory.

Processes are read from ``/proc``; another user's processes cannot be read and are not seen.
The working directory is the one Snakemake itself would use: its own argument parser reads
``--directory`` and the profiles (the demo profile sets ``directory: resources/demo``).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dialogclip.core.logging import setup_logging

log = logging.getLogger("dialogclip.run")

LOCKS = Path(".snakemake") / "locks"
RUN_LOCK = Path(".snakemake") / "dialogclip-run.lock"


@dataclass(frozen=True)
class SnakemakeProcess:
    """A live Snakemake process: its pid and command line."""

    pid: int
    argv: tuple[str, ...]

    def describe(self) -> str:
        return f"pid {self.pid}: {' '.join(self.argv)}"


def is_snakemake_command(argv: Sequence[str]) -> bool:
    """Whether a command line runs Snakemake (directly, as a script under Python, or ``-m``)."""
    if not argv:
        return False
    if os.path.basename(argv[0]) == "snakemake":
        return True
    if not os.path.basename(argv[0]).startswith("python"):
        return False
    rest = list(argv[1:])
    for i, arg in enumerate(rest):
        if arg == "-m":
            return i + 1 < len(rest) and rest[i + 1] == "snakemake"
        if arg.startswith("-m"):
            return arg[2:] == "snakemake"
        if arg.startswith("-"):
            continue  # an interpreter flag (-u, -X dev, ...)
        return os.path.basename(arg) == "snakemake"
    return False


def _directory_argument(argv: Sequence[str]) -> str | None:
    """The value of ``--directory``/``-d`` on a Snakemake command line, if any."""
    for i, arg in enumerate(argv):
        if arg in ("--directory", "-d") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--directory="):
            return arg.split("=", 1)[1]
    return None


def snakemake_processes(workdir: Path) -> list[SnakemakeProcess]:
    """The Snakemake processes (other than this one) running on ``workdir``, by pid."""
    workdir = Path(os.path.realpath(workdir))
    proc = Path("/proc")
    found = []
    entries = sorted(int(p.name) for p in proc.glob("[0-9]*") if p.name.isdigit())
    for pid in entries:
        if pid == os.getpid():
            continue
        try:
            raw = (proc / str(pid) / "cmdline").read_bytes()
            cwd = Path(os.readlink(proc / str(pid) / "cwd"))
        except OSError:
            continue  # gone meanwhile, a kernel thread, or another user's process
        argv = tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)
        if not is_snakemake_command(argv):
            continue
        directory = _directory_argument(argv)
        candidates = {cwd} if directory is None else {cwd, Path(os.path.realpath(cwd / directory))}
        if workdir in candidates:
            found.append(SnakemakeProcess(pid, argv))
    return found


def lock_files(workdir: Path) -> list[Path]:
    """Snakemake's lock files in ``workdir`` (none when it is not locked)."""
    folder = workdir / LOCKS
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def workflow_directory(args: Sequence[str]) -> tuple[Path, bool] | None:
    """The working directory ``snakemake ARGS`` would run in, and whether ARGS take no lock
    (dry run, ``--unlock``); None when Snakemake's parser rejects ARGS (Snakemake then says
    why itself)."""
    from snakemake.cli import parse_args

    # Its parser announces the profiles it reads; Snakemake says so again when it starts.
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(quiet):
            _, parsed = parse_args(list(args))
    except SystemExit:
        return None
    directory = Path(parsed.directory) if parsed.directory else Path.cwd()
    return Path(os.path.realpath(directory)), bool(parsed.dryrun or parsed.unlock)


class RunRefused(RuntimeError):
    """Another Snakemake run is using the working directory."""


def prepare_run(workdir: Path) -> int:
    """Take this run's flock on ``workdir`` and clear a stale Snakemake lock there.

    Returns the locked file descriptor (to be inherited by Snakemake). Raises RunRefused, with
    a message naming the directory and the other run, when a run is live there.
    """
    run_lock = workdir / RUN_LOCK
    run_lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunRefused(
            f"another run started by scripts/run.sh is using {workdir} (pid {holder}, it holds "
            f"{run_lock}); wait for it to finish or stop it, then rerun"
        ) from None
    locks = lock_files(workdir)
    if locks:
        live = snakemake_processes(workdir)
        if live:
            os.close(fd)
            names = "; ".join(p.describe() for p in live)
            raise RunRefused(
                f"Snakemake is running on {workdir} ({names}); not clearing its lock "
                f"({workdir / LOCKS}). Wait for it to finish or stop it, then rerun"
            )
        for path in locks:
            path.unlink(missing_ok=True)
        log.warning(
            "removed the stale lock of a Snakemake run that was killed: no Snakemake process "
            "is running on %s (%d file(s) in %s, what `snakemake --unlock` removes)",
            workdir,
            len(locks),
            workdir / LOCKS,
        )
    # The pid stays the same through exec: it names the Snakemake that will hold the flock.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def main(argv: Sequence[str] | None = None) -> int:
    """Check the working directory of ``snakemake ARGS``, then exec Snakemake with ARGS."""
    setup_logging("INFO")
    args = list(sys.argv[1:] if argv is None else argv)
    target = workflow_directory(args)
    if target is not None and not target[1]:
        try:
            fd = prepare_run(target[0])
        except RunRefused as err:
            log.error("%s", err)
            return 1
        os.set_inheritable(fd, True)
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, "-m", "snakemake", *args])
    return 0  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main())
