"""No silent CPU runs: a job given GPUs stops at once when torch sees none, naming torch's CUDA
build, the driver (or its absence) and CUDA_VISIBLE_DEVICES, and the pin set to install; the
machine setting allow_cpu (the demo profile's 1) lets it run on the CPU instead.

On this CPU machine torch is the CPU build and there is no NVIDIA driver: the refusal and the
allowed run are real processes. A driver is played by a fake nvidia-smi on PATH; torch's CUDA
builds, which cannot be installed here, only in the unit tests of the advice.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from workflow_helpers import REPO_ROOT, VENV_BIN, copy_demo, planned, snakemake

from dialogclip.core import cuda_stack, devices
from dialogclip.core.cuda_stack import (
    PIN_SETS,
    Driver,
    driver_problem,
    explain_no_cuda,
    parse_nvidia_smi_header,
    set_for_driver,
)
from dialogclip.core.devices import DeviceError, require_cuda

TORCH_VERSION = __import__("torch").__version__
HEADER_550 = (
    "+-----------------------------------------------------------------------------------------+\n"
    "| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |\n"
)
HEADER_580 = (
    "| NVIDIA-SMI 580.65.06              Driver Version: 580.65.06      CUDA Version: 13.0     |\n"
)
ALLOW_HINT = (
    "to run GPU jobs on the CPU on purpose set the resource allow_cpu: 1 (default-resources of "
    "the profile)"
)
CUDA12 = (
    "the CUDA 12 set (torch 2.10.0, vllm 0.19.1; driver >= 525.60.13: make install-gpu CUDA=12)"
)


def _fake_nvidia_smi(bin_dir: Path, header: str) -> None:
    """nvidia-smi of a node with one GPU: its table header, and `-L`."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-L" ]; then echo "GPU 0: NVIDIA A100 (UUID: GPU-1234)"; exit 0; fi\n'
        f"cat <<'EOF'\n{header}EOF\n"
    )
    script.chmod(0o755)


