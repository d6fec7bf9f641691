"""Work ahead: after its own shard, a generation job's engine makes other shards' chunks.

Why: a vLLM engine takes tens of seconds to start on a GPU (imports, weights, torch.compile,
CUDA graph capture; docs/gpu.md), while one 10,000-image shard keeps it busy for only
100-400 s, so one engine per shard would spend 7-47 % of the GPU's time starting. Issue 11 asks
for under 5 %. Here a job keeps its engine once its own shard is written and makes the chunks
of up to ``shards_per_engine - 1`` other shards that no job has finished or claimed, into those
shards' own chunk folders, exactly as their jobs would (same fingerprint: runner.py). When
Snakemake then runs the job of such a shard, every chunk is there: the job only assembles the
shard (seconds) and starts no engine. One start serves ``shards_per_engine`` shards.

Snakemake still sees one job per shard with the same inputs and outputs, and
``shards_per_engine`` is a resource: changing it reruns nothing, and the shards equal those of
jobs that each made their own.

Claims: a shard's chunk folder ``.chunks/<shard>`` has a lock file ``.chunks/<shard>.lock``
(``flock``), held by the shard's own job while it runs and by a job working ahead on the shard
while it makes its chunks. The kernel drops the lock when its process dies, SIGKILL included, so
a killed job never leaves a shard claimed; its finished chunks stay for whoever comes next. A
job working ahead only takes a free lock. A shard's own job that finds the lock taken leaves a
marker, ``.chunks/<shard>.wanted``, and waits: the job working ahead sees it before its next
chunk, lets go and moves on, and the owner makes the rest with its own engine (it waits at most
one chunk).

With ``DIALOGCLIP_LOCK_DIR`` (a file system without ``flock``: core/locks.py) the lock files are
on each node's local disk, so claims hold only among the jobs of one node; a job under Slurm,
whose neighbours may run on other nodes, then does not work ahead (``dialogclip
generate-dialogue`` says so in its log).

Which shards: the ingested shards in the folder of the job's own one, in name order after it
(then from the first), whose dialogue shard does not exist yet. Wall time: no chunk is started
that could end past 95 % of the job's ``runtime`` resource (judged by the slowest chunk so far).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dialogclip.core.io import TMP_PREFIX
from dialogclip.core.locks import (
    ENV_LOCK_DIR,
    LockUnsupportedError,
    flock,
    lock_dir_override,
    lock_folder,
    open_lock_file,
)
from dialogclip.generate.config import GenerateConfig, MachineSettings
from dialogclip.generate.runner import EngineClock, LazyEngine, plan_shard, run_chunks

log = logging.getLogger(__name__)

RUNTIME_MARGIN = 0.95  # the share of the job's wall time work ahead may fill
WANTED = "its own job wants it"
OUT_OF_TIME = "the job's wall time would run out"


@dataclass(frozen=True)
class ShardPaths:
    """Where one shard's generation reads and writes."""

    shard: Path  # the ingested shard (Parquet)
    output: Path  # the dialogue shard (Parquet)
    work_dir: Path  # its finished chunks

    def sibling(self, name: str) -> ShardPaths:
        """The same paths for shard ``name`` (the layout of the rule ``generate``)."""
        return ShardPaths(
            shard=self.shard.parent / f"{name}.parquet",
            output=self.output.parent / f"{name}.parquet",
            work_dir=self.work_dir.parent / name,
        )


class ShardLock:
    """The claim on one shard's chunk folder: ``flock`` on ``<work_dir>.lock``, released by
    :meth:`release` or by the death of the process."""

    def __init__(self, work_dir: Path) -> None:
        # Beside the chunk folder, or on a local disk (DIALOGCLIP_LOCK_DIR: core/locks.py).
        self.path = lock_folder(work_dir.parent) / f"{work_dir.name}.lock"
        self.wanted = work_dir.parent / f"{work_dir.name}.wanted"
        self._fd: int | None = None

    def _take(self, wait: bool) -> bool:
        """Open the lock file and ``flock`` it: blocking if ``wait``, else False when taken."""
        fd = open_lock_file(self.path, shared=lock_dir_override() is not None)
        try:
            flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB, self.path)
        except BlockingIOError:
            os.close(fd)
            return False
        except LockUnsupportedError:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def try_acquire(self) -> bool:
        """Take the lock if it is free; False if another job holds it."""
        return self._take(wait=False)

    def acquire_as_owner(self) -> float:
        """Claim the shard for its own job: at once if free, else announce the claim (the
        ``.wanted`` marker) and wait until the job working ahead on it lets go. Returns the
        seconds waited."""
        begin = time.perf_counter()
        if not self._take(wait=False):
            self.wanted.touch()
            log.info(
                "%s is held by a job working ahead on this shard: waiting for it to finish "
                "its current chunk",
                self.path,
            )
            self._take(wait=True)
        self.wanted.unlink(missing_ok=True)  # also a marker left by a killed owner
        waited = time.perf_counter() - begin
        if waited > 0.1:
            log.info("claimed the shard after waiting %.1f s", waited)
        return waited

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def shards_per_engine_here(requested: int, environ: Mapping[str, str] | None = None) -> int:
    """The shards one engine may serve in this job: ``requested``, or 1 under Slurm when the
    lock files are node-local (``DIALOGCLIP_LOCK_DIR``), where a claim cannot keep a job on
    another node off a shard."""
    environ = os.environ if environ is None else environ
    if requested > 1 and lock_dir_override(environ) and "SLURM_JOB_ID" in environ:
        log.warning(
            "%s is set: work-ahead claims would hold on this node only; under Slurm this job "
            "makes its own shard only (shards_per_engine 1 instead of %d)",
            ENV_LOCK_DIR,
            requested,
        )
        return 1
    return requested


