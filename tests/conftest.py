"""Settings shared by every test: fully offline, no telemetry, deterministic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch a hub or phone home; set before any library reads them.
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "WANDB_MODE": "disabled",
}.items():
    os.environ.setdefault(_name, _value)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where Snakefile and config.yaml live)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def finished_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the demo after one complete run of its whole DAG (shared: dry-run only, or
    copy it with ``workflow_helpers.copy_demo(dest, source=finished_demo)`` before changing
    anything)."""
    from workflow_helpers import copy_demo, snakemake

    # For quick local iteration: an already finished copy of the demo (e.g. the folder of an
    # earlier run) can be named here; it is brought up to date, not trusted blindly.
    reuse = os.environ.get("DIALOGCLIP_TEST_FINISHED_DEMO")
    workdir = Path(reuse) if reuse else copy_demo(tmp_path_factory.mktemp("finished") / "demo")
    result = snakemake(workdir)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    return workdir
