"""Which `make` targets run offline: the demo and the tests never reach a hub (their models are
committed or built here), while `make run` must, since its fetch rules download the pinned
weights.

Each target's recipes run through a probe shell (`make SHELL=probe`) that only reports the
environment it was given, so nothing is installed or run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _recipe_environments(repo_root: Path, tmp_path: Path, target: str) -> list[str]:
    probe = tmp_path / "probe"
    report = " ".join(f"{name}=${{{name}-}}" for name in OFFLINE)
    probe.write_text(f'#!/bin/sh\necho "{report}"\n')
    probe.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE}
    result = subprocess.run(
        ["make", "-s", "-C", str(repo_root), f"SHELL={probe}", target],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return result.stdout.splitlines()


@pytest.mark.parametrize("target", ["demo", "test", "test-fast", "lint"])
def test_demo_and_tests_run_offline(repo_root: Path, tmp_path: Path, target: str) -> None:
    lines = _recipe_environments(repo_root, tmp_path, target)
    assert lines and set(lines) == {"HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1"}, lines


def test_make_run_can_reach_the_hub_to_fetch_weights(repo_root: Path, tmp_path: Path) -> None:
    lines = _recipe_environments(repo_root, tmp_path, "run")
    assert lines and set(lines) == {"HF_HUB_OFFLINE= TRANSFORMERS_OFFLINE="}, lines