def candidates(own: ShardPaths) -> list[ShardPaths]:
    """The shards a job may work ahead on: the ingested shards beside its own, in name order
    after it and then from the first, without a dialogue shard yet."""
    names = sorted(
        path.stem
        for path in own.shard.parent.glob("*.parquet")
        if not path.name.startswith(TMP_PREFIX) and path.stem != own.shard.stem
    )
    ordered = [n for n in names if n > own.shard.stem] + [n for n in names if n < own.shard.stem]
    return [paths for paths in map(own.sibling, ordered) if not paths.output.exists()]


@dataclass
class WorkAhead:
    """What a job made ahead of other shards' jobs."""

    max_shards: int
    shards: list[str] = field(default_factory=list)  # every shard it made chunks of
    handed_over: list[str] = field(default_factory=list)  # left to their own job midway
    chunks: int = 0
    images: int = 0
    busy_s: float = 0.0
    stopped: str | None = None  # why it stopped before max_shards (None: reached or no work)

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_shards": self.max_shards,
            "shards": self.shards,
            "handed_over": self.handed_over,
            "chunks": self.chunks,
            "images": self.images,
            "engine_busy_s": round(self.busy_s, 3),
            "stopped": self.stopped,
        }


def work_ahead(
    own: ShardPaths,
    engine: LazyEngine,
    generator: str,
    config: GenerateConfig,
    machine: MachineSettings,
    max_shards: int,
    deadline: float | None = None,
    slowest_chunk_s: float = 0.0,
) -> WorkAhead:
    """Make the chunks of up to ``max_shards`` pending shards beside ``own`` with ``engine``
    (started only if some shard has a chunk to make).

    ``deadline``: a ``time.monotonic()`` instant no chunk may end after (None: no limit);
    ``slowest_chunk_s``: the slowest chunk of the job so far, to judge whether one more fits.
    """
    report = WorkAhead(max_shards=max_shards)
    slowest = slowest_chunk_s

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() + slowest > deadline

    for paths in candidates(own):
        if len(report.shards) >= max_shards:
            break
        if out_of_time():
            report.stopped = OUT_OF_TIME
            break
        lock = ShardLock(paths.work_dir)
        if not lock.try_acquire():
            continue  # its own job, or another job working ahead, is on it
        reasons: list[str] = []

        def stop(lock: ShardLock = lock, reasons: list[str] = reasons) -> str | None:
            reason = WANTED if lock.wanted.exists() else OUT_OF_TIME if out_of_time() else None
            if reason:
                reasons.append(reason)
            return reason

        try:
            if paths.output.exists() or lock.wanted.exists():
                continue
            work = plan_shard(paths.shard, paths.work_dir, generator, config, machine, engine)
            if not work.pending:
                continue
            log.info(
                "working ahead on shard %s: %d of %d chunk(s) to make",
                paths.shard.stem,
                len(work.pending),
                len(work.chunks),
            )
            clock = EngineClock()
            made = run_chunks(work, engine.get(), generator, config, machine, clock, stop)
        finally:
            lock.release()
        slowest = max([slowest, *clock.chunk_busy_s])
        if made:
            report.shards.append(paths.shard.stem)
            report.chunks += made
            report.images += clock.images
            report.busy_s += clock.busy_s
        if WANTED in reasons:
            report.handed_over.append(paths.shard.stem)
        elif reasons:
            report.stopped = reasons[-1]
            break
    log.info(
        "worked ahead on %d shard(s) %s: %d chunk(s), %d images%s",
        len(report.shards),
        report.shards,
        report.chunks,
        report.images,
        f"; stopped: {report.stopped}" if report.stopped else "",
    )
    return report
