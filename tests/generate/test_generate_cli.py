"""The stage's commands as the rules run them, including a job killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from generate_helpers import ingest_row, jpeg_bytes, write_shard

from dialogclip.cli import main
from dialogclip.core.io import read_json, read_parquet_metadata, write_json_atomic
from dialogclip.generate.commands import summarize_stats


def _command(shard: Path, out: Path, params: dict) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dialogclip.cli",
        "generate-dialogue",
        "--generator",
        "blip2",
        "--shard",
        str(shard),
        "--output",
        str(out / "00000.parquet"),
        "--stats",
        str(out / "stats" / "00000.json"),
        "--threads",
        "1",  # same threads in every run: same float reductions
        "--params",
        json.dumps(params),
        "--backend",
        "transformers",
        "--chunk-size",
        "2",
        "--transformers-batch-size",
        "4",
    ]


def test_sigkilled_job_resumes_and_matches_an_uninterrupted_run(tiny_params, tmp_path) -> None:
    shard = write_shard(
        tmp_path / "in" / "00000.parquet", [ingest_row(i, jpeg_bytes(i)) for i in range(24)]
    )
    params = {**tiny_params, "blip2": {**tiny_params["blip2"], "max_new_tokens": 16}}
    reference = tmp_path / "reference"
    subprocess.run(_command(shard, reference, params), check=True, capture_output=True)

    out = tmp_path / "killed"
    chunks = out / ".chunks" / "00000"
    victim = subprocess.Popen(_command(shard, out, params), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(chunks.glob("*.parquet"))) < 2 and victim.poll() is None:
        assert time.monotonic() < deadline, "no chunk finished in time"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the job finished before it could be killed"
    finished = len(list(chunks.glob("*.parquet")))
    assert 2 <= finished < 12
    assert not (out / "00000.parquet").exists()

    resumed = subprocess.run(
        _command(shard, out, params), check=True, capture_output=True, text=True
    )
    assert f"{finished} already finished" in resumed.stderr
    stats = read_json(out / "stats" / "00000.json")
    assert stats["chunks"]["resumed"] == finished
    assert pq.read_table(out / "00000.parquet").equals(pq.read_table(reference / "00000.parquet"))
    assert read_parquet_metadata(out / "00000.parquet") == read_parquet_metadata(
        reference / "00000.parquet"
    )
    assert not chunks.exists()


def test_bad_params_fail_with_one_clean_line(tmp_path, capsys) -> None:
    shard = write_shard(tmp_path / "00000.parquet", [])
    argv = ["generate-dialogue", "--generator", "llava", "--shard", str(shard)]
    argv += ["--output", str(tmp_path / "o.parquet"), "--stats", str(tmp_path / "s.json")]
    assert main([*argv, "--params", json.dumps({"chunk_sise": 4})]) == 2
    assert "chunk_sise" in capsys.readouterr().err


def test_missing_shard_fails_cleanly(tmp_path) -> None:
    argv = ["generate-dialogue", "--generator", "llava", "--shard", str(tmp_path / "none.parquet")]
    argv += ["--output", str(tmp_path / "o.parquet"), "--stats", str(tmp_path / "s.json")]
    assert main(argv) == 2


def test_summary_adds_up_the_shards(tmp_path) -> None:
    shards = {
        "00000": {"rows": {"input": 10, "downloaded": 8, "image_errors": 1, "generated": 7},
                  "parse": {"ok": 6, "unparsed": 1}, "parse_rate": 6 / 7},
        "00001": {"rows": {"input": 5, "downloaded": 5, "image_errors": 0, "generated": 5},
                  "parse": {"ok": 4, "wrong_count": 1}, "parse_rate": 0.8},
    }  # fmt: skip
    paths = []
    for name, stats in shards.items():
        paths.append(tmp_path / f"{name}.json")
        write_json_atomic(stats, paths[-1])
    output = tmp_path / "summary.json"
    argv = ["dialogue-summary", "--stats", *map(str, paths), "--output", str(output)]
    assert main(argv) == 0
    summary = read_json(output)
    assert {k: v for k, v in summary.items() if not k.startswith("text")} == summarize_stats(shards)
    assert summary["rows"] == {"input": 15, "downloaded": 13, "image_errors": 1, "generated": 12}
    assert summary["parse"] == {"ok": 10, "unparsed": 1, "wrong_count": 1}
    assert summary["parse_rate"] == pytest.approx(10 / 12)
    assert summary["parse_rate_per_shard"] == {"00000": pytest.approx(6 / 7), "00001": 0.8}


def test_auto_backend_is_logged(caplog) -> None:
    from dialogclip.generate.backend import resolve_backend, vllm_available

    with caplog.at_level("INFO"):
        chosen = resolve_backend("auto")
    import torch

    assert chosen == ("vllm" if torch.cuda.is_available() and vllm_available() else "transformers")
    assert f"backend: {chosen} (auto" in caplog.text
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
