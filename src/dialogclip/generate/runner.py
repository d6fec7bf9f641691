"""One generation job: an ingested shard in, a dialogue shard (+ stats) out, resumable by chunk.

The shard's successfully downloaded rows are cut into chunks of ``chunk_size`` images. Each
finished chunk is written atomically to ``work_dir/NNNNN.parquet`` together with a fingerprint
of everything that determines its content (input file, generator settings, backend, versions).
A job killed at any moment (SIGKILL included) and started again keeps the chunks whose
fingerprint matches and generates only the rest; under greedy decoding the assembled shard is
then identical to an uninterrupted run's. The work folder is removed once the shard is written
(``keep_chunks``: once the job ends, by ``dialogclip generate-dialogue``).
The chunks of a shard can also be made by another job's engine that works ahead on it
(:mod:`~dialogclip.generate.work_ahead`): they carry the same fingerprint, so this job keeps
them and, when none is left to make, assembles the shard without starting an engine.

The job's science (:class:`~dialogclip.generate.config.GenerateConfig`) goes into the shard's
Parquet metadata and the fingerprint; its machine settings
(:class:`~dialogclip.generate.config.MachineSettings`: backend choice, chunk size, batch sizes,
memory, workers) go into the stats only. Images are decoded in a background thread pool while
the engine works on the previous chunk (``prefetch_chunks`` ahead); the time the engine spends
waiting for decoded images is measured and reported (``timing.engine_wait_fraction`` in the
stats).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dialogclip.core.io import write_json_atomic, write_parquet_atomic
from dialogclip.generate.backend import (
    OMP_WAIT_POLICY,
    GenerationBackend,
    passive_openmp_waits,
)
from dialogclip.generate.config import GenerateConfig, MachineSettings
from dialogclip.generate.decode_prefetch import DecodePrefetcher
from dialogclip.generate.engine import LazyEngine
from dialogclip.generate.generators import make_generator
from dialogclip.generate.schema import dialogue_row, error_row, rows_to_table
from dialogclip.generate.shard_plan import ShardWork, plan_shard
from dialogclip.generate.shard_stats import (
    EngineClock,
    log_shard_summary,
    shard_stats,
    torch_threads,
)

log = logging.getLogger(__name__)

# A job process imports this module before torch (dialogclip generate-dialogue): the OpenMP
# wait policy must be in the environment when torch loads libgomp.
passive_openmp_waits()


def generate_shard(
    shard_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    stats_path: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    generator: str,
    config: GenerateConfig,
    backend: GenerationBackend | LazyEngine | None = None,
    machine: MachineSettings | None = None,
    keep_chunks: bool = False,
) -> dict[str, Any]:
    """Generate the dialogue shard of ``generator`` for one ingested shard; returns the stats.

    ``config``: the science; ``machine``: how to run it here (default: ``MachineSettings()``).
    ``backend``: an engine to use (and leave open), e.g. one shared by several calls, or the
    job's :class:`LazyEngine` (started here only if some chunk needs work, left open); by
    default one is built (and closed) only if some chunk still needs work. Its device and
    dtype are resolved first (:func:`resolve_engine`): they are part of the chunks'
    fingerprint, so chunks made on another device or in another dtype are discarded.
    ``keep_chunks``: leave the finished chunks in ``work_dir`` (the caller removes them once
    its job is done, so that a job killed later, while working ahead, resumes from them).
    """
    started = time.perf_counter()
    machine = machine or MachineSettings()
    if isinstance(backend, LazyEngine):
        engine = backend
    else:
        engine = LazyEngine(generator, config, machine, backend=backend)
    own_engine = backend is None
    work = plan_shard(shard_path, work_dir, generator, config, machine, engine)
    target = engine.target
    pending = work.pending
    if work.done:
        log.info("resuming after finished chunk(s) %s", sorted(work.done))
    clock = EngineClock()
    engine_settings = None
    if pending:
        was_started = engine.started
        running = engine.get()
        if not was_started:
            clock.engine_start_s = engine.start_s
        engine_settings = running.settings()
        log.info("engine settings: %s", engine_settings)
        try:
            run_chunks(work, running, generator, config, machine, clock)
        finally:
            if own_engine:
                clock.engine_close_s = engine.close()
    table = work.store.read_all(len(work.chunks))
    write_parquet_atomic(table, output_path, work.metadata)
    stats = shard_stats(table, work.rows, generator, target.backend, work.ctx.model)
    stats["chunks"] = {
        "total": len(work.chunks),
        "chunk_size": machine.chunk_size,
        "resumed": len(work.done),
        "computed": len(pending),
    }
    stats["timing"] = {"wall_s": round(time.perf_counter() - started, 3), **clock.as_dict()}
    stats["engine"] = {
        **dataclasses.asdict(target),
        "threads": torch_threads(),
        "omp_wait_policy": os.environ.get(OMP_WAIT_POLICY),
        "settings": engine_settings,
    }
    stats["machine"] = dataclasses.asdict(machine)
    write_json_atomic(stats, stats_path)
    if not keep_chunks:
        work.store.remove()
    log_shard_summary(stats)
    return stats


def run_chunks(
    work: ShardWork,
    backend: GenerationBackend,
    generator: str,
    config: GenerateConfig,
    machine: MachineSettings,
    clock: EngineClock,
    stop: Callable[[], str | None] | None = None,
) -> int:
    """Generate and persist ``work``'s pending chunks in order; returns how many were made.

    ``stop``: asked before each chunk; a reason (a string) ends the loop there (work ahead:
    the shard's own job wants it, or the job's wall time would run out).
    """
    rows, chunks, pending = work.rows, work.chunks, work.pending
    dialogue_generator = make_generator(generator, config)
    if backend.target.device == "cpu":
        _warn_if_oversubscribed()
    workers = machine.decode_workers or machine.threads or os.cpu_count() or 1
    made = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        prefetcher = DecodePrefetcher(
            pool,
            rows.images,
            [chunks[i] for i in pending],
            config.decode,
            machine.prefetch_chunks,
        )
        for position, index in enumerate(pending):
            reason = stop() if stop is not None else None
            if reason:
                log.info("stopping before chunk %d/%d: %s", index + 1, len(chunks), reason)
                pool.shutdown(wait=False, cancel_futures=True)  # the decodes queued ahead
                break
            chunk = chunks[index]
            waited_from = time.perf_counter()
            decoded = prefetcher.take(position)
            busy_from = time.perf_counter()
            wait = busy_from - waited_from
            keys = [rows.keys[row] for row in chunk]
            urls = [rows.urls[row] for row in chunk]
            usable = [i for i, item in enumerate(decoded) if item.image is not None]
            dialogues = (
                dialogue_generator.run(
                    backend, [decoded[i].image for i in usable], [keys[i] for i in usable]
                )
                if usable
                else []
            )
            by_position = dict(zip(usable, dialogues, strict=True))
            table = rows_to_table(
                [
                    dialogue_row(keys[i], urls[i], by_position[i], work.ctx)
                    if i in by_position
                    else error_row(keys[i], urls[i], decoded[i].error or "unknown", work.ctx)
                    for i in range(len(chunk))
                ]
            )
            busy = time.perf_counter() - busy_from
            work.store.write(index, table)
            made += 1
            clock.busy_s += busy
            clock.chunk_busy_s.append(busy)
            clock.wait_s += wait
            if position == 0:
                clock.first_wait_s = wait
            clock.images += len(usable)
            log.info(
                "chunk %d/%d: %d images (%d unusable) in %.2f s, %.2f img/s; input wait %.3f s",
                index + 1,
                len(chunks),
                len(chunk),
                len(chunk) - len(usable),
                busy,
                len(usable) / busy if busy else 0.0,
                wait,
            )
    return made


def _warn_if_oversubscribed() -> None:
    """Warn when the machine's cores are already busy, the engine computes with several threads
    and OpenMP threads spin while they wait (``OMP_WAIT_POLICY`` set to active by the user):
    each parallel region then waits for descheduled threads (see
    :func:`~dialogclip.generate.backend.passive_openmp_waits`)."""
    import torch

    threads, cores = torch.get_num_threads(), os.cpu_count() or 1
    load = os.getloadavg()[0]
    if threads > 1 and load > cores and os.environ.get(OMP_WAIT_POLICY, "").upper() != "PASSIVE":
        log.warning(
            "load average %.1f on %d cores, %d compute threads, OMP_WAIT_POLICY=%s: spinning "
            "threads on a busy machine slow every CPU kernel; use 1 thread or PASSIVE waits",
            load,
            cores,
            threads,
            os.environ.get(OMP_WAIT_POLICY),
        )
