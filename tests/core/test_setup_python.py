"""The install scripts check the Python interpreter before anything is downloaded: 3.11 or 3.12
(pyproject.toml's requires-python), found as python3.11, python3.12, python3 or $PYTHON.

The interpreters here are fakes that report a version and log how they were called, so the
tests see which one a script chose and that nothing ran after a refusal (no venv, no pip).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from workflow_helpers import REPO_ROOT

SCRIPTS = ("scripts/setup.sh", "scripts/setup_controller.sh")

FAKE_PYTHON = """#!/bin/sh
echo "$0 $*" >> "{log}"
case "$1" in
    -c) echo "{version}" ;;
    *) exit 3 ;;
esac
"""


def _fake(bin_dir: Path, name: str, version: str, log: Path) -> Path:
    path = bin_dir / name
    path.write_text(FAKE_PYTHON.format(log=log, version=version))
    path.chmod(0o755)
    return path


def _run(
    script: str, tmp_path: Path, extra_env: dict[str, str], *args: str
) -> subprocess.CompletedProcess:
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHON"},
        # Only the fakes and the basic tools: no real python3 may be found.
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
        "DIALOGCLIP_VENV": str(tmp_path / "venv"),
        "DIALOGCLIP_CONTROLLER_VENV": str(tmp_path / "venv"),
        **extra_env,
    }
    return subprocess.run(
        ["bash", str(REPO_ROOT / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    return tmp_path / "bin"


def _shadow_system_pythons(fake_bin: Path, log: Path, version: str) -> None:
    # /usr/bin may hold real interpreters: fakes of every candidate name come first on PATH.
    for name in ("python3.11", "python3.12", "python3"):
        _fake(fake_bin, name, version, log)


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_unsupported_python_is_refused_before_any_download(
    script: str, tmp_path: Path, fake_bin: Path
) -> None:
    log = tmp_path / "calls.log"
    _shadow_system_pythons(fake_bin, log, "3.10")
    result = _run(script, tmp_path, {})
    assert result.returncode == 1
    name = Path(script).name
    assert (
        f"{name}: needs Python 3.11 or 3.12 (found: python3.11=3.10 python3.12=3.10 python3=3.10);"
        " install one, or name it with PYTHON=/path/to/python3.12" in result.stderr
    )
    # Each fake was only asked its version: no venv was made, no pip ran.
    calls = log.read_text().splitlines()
    assert calls and all(" -c import sys" in call for call in calls), calls
    assert not (tmp_path / "venv").exists()


def test_python_names_the_only_candidate(tmp_path: Path, fake_bin: Path) -> None:
    log = tmp_path / "calls.log"
    _shadow_system_pythons(fake_bin, log, "3.12")
    chosen = _fake(tmp_path, "python3.13", "3.13", log)
    result = _run("scripts/setup.sh", tmp_path, {"PYTHON": str(chosen)})
    assert result.returncode == 1
    assert f"needs Python 3.11 or 3.12 (found: {chosen}=3.13)" in result.stderr


@pytest.mark.parametrize("version", ["3.11", "3.12"])
def test_a_supported_python_makes_the_venv(version: str, tmp_path: Path, fake_bin: Path) -> None:
    log = tmp_path / "calls.log"
    _fake(fake_bin, "python3.11", "3.10", log)  # the first candidate, unsupported: skipped
    _fake(fake_bin, "python3.12", version, log)
    _fake(fake_bin, "python3", "3.13", log)
    result = _run("scripts/setup.sh", tmp_path, {})
    # The fake cannot make a venv (exit 3): the script stops there, after choosing python3.12.
    assert result.returncode == 3, result.stderr
    assert f"{fake_bin / 'python3.12'} -m venv {tmp_path / 'venv'}" in log.read_text()


def test_supported_versions_are_pyprojects(repo_root: Path) -> None:
    requires = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"][
        "requires-python"
    ]
    assert requires == ">=3.11,<3.13"
    script = (repo_root / "scripts" / "python_version.sh").read_text()
    assert re.search(r"^SUPPORTED_PYTHONS=\((.*)\)$", script, re.M)[1].split() == ["3.11", "3.12"]


def test_a_gpu_set_the_driver_cannot_run_stops_before_any_download(
    tmp_path: Path, fake_bin: Path
) -> None:
    # A node whose driver supports CUDA 12.4: the default (CUDA 13) set is refused, naming the
    # set to use; no venv is made.
    nvidia_smi = fake_bin / "nvidia-smi"
    nvidia_smi.write_text("#!/bin/sh\necho '| Driver Version: 550.54.15   CUDA Version: 12.4 |'\n")
    nvidia_smi.chmod(0o755)
    result = _run("scripts/setup.sh", tmp_path, {"PYTHON": sys.executable}, "--gpu")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "cuda_stack: NVIDIA driver 550.54.15 (supports CUDA <= 12.4) cannot run the CUDA 13 set "
        "(envs/gpu-requirements.txt: torch 2.14.0, vllm 0.33.0, driver >= 580); use the CUDA 12 "
        "set (torch 2.10.0, vllm 0.19.1; driver >= 525.60.13: make install-gpu CUDA=12)"
    )
    assert not (tmp_path / "venv").exists()
