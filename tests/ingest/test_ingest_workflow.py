"""The ingestion DAG run by Snakemake itself: retry pass and summary, then kill-and-resume.

Each test writes a tiny TSV (URLs on the loopback image server) and a config into tmp_path
and runs the repository's Snakefile there with ``--directory``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from ingest_helpers import VENV_BIN, ImageServer, command_env, run_command, write_tsv
from workflow_helpers import CPU_DEFAULT_RESOURCES

pytestmark = pytest.mark.dag

SNAKEMAKE_TIMEOUT = 240


def _setup(workdir: Path, lines: list[str], shard_size: int, ingest: dict) -> None:
    write_tsv(workdir / "cc3m.tsv", lines)
    config = {"cc3m": {"tsv": "cc3m.tsv", "shard_size": shard_size}, "ingest": ingest}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def _snakemake_args(repo_root: Path, workdir: Path, *extra: str) -> list[str]:
    return [
        str(VENV_BIN / "snakemake"),
        *("--snakefile", str(repo_root / "Snakefile"), "--directory", str(workdir)),
        *("--workflow-profile", "none", *CPU_DEFAULT_RESOURCES, "--cores", "4"),
        "--printshellcmds",
        *extra,
    ]


def _jobs_run(output: str, rule: str) -> set[str]:
    """Shards of the ``rule`` jobs Snakemake started, read from its job log."""
    pattern = rf"rule {rule}:\n(?:    .*\n)*?    wildcards: shard=(\d{{5}})"
    return set(re.findall(pattern, output))


def test_dag_downloads_retries_and_summarises(
    repo_root: Path, tmp_path: Path, image_server: ImageServer
) -> None:
    url = image_server.url
    lines = [
        f"a smooth photo\t{url('/good.jpg')}",
        f"a vanished picture\t{url('/missing.jpg')}",
        f"a busy server\t{url('/flaky.jpg')}",  # 503 once: recovered by the retry pass
        "a line without its url",
        f"a grey picture\t{url('/gray.jpg')}",
    ]
    _setup(tmp_path, lines, shard_size=3, ingest={"timeout": 3, "retry_failed": {"activate": True}})
    result = run_command(
        _snakemake_args(repo_root, tmp_path, "results/ingest/summary.json"),
        cwd=tmp_path,
        timeout=SNAKEMAKE_TIMEOUT,
    )
    assert result.returncode == 0, result.output[-6000:]
    assert _jobs_run(result.output, "download_shard") == {"00000", "00001"}
    assert _jobs_run(result.output, "retry_failed_downloads") == {"00000", "00001"}

    summary = json.loads((tmp_path / "results/ingest/summary.json").read_text())
    assert (summary["n_shards"], summary["n_rows"], summary["n_success"]) == (2, 5, 3)
    assert summary["status_counts"] == {
        "failed_to_download": 1,
        "malformed_row": 1,
        "success": 3,
    }
    assert summary["error_kind_counts"] == {"http_404": 1, "wrong_column_count": 1}
    assert [row["line"] for row in summary["malformed_rows"]] == [4]
    assert summary["retry_failed"] == {"n_retried": 1, "n_recovered": 1}
    # The readable summary reaches the console.
    assert "CC3M ingestion: 3 of 5 rows usable (60.0%) in 2 shard(s)" in result.output
    assert "malformed TSV lines: 1 (line 4)" in result.output

    for shard, n_rows in (("00000", 3), ("00001", 2)):
        final = tmp_path / f"results/ingest/retried/shards/{shard}.parquet"
        assert pq.read_table(final).num_rows == n_rows
        assert (tmp_path / f"results/ingest/shards/{shard}.parquet").is_file()
        assert (tmp_path / f"results/ingest/stats/{shard}.json").is_file()
        for rule in ("download_shard", "retry_failed_downloads"):
            assert (tmp_path / f"logs/{rule}/{shard}.log").is_file()
            assert (tmp_path / f"benchmarks/{rule}/{shard}.tsv").is_file()
    assert (tmp_path / "logs/ingest_summary/summary.log").is_file()

    again = run_command(
        _snakemake_args(repo_root, tmp_path, "--dry-run", "results/ingest/summary.json"),
        cwd=tmp_path,
        timeout=SNAKEMAKE_TIMEOUT,
    )
    assert again.returncode == 0 and "Nothing to be done" in again.output, again.output[-3000:]

    # A retry_failed edit redoes the retry pass (and the summary), never the downloads.
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    config["ingest"]["retry_failed"]["error_kinds"] = ["http_404"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    edited = run_command(
        _snakemake_args(repo_root, tmp_path, "--dry-run", "results/ingest/summary.json"),
        cwd=tmp_path,
        timeout=SNAKEMAKE_TIMEOUT,
    )
    assert edited.returncode == 0, edited.output[-3000:]
    assert _jobs_run(edited.output, "retry_failed_downloads") == {"00000", "00001"}
    assert _jobs_run(edited.output, "download_shard") == set()


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL ``process`` and every process it started (as a crash or an OOM kill would)."""
    for pid in [process.pid, *_descendants(process.pid)]:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)


