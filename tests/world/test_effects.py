"""The sabotage and its control on their own (dialogclip.world.effects); the demo tests
(test_world_demo.py) run them through the pipeline."""

from __future__ import annotations

import copy
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from workflow_helpers import REPO_ROOT

from dialogclip.core.io import InputFileError
from dialogclip.world.effects import DRAFT_RUN, shuffle_dialogue, without_dialogue


def _shard(path: Path, statuses: list[str]) -> Path:
    n = len(statuses)
    table = pa.table(
        {
            "key": [f"{i:09d}" for i in range(n)],
            "url": [f"http://127.0.0.1/{i}.jpg" for i in range(n)],
            "status": statuses,
            "dialogue": [f"reply {i}" for i in range(n)],
            "model": ["tiny"] * n,
        }
    )
    pq.write_table(table, path)
    return path


def test_shuffle_gives_each_successful_image_the_next_ones_dialogue(tmp_path: Path) -> None:
    shard = _shard(tmp_path / "00000.parquet", ["success", "failed", "success", "success"])
    schema = pq.read_schema(shard)
    assert shuffle_dialogue(shard) == 3
    table = pq.read_table(shard)
    assert table.schema == schema
    assert table.column("key").to_pylist() == ["000000000", "000000001", "000000002", "000000003"]
    # the failed row keeps its own; the three successful ones are rotated among themselves
    assert table.column("dialogue").to_pylist() == ["reply 2", "reply 1", "reply 3", "reply 0"]
    assert table.column("status").to_pylist() == ["success", "failed", "success", "success"]


def test_a_shard_with_one_success_cannot_be_shuffled(tmp_path: Path) -> None:
    shard = _shard(tmp_path / "00001.parquet", ["success", "failed"])
    with pytest.raises(InputFileError, match=r"00001\.parquet: fewer than two successful rows"):
        shuffle_dialogue(shard)


def test_without_dialogue_trains_only_drafts_caption_term() -> None:
    config = yaml.safe_load((REPO_ROOT / "resources/demo/config.yaml").read_text())
    # a deep copy: an edit inside another run's nested settings must show as a difference
    runs = {run["name"]: run for run in copy.deepcopy(config["train"]["runs"])}
    edited = {run["name"]: run for run in without_dialogue(config["train"])["runs"]}
    assert edited[DRAFT_RUN]["loss"] == {"a": 0.0, "mmd_weight": 0.0}
    assert {name: run for name, run in edited.items() if name != DRAFT_RUN} == {
        name: run for name, run in runs.items() if name != DRAFT_RUN
    }
    with pytest.raises(ValueError, match="no single run named 'tiny-draft-llava'"):
        without_dialogue({"runs": []})
