"""One ``generate-dialogue`` job: its own shard, then (``shards_per_engine`` > 1) the chunks of
pending shards beside it with the same engine, and the job's account in the shard's stats.

The job claims its own shard's chunk folder (:class:`~dialogclip.generate.work_ahead.ShardLock`)
while it generates it, so no other job's engine works ahead on it meanwhile; its chunks stay
until the job ends, so a job killed while working ahead resumes from them instead of generating
its shard again. An error while working ahead never fails the job: its own shard is written.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dialogclip.core.io import write_json_atomic
from dialogclip.generate.config import GenerateConfig, MachineSettings
from dialogclip.generate.engine import LazyEngine
from dialogclip.generate.runner import generate_shard
from dialogclip.generate.work_ahead import (
    RUNTIME_MARGIN,
    ShardLock,
    ShardPaths,
    WorkAhead,
    work_ahead,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationJob:
    """What one job does: a generator on its own shard, and how far its engine reaches."""

    generator: str
    own: ShardPaths
    stats_path: Path
    config: GenerateConfig  # the science
    machine: MachineSettings  # how to run it here
    shards_per_engine: int = 1  # its own shard plus up to this - 1 pending ones
    runtime_min: int = 0  # the job's wall-time limit in minutes (0: none)
    model_path: str | None = None  # a fetched local copy of the generator's model


def run_generation_job(job: GenerationJob, started: float | None = None) -> dict[str, Any]:
    """Generate ``job``'s own shard, work ahead, write its stats with the job's account
    (``stats["job"]``) and remove its chunk folder; returns the stats.

    ``started``: the ``time.monotonic()`` instant the job began (default: now), from which its
    wall time and its work-ahead deadline count.
    """
    started = time.monotonic() if started is None else started
    engine = LazyEngine(job.generator, job.config, job.machine, model_path=job.model_path)
    ahead = None
    try:
        stats = _own_shard(job, engine)
        if job.shards_per_engine > 1:
            ahead = _work_ahead(job, engine, started, stats)
    finally:
        engine_close_s = engine.close()
    shutil.rmtree(job.own.work_dir, ignore_errors=True)  # the job is done: its chunks can go
    stats["job"] = _job_account(job, engine, engine_close_s, ahead, time.monotonic() - started)
    write_json_atomic(stats, job.stats_path)
    log.info(
        "job: %.1f s in all; engine start %s s (%s of the job); shards made ahead: %s",
        stats["job"]["wall_s"],
        stats["job"]["engine_start_s"],
        stats["job"]["engine_start_share"],
        ahead.shards if ahead else [],
    )
    return stats


def _own_shard(job: GenerationJob, engine: LazyEngine) -> dict[str, Any]:
    """The job's own shard under its claim; its chunks stay (see the module docstring)."""
    lock = ShardLock(job.own.work_dir)
    lock.acquire_as_owner()
    try:
        return generate_shard(
            shard_path=job.own.shard,
            output_path=job.own.output,
            stats_path=job.stats_path,
            work_dir=job.own.work_dir,
            generator=job.generator,
            config=job.config,
            backend=engine,
            machine=job.machine,
            keep_chunks=True,
        )
    finally:
        lock.release()


def _work_ahead(
    job: GenerationJob, engine: LazyEngine, started: float, stats: dict[str, Any]
) -> WorkAhead | None:
    """The chunks of up to ``shards_per_engine - 1`` pending shards; None after an error."""
    try:
        return work_ahead(
            job.own,
            engine,
            job.generator,
            job.config,
            job.machine,
            max_shards=job.shards_per_engine - 1,
            deadline=started + RUNTIME_MARGIN * job.runtime_min * 60 if job.runtime_min else None,
            slowest_chunk_s=max(stats["timing"]["chunk_busy_s"], default=0.0),
        )
    except Exception:
        # The job's own shard is written: an error while working ahead must not fail the job
        # (Snakemake would delete that shard). The shard it was on keeps its finished chunks;
        # its own job makes the rest, and meets the error, if any.
        log.exception("working ahead stopped by an error; this job's shard is done")
        return None


def _job_account(
    job: GenerationJob,
    engine: LazyEngine,
    engine_close_s: float | None,
    ahead: WorkAhead | None,
    wall_s: float,
) -> dict[str, Any]:
    """The whole job's account beside its own shard's: where the engine's start went, and
    what it made ahead of other shards' jobs."""
    start_s = engine.start_s
    return {
        "wall_s": round(wall_s, 3),
        "engine_start_s": None if start_s is None else round(start_s, 3),
        "engine_close_s": None if engine_close_s is None else round(engine_close_s, 3),
        "engine_start_share": None if start_s is None else round(start_s / wall_s, 4),
        "shards_per_engine": job.shards_per_engine,
        "work_ahead": ahead.as_dict() if ahead else None,
    }