def _job(tmp_path: Path, *flags: str, path: str = "") -> subprocess.CompletedProcess[str]:
    """`dialogclip <flags> dialogue-summary` (a cheap command) as a rule would start it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "DIALOGCLIP_"))}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env["PATH"] = os.pathsep.join(p for p in (path, str(VENV_BIN), "/usr/bin", "/bin") if p)
    return subprocess.run(
        [str(VENV_BIN / "dialogclip"), *flags, "dialogue-summary", "--output", "summary.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if " ERROR " in line]
    return line.split(" dialogclip: ", 1)[1]


def test_a_gpu_job_without_a_driver_stops_at_once(tmp_path: Path) -> None:
    result = _job(tmp_path, "--gpus", "1")
    assert result.returncode == 2
    assert _error_line(result.stderr) == (
        f"this job was given GPUs (--gpus 1) but torch sees none: torch {TORCH_VERSION} (a CPU "
        "build), nvidia-smi: not found on PATH (no NVIDIA driver here), CUDA_VISIBLE_DEVICES=unset;"
        " run GPU jobs on a node with an NVIDIA driver (the profile's GPU partition), with a GPU "
        f"set installed (make install-gpu or make install-gpu CUDA=12); {ALLOW_HINT}"
    )
    assert not (tmp_path / "summary.json").exists()  # the command never started


def test_a_gpu_job_names_the_driver_and_its_devices(tmp_path: Path) -> None:
    _fake_nvidia_smi(tmp_path / "bin", HEADER_550)
    result = _job(tmp_path, "--gpus", "1", path=str(tmp_path / "bin"))
    assert result.returncode == 2
    # The slot of the driver's one GPU was taken first: CUDA_VISIBLE_DEVICES names it.
    assert _error_line(result.stderr) == (
        f"this job was given GPUs (--gpus 1) but torch sees none: torch {TORCH_VERSION} (a CPU "
        "build), NVIDIA driver 550.54.15 (supports CUDA <= 12.4), CUDA_VISIBLE_DEVICES=0; install "
        f"a GPU set: {CUDA12}; {ALLOW_HINT}"
    )


def test_allow_cpu_runs_the_job_on_the_cpu(tmp_path: Path) -> None:
    result = _job(tmp_path, "--gpus", "1", "--allow-cpu", "1")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "summary.json").is_file()
    # A job given no GPU is never checked.
    (tmp_path / "summary.json").unlink()
    assert _job(tmp_path).returncode == 0 and (tmp_path / "summary.json").is_file()


def test_a_slurm_gres_allocation_counts_as_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "probe_torch", lambda: {"version": "2.14.0", "cuda": "13.0",
                                                         "available": False})  # fmt: skip
    monkeypatch.setattr(devices, "query_driver", lambda: Driver(version="550.54.15", cuda="12.4"))
    environ = {"SLURM_JOB_ID": "5", "SLURM_JOB_GPUS": "2", "CUDA_VISIBLE_DEVICES": "0"}
    with pytest.raises(DeviceError) as err:
        require_cuda(0, allow_cpu=False, environ=environ)
    assert str(err.value) == (
        "this job was given GPUs (Slurm's GPUs 2) but torch sees none: torch 2.14.0 (built for "
        "CUDA 13.0), NVIDIA driver 550.54.15 (supports CUDA <= 12.4), CUDA_VISIBLE_DEVICES=0; "
        f"torch's CUDA 13.0 is newer than the driver's CUDA 12.4: install {CUDA12}; {ALLOW_HINT}"
    )
    assert require_cuda(0, allow_cpu=True, environ=environ) is None
    assert require_cuda(0, allow_cpu=False, environ={"SLURM_JOB_ID": "5"}) is None  # a CPU job


def test_driver_header_and_the_set_it_runs() -> None:
    assert parse_nvidia_smi_header(HEADER_550) == ("550.54.15", "12.4")
    assert parse_nvidia_smi_header(HEADER_580) == ("580.65.06", "13.0")
    assert set_for_driver(Driver("550.54.15", "12.4")) is PIN_SETS[12]
    assert set_for_driver(Driver("580.65.06", "13.0")) is PIN_SETS[13]
    assert set_for_driver(Driver("470.1", "11.4")) is None
    assert set_for_driver(Driver(problem="not found")) is None
    assert driver_problem(PIN_SETS[13], Driver("580.65.06", "13.0")) is None
    assert driver_problem(PIN_SETS[12], Driver("580.65.06", "13.0")) is None
    assert driver_problem(PIN_SETS[13], Driver(problem="not found")) is None  # unknown: go on
    assert driver_problem(PIN_SETS[13], Driver("550.54.15", "12.4")) == (
        "NVIDIA driver 550.54.15 (supports CUDA <= 12.4) cannot run the CUDA 13 set "
        "(envs/gpu-requirements.txt: torch 2.14.0, vllm 0.33.0, driver >= 580); use " + CUDA12
    )
    assert explain_no_cuda("2.10.0", "12.8", Driver("580.65.06", "13.0")) == (
        "the driver and torch's build agree: check nvidia-smi and CUDA_VISIBLE_DEVICES here"
    )


def _check_driver(tmp_path: Path, header: str | None, cuda: int) -> subprocess.CompletedProcess:
    """What scripts/setup.sh runs before an install downloads anything (system Python, src)."""
    path = "/usr/bin:/bin"
    if header is not None:
        _fake_nvidia_smi(tmp_path / "bin", header)
        path = f"{tmp_path / 'bin'}:{path}"
    return subprocess.run(
        [sys.executable, "-m", "dialogclip.core.cuda_stack", "check-driver", "--cuda", str(cuda)],
        env={"PATH": path, "PYTHONPATH": str(REPO_ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_install_refuses_a_set_the_driver_cannot_run(tmp_path: Path) -> None:
    refused = _check_driver(tmp_path, HEADER_550, 13)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "cuda_stack: NVIDIA driver 550.54.15 (supports CUDA <= 12.4) cannot run the CUDA 13 set "
        "(envs/gpu-requirements.txt: torch 2.14.0, vllm 0.33.0, driver >= 580); use " + CUDA12
    )
    fine = _check_driver(tmp_path, HEADER_550, 12)
    assert fine.returncode == 0
    assert "NVIDIA driver 550.54.15 (supports CUDA <= 12.4) runs the CUDA 12 set" in fine.stderr
    # A login node without GPUs: nothing to compare; the install goes on and says so.
    unknown = _check_driver(tmp_path, None, 13)
    assert unknown.returncode == 0 and "installing the CUDA 13 set unchecked" in unknown.stderr


def test_cuda_stack_imports_nothing_outside_the_standard_library() -> None:
    # setup.sh runs it before .venv exists.
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import dialogclip.core.cuda_stack"],
        env={"PYTHONPATH": str(REPO_ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert cuda_stack.DEFAULT_CUDA in PIN_SETS


def _plain(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A dry run with the profile arguments given here only."""
    return subprocess.run(
        [
            *(str(VENV_BIN / "snakemake"), "--snakefile", str(REPO_ROOT / "Snakefile")),
            *("--directory", str(workdir), "--dry-run", *args),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_through_snakemake_the_profile_decides(tmp_path: Path) -> None:
    """The rule passes the profile's allow_cpu to its job: a real GPU job stops at once with 0;
    the demo profile allows the CPU; changing it reruns nothing; a run that states no value
    stops when the DAG is built."""
    workdir = copy_demo(tmp_path / "demo")
    target = "results/eval/image_emb/world-clip__world-clip-e414bf49__auto/coco.safetensors"
    stopped = snakemake(workdir, target, "--default-resources", "allow_cpu=0")
    assert stopped.returncode != 0
    log = workdir / "logs/embed_eval_images/world-clip__world-clip-e414bf49__auto/coco.log"
    assert "this job was given GPUs (--gpus 1) but torch sees none" in log.read_text()
    assert not (workdir / target).exists() and (workdir / "results/models").is_dir()
    # The demo profile's value reaches the shell line; a dry run shows it.
    shown = _plain(workdir, "--workflow-profile", str(REPO_ROOT / "workflow/profiles/demo"), target)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "dialogclip --gpus 1 --allow-cpu 1 embed-images" in shown.stdout
    ran = snakemake(workdir, target)  # the tests' allow_cpu=1
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert planned(workdir, target, "--default-resources", "allow_cpu=0").jobs == {}
    missing = _plain(workdir, "--workflow-profile", "none", "--cores", "1")
    assert missing.returncode != 0
    assert "the machine setting allow_cpu is not set: add `allow_cpu: 0`" in missing.stdout
