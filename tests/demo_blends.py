"""The finished demo with two explicit blend entries in ``evaluate.models``, evaluated.

The demo's own blends are its training runs' evaluation variants (named by the run and beta);
an entry written in ``evaluate.models`` with a ``text_variant`` is the other way to configure
one, e.g. for a checkpoint trained elsewhere. Tests of what editing such an entry reruns need
its results finished: :func:`blended_demo` copies the finished demo once per session, adds
:data:`BLENDS` to its config.yaml and runs what they add (their evaluations and the report).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from workflow_helpers import copy_demo, snakemake

# The first DRAFT run's trained text tower (resources/demo/config.yaml), blended with the
# world's CLIP it started from: by embeddings on every set, by weights on two of them.
DRAFT_FINAL = "results/train/runs/tiny-draft-llava/final.safetensors"
BLENDS = (
    {
        "name": "tiny-embedding-blend",
        "architecture": "world-clip",
        "pretrained": "results/models/world-clip.safetensors",
        "text_variant": "embedding_blend",
        "other": DRAFT_FINAL,
        "beta": 0.9,
    },
    {
        "name": "tiny-weight-blend",
        "architecture": "world-clip",
        "pretrained": "results/models/world-clip.safetensors",
        "text_variant": "weight_blend",
        "other": DRAFT_FINAL,
        "beta": 0.9,
        "datasets": ["coco", "vqa_abstract"],
    },
)

_BUILT: dict[Path, Path] = {}  # session base folder -> its blended demo


def add_blends(config: dict) -> None:
    """Append :data:`BLENDS` to ``config``'s evaluation entries (in place)."""
    config["evaluate"]["models"].extend(copy.deepcopy(BLENDS))


def blended_demo(finished_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the finished demo whose config.yaml also holds :data:`BLENDS`, brought up to
    date (built once per session; dry runs only, or copy it first)."""
    base = tmp_path_factory.getbasetemp()
    if base not in _BUILT:
        workdir = copy_demo(tmp_path_factory.mktemp("blended") / "demo", source=finished_demo)
        path = workdir / "config.yaml"
        config = yaml.safe_load(path.read_text())
        add_blends(config)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        result = snakemake(workdir)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
        _BUILT[base] = workdir
    return _BUILT[base]
