"""Tiny open_clip models built offline for the training-data tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from dialogclip.models.openclip import ClipSpec, LoadedClip, load_clip, make_tiny_clip


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny-clip checkpoint (seed 0), as `dialogclip make-tiny-clip` writes it."""
    return make_tiny_clip(tmp_path_factory.mktemp("tiny") / "tiny-clip-0.safetensors", seed=0)


@pytest.fixture(scope="session")
def tiny_clip(tiny_checkpoint: Path) -> LoadedClip:
    return load_clip(ClipSpec("tiny-clip", str(tiny_checkpoint)))
