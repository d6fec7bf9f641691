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
    # OpenMP threads sleep rather than spin while they wait, as in a job
    # (generate.backend.passive_openmp_waits): on a 2-core machine shared with other work, a
    # spinning thread slows every CPU kernel of the in-process tests many times over. libgomp
    # reads it once, when torch loads: here, before any test module imports torch.
    "OMP_WAIT_POLICY": "PASSIVE",
}.items():
    os.environ.setdefault(_name, _value)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where Snakefile and config.yaml live)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both tiny random-initialised checkpoints (LLaVA-1.5 and BLIP-2), built once through the
    CLI command the demo rule runs (`dialogclip world make-tiny-models`)."""
    from dialogclip.cli import main

    out_dir = tmp_path_factory.mktemp("tiny-models")
    assert main(["world", "make-tiny-models", str(out_dir)]) == 0
    return {"llava": out_dir / "llava", "blip2": out_dir / "blip2"}


@pytest.fixture(scope="session")
def tiny_blip2(tiny_models: dict[str, Path]) -> Path:
    """The tiny BLIP-2 (what the hub on 127.0.0.1 serves: tests/loopback_hub.py)."""
    return tiny_models["blip2"]


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for the finished demo runs the demo's whole DAG (minutes): it must carry
    the ``dag`` marker, or `make test-fast` would pay for that run."""
    unmarked = [
        item.nodeid
        for item in items
        if "finished_demo" in getattr(item, "fixturenames", ())
        and item.get_closest_marker("dag") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests use the finished_demo fixture without the `dag` marker "
            f"(add @pytest.mark.dag): {unmarked}"
        )
