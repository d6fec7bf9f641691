"""GPU slot assignment (dialogclip.core.devices) on CPU with a fake device list.

Every concurrency test runs real processes (`python -m dialogclip.core.devices --gpus k -- ...`
or `dialogclip --gpus k ...`) that record the CUDA_VISIBLE_DEVICES they got and the time they
held it; the assertions are on those records.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dialogclip import cli
from dialogclip.core import devices
from dialogclip.core.devices import Claim, DeviceError, claim_gpus, parse_nvidia_smi

# What the process had before any test here ran (the leak check at the end compares with it).
ORIGINAL_CUDA_VISIBLE_DEVICES = os.environ.get("CUDA_VISIBLE_DEVICES")

# A job: write {"devices", "start", "end", "pid"} to argv[1] after sleeping argv[2] seconds.
RECORD = textwrap.dedent(
    """
    import json, os, sys, time
    start = time.time()
    out = sys.argv[1]
    json.dump({"pid": os.getpid(), "devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
               "start": start}, open(out + ".started", "w"))
    time.sleep(float(sys.argv[2]))
    json.dump({"devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start,
               "end": time.time()}, open(out, "w"))
    """
)


@pytest.fixture
def job_env(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(
        DIALOGCLIP_DEVICES="0,1,2",
        DIALOGCLIP_GPU_POLL_S="0.05",
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
    )
    (tmp_path / "record.py").write_text(RECORD)
    return env


def _start(
    tmp_path: Path, env: dict[str, str], name: str, gpus: int, sleep_s: float
) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "dialogclip.core.devices",
        "--gpus",
        str(gpus),
        "--allow-cpu",  # the devices are fake and torch is the CPU build
        "1",
        "--",
        sys.executable,
        str(tmp_path / "record.py"),
        str(tmp_path / f"{name}.json"),
        str(sleep_s),
    ]
    return subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _records(tmp_path: Path, names: list[str]) -> dict[str, dict]:
    return {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in names}


def _overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def _max_concurrent_devices(records: list[dict]) -> int:
    """The most devices held at one instant (interval sweep over starts and ends)."""
    events = sorted(
        [(r["start"], len(r["devices"].split(","))) for r in records]
        + [(r["end"], -len(r["devices"].split(","))) for r in records],
        key=lambda event: (event[0], event[1]),  # an end before a start at the same instant
    )
    held = peak = 0
    for _, change in events:
        held += change
        peak = max(peak, held)
    return peak


def _assert_never_shared(records: dict[str, dict]) -> None:
    for (name_a, a), (name_b, b) in itertools.combinations(records.items(), 2):
        if _overlap(a, b):
            shared = set(a["devices"].split(",")) & set(b["devices"].split(","))
            assert not shared, f"{name_a} and {name_b} ran at once on device(s) {shared}"


def test_concurrent_jobs_never_share_a_device_and_extra_jobs_wait(
    tmp_path: Path, job_env: dict[str, str]
) -> None:
    names = [f"job{i}" for i in range(6)]  # 6 jobs, 3 devices: 3 must wait, then run
    jobs = [_start(tmp_path, job_env, name, 1, 1.5) for name in names]
    results = [job.communicate(timeout=120) for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 6, [err for _, err in results]
    records = _records(tmp_path, names)

    assert all(r["devices"] in {"0", "1", "2"} for r in records.values()), records
    _assert_never_shared(records)
    # All three devices were in use at once: the jobs really ran side by side.
    assert _max_concurrent_devices(list(records.values())) == 3
    waited = [err for _, err in results if "waiting for 1 free GPU(s) of 0,1,2" in err]
    assert len(waited) >= 3, [err for _, err in results]
    assert all("after waiting" in err for err in waited)


def test_a_job_asking_for_two_gets_two_distinct_devices(
    tmp_path: Path, job_env: dict[str, str]
) -> None:
    job_env["DIALOGCLIP_DEVICES"] = "0,1,2,3"
    plan = {"pair0": 2, "pair1": 2, "pair2": 2, "single0": 1, "single1": 1}
    jobs = [_start(tmp_path, job_env, name, gpus, 1.0) for name, gpus in plan.items()]
    results = [job.communicate(timeout=120) for job in jobs]
    assert [job.returncode for job in jobs] == [0] * len(plan), [err for _, err in results]
    records = _records(tmp_path, list(plan))

    for name, gpus in plan.items():
        taken = records[name]["devices"].split(",")
        assert len(set(taken)) == len(taken) == gpus, (name, taken)
        assert set(taken) <= {"0", "1", "2", "3"}
    _assert_never_shared(records)
    assert _max_concurrent_devices(list(records.values())) <= 4


def test_a_sigkilled_jobs_devices_are_free_again(tmp_path: Path, job_env: dict[str, str]) -> None:
    job_env["DIALOGCLIP_DEVICES"] = "0,1"
    holder = _start(tmp_path, job_env, "holder", 2, 300)
    started = tmp_path / "holder.json.started"
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline and holder.poll() is None, holder.communicate()
        time.sleep(0.05)
    assert json.loads(started.read_text())["devices"] == "0,1"

    waiter = _start(tmp_path, job_env, "waiter", 1, 0.1)
    time.sleep(2.0)
    assert waiter.poll() is None and not (tmp_path / "waiter.json.started").exists(), (
        "the waiter ran while both devices were held"
    )
    # The holder exec'd into the recorded command: it is the process that keeps the locks.
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=30)
    _, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert _records(tmp_path, ["waiter"])["waiter"]["devices"] in {"0", "1"}
    assert "waiting for 1 free GPU(s) of 0,1" in err
    assert "held: 0: pid" in err  # the message names who holds the slots


def test_gpus_zero_touches_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {"DIALOGCLIP_DEVICES": "0,1"}
    assert claim_gpus(0, environ=environ) is None
    assert environ == {"DIALOGCLIP_DEVICES": "0,1"}
    assert list(tmp_path.iterdir()) == []


def test_no_gpu_on_the_machine_runs_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    environ: dict[str, str] = {}
    assert claim_gpus(1, environ=environ) is None
    assert environ == {}
    assert list(tmp_path.iterdir()) == []
    # CUDA_VISIBLE_DEVICES=-1 hides every GPU: same.
    assert claim_gpus(1, environ={"CUDA_VISIBLE_DEVICES": "-1"}) is None


def test_slurm_assignment_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {"SLURM_JOB_ID": "42", "SLURM_JOB_GPUS": "3", "CUDA_VISIBLE_DEVICES": "0"}
    assert claim_gpus(1, environ=environ) == Claim(("0",), "scheduler")
    assert environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert list(tmp_path.iterdir()) == []


def test_local_jobs_inside_a_larger_slurm_allocation_are_shared_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "4,5,6,7"}
    try:
        first = claim_gpus(1, environ=dict(environ), poll_s=0.01)
        second = claim_gpus(2, environ=dict(environ), poll_s=0.01)
    finally:
        devices.release_gpus()
    assert first == Claim(("4",), "CUDA_VISIBLE_DEVICES")
    assert second == Claim(("5", "6"), "CUDA_VISIBLE_DEVICES")
    assert sorted(p.name for p in (tmp_path / ".snakemake" / "gpu-slots").iterdir()) == [
        "assign.lock",
        "gpu4.lock",
        "gpu5.lock",
        "gpu6.lock",
    ]


def test_more_gpus_than_the_node_has_fails_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DeviceError) as err:
        claim_gpus(3, environ={"DIALOGCLIP_DEVICES": "0,1"})
    assert str(err.value) == (
        "the job asks for 3 GPUs but this node has 2 (DIALOGCLIP_DEVICES: 0,1); lower the "
        "rule's resources gpu (set-resources in the profile)"
    )


def test_parse_nvidia_smi_indices_and_mig_instances() -> None:
    text = (
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)\n"
        "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb)\n"
        "  MIG 3g.40gb     Device  0: (UUID: MIG-1111)\n"
        "  MIG 3g.40gb     Device  1: (UUID: MIG-2222)\n"
        "GPU 2: NVIDIA H100 80GB HBM3 (UUID: GPU-cccc)\n"
    )
    assert parse_nvidia_smi(text) == ["0", "MIG-1111", "MIG-2222", "2"]
    assert parse_nvidia_smi("") == []


def test_cli_gpus_option_claims_before_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job_env: dict[str, str]
) -> None:
    # Device 5 is held by another job, so `dialogclip --gpus 1` must take 7.
    job_env["DIALOGCLIP_DEVICES"] = "5,7"
    holder = _start(tmp_path, job_env, "holder", 1, 300)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "holder.json.started").exists():
            assert time.monotonic() < deadline and holder.poll() is None, holder.communicate()
            time.sleep(0.05)
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("DIALOGCLIP_DEVICES", "5,7")
        # The claim below sets CUDA_VISIBLE_DEVICES in os.environ: setenv first, so that
        # monkeypatch restores the variable's state from before the test (a bare delenv of an
        # unset variable records nothing, and "7" would leak into the tests that follow).
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
        for name in [n for n in os.environ if n.startswith("SLURM_")]:
            monkeypatch.delenv(name)
        status = cli.main(
            ["--gpus", "1", "--allow-cpu", "1", "dialogue-summary", "--output", "summary.json"]
        )
        assert status == 0
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"
        assert (tmp_path / "summary.json").exists()
        # Asking for more than the node has is a one-line error, exit status 2.
        assert cli.main(["--gpus", "3", "dialogue-summary", "--output", "x.json"]) == 2
    finally:
        devices.release_gpus()
        holder.kill()
        holder.communicate(timeout=30)


@pytest.mark.dag
def test_snakemake_resources_gpu_limits_and_separates_jobs(
    tmp_path: Path, job_env: dict[str, str]
) -> None:
    """`snakemake --cores 4 --resources gpu=2`: at most 2 GPUs in use, never the same one."""
    job_env["DIALOGCLIP_DEVICES"] = "0,1,2,3"
    wrapper = (
        f"{sys.executable} -m dialogclip.core.devices --gpus {{resources.gpu}} --allow-cpu 1 --"
    )
    record = f"{sys.executable} {tmp_path / 'record.py'}"
    (tmp_path / "Snakefile").write_text(
        textwrap.dedent(
            f"""
            rule all:
                input:
                    expand("out/single{{i}}.json", i=range(5)),
                    "out/pair.json",

            rule single:
                output:
                    "out/single{{i}}.json",
                resources:
                    gpu=1,
                shell:
                    "{wrapper} {record} {{output}} 1.5"

            rule pair:
                output:
                    "out/pair.json",
                resources:
                    gpu=2,
                shell:
                    "{wrapper} {record} {{output}} 1.5"
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "4", "--resources", "gpu=2"],
        cwd=tmp_path,
        env=job_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    names = [f"single{i}" for i in range(5)] + ["pair"]
    records = {n: json.loads((tmp_path / "out" / f"{n}.json").read_text()) for n in names}
    assert len(set(records["pair"]["devices"].split(","))) == 2
    _assert_never_shared(records)
    # Snakemake's resource limit holds (2 GPUs at most), and it is reached: jobs overlapped.
    assert _max_concurrent_devices(list(records.values())) == 2


def test_the_cli_claim_leaves_no_devices_behind() -> None:
    # Runs after test_cli_gpus_option_claims_before_the_command (file order): its claim of
    # device 7 must not outlive it, or every later test would see one GPU "visible".
    assert os.environ.get("CUDA_VISIBLE_DEVICES") in (None, ORIGINAL_CUDA_VISIBLE_DEVICES)
