"""Work ahead (issue 11: engine start-up under 5 % of a generation job): after its own shard, a
job's engine makes other pending shards' chunks, which their own jobs then only assemble.

Checked on the tiny BLIP-2 with the transformers backend (the same code path as vLLM's):
- through the command the rule runs: one engine start serves ``--shards-per-engine`` shards, the
  later jobs start none, and every shard equals the one its own job makes alone;
- the claims: a shard held by another job, or wanted by its own, is left alone; a shard's own
  job takes over a shard being made ahead before the next chunk and the result is unchanged;
  a SIGKILLed holder frees its claim; the wall-time limit stops work ahead before a chunk.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from generate_helpers import TINY_MACHINE, blip2_command, ingest_row, jpeg_bytes, write_shard

from dialogclip.core.io import read_json, read_parquet_metadata
from dialogclip.generate.backend import Completion, GenerationBackend, GenerationRequest
from dialogclip.generate.config import generate_config_from_dict, machine_settings
from dialogclip.generate.runner import LazyEngine, generate_shard
from dialogclip.generate.work_ahead import (
    OUT_OF_TIME,
    ShardLock,
    ShardPaths,
    candidates,
    work_ahead,
)

SIZES = {"00000": 5, "00001": 6, "00002": 3}  # images per shard; chunks of 2: 3, 3 and 2


def _shards(folder: Path, sizes: dict[str, int] = SIZES) -> dict[str, Path]:
    paths, first = {}, 0
    for name, n in sizes.items():
        rows = [ingest_row(i, jpeg_bytes(i)) for i in range(first, first + n)]
        paths[name] = write_shard(folder / f"{name}.parquet", rows)
        first += n
    return paths


def _command(shard: Path, out: Path, params: dict, shards_per_engine: int) -> list[str]:
    flags = ["--shards-per-engine", str(shards_per_engine), "--runtime", "60"]
    return blip2_command(shard, out, params, *flags)


def _run(*args: Any) -> dict:
    result = subprocess.run(_command(*args), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    shard, out = args[0], args[1]
    return read_json(out / "stats" / f"{shard.stem}.json")


def _chunk_files(out: Path, name: str) -> list[str]:
    return sorted(p.name for p in (out / ".chunks" / name).glob("*.parquet"))


@pytest.mark.jobs
def test_one_engine_start_serves_several_shards_and_the_shards_are_unchanged(
    tiny_params, tmp_path
) -> None:
    shards = _shards(tmp_path / "in")
    reference = tmp_path / "reference"
    for shard in shards.values():
        alone = _run(shard, reference, tiny_params, 1)
        assert alone["job"]["work_ahead"] is None
        assert alone["timing"]["engine_start_s"] > 0  # each job alone starts an engine

    out = tmp_path / "out"
    # The job of 00000 with two shards per engine: its own, then all of 00001's chunks.
    first = _run(shards["00000"], out, tiny_params, 2)
    assert first["timing"]["engine_start_s"] > 0
    assert first["job"]["engine_start_s"] == first["timing"]["engine_start_s"]
    assert 0 < first["job"]["engine_start_share"] < 1
    assert first["job"]["work_ahead"] | {"engine_busy_s": None} == {
        "max_shards": 1,
        "shards": ["00001"],
        "handed_over": [],
        "chunks": 3,
        "images": 6,
        "engine_busy_s": None,
        "stopped": None,
    }
    assert (out / "00000.parquet").exists() and not (out / "00001.parquet").exists()
    assert not (out / ".chunks" / "00000").exists()  # its own chunks go with the job
    assert _chunk_files(out, "00001") == ["00000.parquet", "00001.parquet", "00002.parquet"]
    assert not (out / ".chunks" / "00002").exists()  # beyond --shards-per-engine

    # The job of 00001 finds every chunk made: it assembles its shard without an engine, then
    # starts one to work ahead on 00002.
    second = _run(shards["00001"], out, tiny_params, 2)
    assert second["chunks"] | {"chunk_size": None} == {
        "total": 3,
        "chunk_size": None,
        "resumed": 3,
        "computed": 0,
    }
    assert second["timing"]["engine_start_s"] is None
    assert second["job"]["engine_start_s"] > 0
    assert second["job"]["work_ahead"]["shards"] == ["00002"]

    # The last job starts no engine at all.
    third = _run(shards["00002"], out, tiny_params, 2)
    assert (third["chunks"]["computed"], third["job"]["engine_start_s"]) == (0, None)
    assert third["job"]["work_ahead"]["shards"] == []

    for name in shards:
        made, alone = out / f"{name}.parquet", reference / f"{name}.parquet"
        assert pq.read_table(made).equals(pq.read_table(alone)), name
        assert read_parquet_metadata(made) == read_parquet_metadata(alone), name
    assert sorted(p.name for p in (out / ".chunks").iterdir() if p.is_dir()) == []


@pytest.mark.jobs
def test_an_error_while_working_ahead_keeps_the_job_and_its_shard(tiny_params, tmp_path) -> None:
    """A foreign file among the ingested shards stops work ahead, not the job: its own shard is
    written (Snakemake would delete it if the job failed) and the log says why."""
    shards = _shards(tmp_path / "in", {"00000": 2})
    (tmp_path / "in" / "00001.parquet").write_bytes(b"not a shard")
    out = tmp_path / "out"
    command = _command(shards["00000"], out, tiny_params, 3)
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "working ahead stopped by an error; this job's shard is done" in result.stderr
    assert "00001.parquet" in result.stderr  # the error names the file
    stats = read_json(out / "stats" / "00000.json")
    assert stats["rows"]["generated"] == 2 and stats["job"]["work_ahead"] is None
    assert pq.read_table(out / "00000.parquet").num_rows == 2


@pytest.fixture
def setup(tiny_params, tmp_path) -> dict[str, Any]:
    """Shards 00000-00002, the paths of the job of 00000 and the API's settings."""
    shards = _shards(tmp_path / "in")
    out = tmp_path / "out"
    config = generate_config_from_dict(tiny_params)
    machine = machine_settings(**{**TINY_MACHINE, "chunk_size": 2})
    own = ShardPaths(shards["00000"], out / "00000.parquet", out / ".chunks" / "00000")
    return {"shards": shards, "out": out, "config": config, "machine": machine, "own": own}