def test_killed_shard_is_redone_and_finished_shards_are_not(
    repo_root: Path, tmp_path: Path, image_server: ImageServer
) -> None:
    url = image_server.url
    lines = [
        f"first\t{url('/good.png')}",
        f"second, downloading when killed\t{url('/trickle.jpg')}",
        f"third\t{url('/good.webp')}",
    ]
    _setup(tmp_path, lines, shard_size=1, ingest={"timeout": 3})
    shards = tmp_path / "results/ingest/shards"

    # 1. Shards 00000 and 00002 finish.
    done = [f"results/ingest/shards/{s}.parquet" for s in ("00000", "00002")]
    first = run_command(
        _snakemake_args(repo_root, tmp_path, *done), cwd=tmp_path, timeout=SNAKEMAKE_TIMEOUT
    )
    assert first.returncode == 0, first.output[-6000:]
    finished = {path: (tmp_path / path).stat().st_mtime_ns for path in done}

    # 2. The whole stage runs; it is killed while shard 00001 is downloading.
    log = (tmp_path / "killed-run.log").open("w")
    process = subprocess.Popen(
        _snakemake_args(repo_root, tmp_path, "results/ingest/summary.json"),
        cwd=tmp_path,
        env=command_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + SNAKEMAKE_TIMEOUT
    while not image_server.trickle_started.wait(timeout=0.5):
        assert process.poll() is None, (tmp_path / "killed-run.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "shard 00001 never started downloading"
    _kill_tree(process)
    log.close()
    assert not (shards / "00001.parquet").exists()  # never a partial shard under its name
    assert not (tmp_path / "results/ingest/stats/00001.json").exists()
    assert (shards / ".tmp-00001.work").is_dir()  # the killed attempt's scratch folder

    # 3. Rerun (after removing the killed run's lock): only shard 00001 is redone.
    image_server.trickle_release.set()
    unlock = run_command(_snakemake_args(repo_root, tmp_path, "--unlock"), tmp_path, 120)
    assert unlock.returncode == 0, unlock.output[-3000:]
    rerun = run_command(
        _snakemake_args(repo_root, tmp_path, "results/ingest/summary.json"),
        cwd=tmp_path,
        timeout=SNAKEMAKE_TIMEOUT,
    )
    assert rerun.returncode == 0, rerun.output[-6000:]
    assert _jobs_run(rerun.output, "download_shard") == {"00001"}
    assert {path: (tmp_path / path).stat().st_mtime_ns for path in done} == finished
    redone = pq.read_table(shards / "00001.parquet").to_pylist()
    assert [(row["key"], row["status"]) for row in redone] == [("000000001", "success")]
    assert not (shards / ".tmp-00001.work").exists()
    summary = json.loads((tmp_path / "results/ingest/summary.json").read_text())
    assert (summary["n_rows"], summary["n_success"]) == (3, 3)
