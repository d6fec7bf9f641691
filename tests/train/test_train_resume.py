"""Exact resume after a real SIGKILL: the resumed run ends bit for bit where an uninterrupted
run ends, for a third-tower-like and a DRAFT-like objective (subprocesses of trainer_helpers)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from trainer_helpers import launch, read_metrics, reaped

from dialogclip.train.checkpoints import VERSIONED_PACKAGES

# 24 rows in batches of 8 for 3 epochs: 9 updates; checkpoints every 2 updates and at the
# epoch ends (3, 6, 9), the last 2 kept.
# --noise: the objectives draw from the Python, NumPy and torch generators every step.
ARGS = ["--objective", "third", "draft", "--epochs", "3", "--checkpoint-every", "2", "--noise"]
TOTAL_STEPS = 9
HANG_AT = 6  # the killed run blocks in DRAFT's 6th loss call: steps 1-5 done


def wait_for(condition, process, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended (rc {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def comparable(records: list[dict]) -> list[dict]:
    """Metrics without the wall-clock field."""
    return [{k: v for k, v in record.items() if k != "samples_per_s"} for record in records]


@pytest.mark.crash
def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    started: list = []
    with reaped(started):
        run_and_resume(whole, killed, started)
    check_results(whole, killed)


def run_and_resume(whole: Path, killed: Path, started: list) -> None:
    reference = launch(whole, ARGS)
    started.append(reference)
    victim = launch(killed, [*ARGS, "--hang-at", str(HANG_AT)], log_name="first")
    started.append(victim)
    metrics = killed / "draft" / "metrics.jsonl"
    wait_for(
        lambda: metrics.exists() and len(metrics.read_text().splitlines()) == HANG_AT - 1,
        victim,
        f"{HANG_AT - 1} DRAFT metrics lines",
    )
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    # What the kill left: checkpoints 3 (epoch end) and 4, and the metrics of step 5 beyond them.
    names = sorted(p.name for p in (killed / "draft" / "checkpoints").iterdir())
    assert names == ["step-00000003", "step-00000004"]
    assert [r["step"] for r in read_metrics(metrics)] == [1, 2, 3, 4, 5]
    # A kill while a checkpoint is being written leaves a temporary directory: ignored.
    partial = killed / "draft" / "checkpoints" / ".tmp-step-00000006"
    partial.mkdir()
    (partial / "trainable.safetensors").write_bytes(b"truncated")
    # A line cut by a kill must go too.
    with metrics.open("a") as handle:
        handle.write('{"step": 6, "lo')

    assert reference.wait(timeout=300) == 0, (whole / "log.txt").read_text()[-3000:]
    rerun = launch(killed, ARGS, log_name="second")
    started.append(rerun)
    assert rerun.wait(timeout=300) == 0, (killed / "second.txt").read_text()[-3000:]
    log = (killed / "second.txt").read_text()
    assert "resuming from" in log and "draft/checkpoints/step-00000004 (step 4 of 9)" in log
    assert "third/checkpoints/step-00000009 (step 9 of 9)" in log  # finished before the kill


def check_results(whole: Path, killed: Path) -> None:

    for kind in ("third", "draft"):
        want = load_file(str(whole / kind / "final.safetensors"))
        got = load_file(str(killed / kind / "final.safetensors"))
        assert sorted(got) == sorted(want) and len(want) > 5
        for name, tensor in want.items():
            assert torch.equal(got[name], tensor), f"{kind}: {name} differs"
        got_metrics = read_metrics(killed / kind / "metrics.jsonl")
        assert [r["step"] for r in got_metrics] == list(range(1, TOTAL_STEPS + 1))
        assert comparable(got_metrics) == comparable(read_metrics(whole / kind / "metrics.jsonl"))
        remaining = sorted(p.name for p in (killed / kind / "checkpoints").iterdir())
        assert remaining == ["step-00000008", "step-00000009"]  # pruned to the last 2

    draft = read_metrics(killed / "draft" / "metrics.jsonl")
    assert {"contrastive", "con_dialogue", "con_caption", "mmd"} <= set(draft[0])

    # The configuration and the package versions travel with the checkpoints and the artefact.
    state = json.loads(
        (killed / "draft" / "checkpoints" / "step-00000009" / "state.json").read_text()
    )
    assert state["run_config"] == {"objective": "draft", "rows": 24}
    assert state["optim"]["lr"] == 1e-3 and state["optim"]["batch_size"] == 8
    assert set(state["versions"]) == set(VERSIONED_PACKAGES)
    assert (
        state["versions"]["torch"] == torch.__version__.split("+")[0]
        or state["versions"]["torch"] == torch.__version__
    )
    with safe_open(str(killed / "draft" / "final.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
    assert json.loads(meta["run_config"]) == {"objective": "draft", "rows": 24}
    assert set(json.loads(meta["versions"])) == set(VERSIONED_PACKAGES)
    assert meta["steps"] == "9"