def _work_ahead(setup: dict, max_shards: int = 2, **kwargs: Any):
    engine = LazyEngine("blip2", setup["config"], setup["machine"])
    try:
        report = work_ahead(
            setup["own"], engine, "blip2", setup["config"], setup["machine"], max_shards, **kwargs
        )
    finally:
        engine.close()
    return report, engine


def test_candidates_are_the_pending_shards_after_its_own(setup) -> None:
    own, out = setup["own"], setup["out"]
    assert [p.shard.stem for p in candidates(own.sibling("00001"))] == ["00002", "00000"]
    (out / "00002.parquet").parent.mkdir(parents=True)
    (out / "00002.parquet").write_bytes(b"")  # a finished dialogue shard
    assert [p.shard.stem for p in candidates(own)] == ["00001"]


def test_claimed_and_wanted_shards_are_left_alone(setup) -> None:
    out = setup["out"]
    held = ShardLock(out / ".chunks" / "00001")
    assert held.try_acquire()  # another job's claim
    ShardLock(out / ".chunks" / "00002").wanted.touch()  # its own job waits for it
    try:
        report, engine = _work_ahead(setup)
    finally:
        held.release()
    assert (report.shards, report.chunks) == ([], 0)
    assert not engine.started  # nothing to make: no engine start
    assert _chunk_files(out, "00001") == _chunk_files(out, "00002") == []


def test_no_chunk_is_started_past_the_deadline(setup) -> None:
    report, engine = _work_ahead(setup, deadline=time.monotonic() - 1)
    assert (report.shards, report.stopped, engine.started) == ([], OUT_OF_TIME, False)
    assert _chunk_files(setup["out"], "00001") == []


class _OwnerArrivesMidShard(GenerationBackend):
    """The real engine behind a gate that fixes the interleaving the next test is about: once
    the first chunk of ``work_dir`` is made ahead, the next request waits (lock held) until
    the shard's own job has announced itself with its ``.wanted`` marker. The owner therefore
    always arrives while a chunk is in progress, whatever the machine's load: no sleep or poll
    interval decides the outcome."""

    def __init__(self, backend: GenerationBackend, work_dir: Path) -> None:
        self.backend, self.name, self.target = backend, backend.name, backend.target
        self.work_dir, self.wanted = work_dir, ShardLock(work_dir).wanted
        self.holding = threading.Event()  # set when it waits for the owner, lock held
        self.opened_at: float | None = None  # when it saw the owner's marker
        self.held_call_s: float | None = None  # the request it then let through, to its end

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        gated = self.opened_at is None and any(self.work_dir.glob("*.parquet"))
        if gated:
            self.holding.set()
            deadline = time.monotonic() + 300
            while not self.wanted.exists():
                assert time.monotonic() < deadline, "the shard's own job never announced itself"
                time.sleep(0.01)
            self.opened_at = time.perf_counter()
        completions = self.backend.generate(requests)
        if gated and self.opened_at is not None:
            self.held_call_s = time.perf_counter() - self.opened_at
        return completions

    def settings(self) -> dict[str, Any]:
        return self.backend.settings()


def test_the_owner_takes_over_before_the_next_chunk(setup, tmp_path) -> None:
    """A shard's own job arrives while another job makes its chunks: it announces itself and
    waits; the other finishes the chunk in progress, stops before its next one and goes on to
    the next shard; the owner makes the rest. The shard equals one made by its own job alone."""
    shards = _shards(tmp_path / "in2", {"00000": 1, "00001": 8, "00002": 2})  # 1, 4, 1 chunks
    own = dataclasses.replace(setup["own"], shard=shards["00000"])
    out, config, machine = setup["out"], setup["config"], setup["machine"]
    real = LazyEngine("blip2", config, machine)
    gate = _OwnerArrivesMidShard(real.get(), out / ".chunks" / "00001")
    reports: list = []

    def make_ahead() -> None:
        engine = LazyEngine("blip2", config, machine, backend=gate)
        reports.append(work_ahead(own, engine, "blip2", config, machine, max_shards=2))

    ahead = threading.Thread(target=make_ahead)
    ahead.start()
    try:
        while not gate.holding.wait(timeout=1):
            assert ahead.is_alive(), "work ahead ended before it made a chunk of 00001"
        lock = ShardLock(out / ".chunks" / "00001")
        waited = lock.acquire_as_owner()
        made_ahead = len(_chunk_files(out, "00001"))
        try:
            stats = generate_shard(
                shards["00001"],
                out / "00001.parquet",
                out / "stats" / "00001.json",
                out / ".chunks" / "00001",
                "blip2",
                config,
                machine=machine,
            )
        finally:
            lock.release()
        ahead.join(timeout=300)
        assert not ahead.is_alive(), "work ahead did not end after the owner took over"
    finally:
        real.close()
    (report,) = reports
    assert report.handed_over == ["00001"]
    assert report.shards == ["00001", "00002"]  # it went on to the next shard
    # The chunk made before the owner came, and the one in progress when it did: no more.
    assert made_ahead == 2 and report.chunks == 2 + 1
    assert not lock.wanted.exists()
    assert (stats["chunks"]["resumed"], stats["chunks"]["computed"]) == (2, 2)
    # The owner waited for the chunk in progress: from before its marker to after that chunk.
    assert gate.held_call_s is not None and waited > gate.held_call_s > 0

    alone = tmp_path / "alone"
    generate_shard(
        shards["00001"],
        alone / "00001.parquet",
        alone / "00001.json",
        alone / ".chunks",
        "blip2",
        config,
        machine=machine,
    )
    assert pq.read_table(out / "00001.parquet").equals(pq.read_table(alone / "00001.parquet"))


def test_a_killed_holder_frees_its_claim(tmp_path) -> None:
    work_dir = tmp_path / ".chunks" / "00003"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from dialogclip.generate.work_ahead import ShardLock\n"
            f"assert ShardLock(Path({str(work_dir)!r})).try_acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    lock = ShardLock(work_dir)
    assert not lock.try_acquire()
    holder.send_signal(signal.SIGKILL)
    assert holder.wait(timeout=60) == -signal.SIGKILL
    assert lock.try_acquire()
    lock.release()
