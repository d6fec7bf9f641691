"""The thesis' two effects, read from a finished demo on the world, and the sabotage that must
take them away (issue 17, point 3).

The demo (resources/demo/config.yaml) evaluates the world's pretrained CLIP as ``tiny`` and each
training run's blend at beta 0.9 as ``<run>-beta0.9``. An effect is the difference, in points,
between a blend and ``tiny`` on the same evaluation set:

- *third tower*: text-to-image R@1 on the world's COCO-format retrieval set (five complete
  captions per image) of ``tiny-c3m-blip2-beta0.9`` (and ``tiny-c3m-llava-beta0.9``);
- *DRAFT*: overall VQA v1 multiple-choice accuracy (the official soft accuracy) of
  ``tiny-draft-llava-beta0.9`` on the world's real- and abstract-format VQA sets, and of its
  trained text tower alone (``-beta0``), whose gain over both sets is what the training itself
  learned.

:func:`shuffle_dialogue` is the sabotage: it gives each image another image's dialogue (the
dialogue shards' rows rotated by one among the successful ones), as a broken join would.
:func:`without_dialogue` is its control: DRAFT trained on its caption term alone. The bench
(bench/bench_demo_effects.py) and the demo tests (tests/world/test_world_demo.py) read the
effects with :func:`demo_effects`, on the demo as it is and on copies trained on shuffled
dialogue or without it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from dialogclip.core.io import InputFileError, read_json, read_parquet, write_parquet_atomic
from dialogclip.models.eval_entry import result_path

log = logging.getLogger(__name__)

BASELINE = "tiny"
THIRD_TOWER_BLIP2 = "tiny-c3m-blip2-beta0.9"
THIRD_TOWER_LLAVA = "tiny-c3m-llava-beta0.9"
DRAFT_RUN = "tiny-draft-llava"  # the demo's DRAFT training run (train.runs[].name)
DRAFT = f"{DRAFT_RUN}-beta0.9"
DRAFT_ALONE = f"{DRAFT_RUN}-beta0"  # the trained text tower, unblended
RETRIEVAL_METRIC = "image_retrieval_recall@1"
VQA_SETS = ("vqa_real", "vqa_abstract")
# What travels with a reply (everything but the image's key and url): shuffling moves it whole.
_KEPT_WITH_IMAGE = ("key", "url")


@dataclass(frozen=True)
class DemoEffects:
    """The effects of a finished demo, in points (a blend's score minus the baseline's)."""

    third_tower_blip2: float  # image R@1 x 100, world COCO test set
    third_tower_llava: float
    draft_vqa_real: float  # overall VQA MC accuracy (0-100), world real-format set
    draft_vqa_abstract: float  # the same, abstract-scene format
    draft_alone_vqa_real: float  # DRAFT's trained tower alone (beta 0), world real-format set
    draft_alone_vqa_abstract: float
    draft_alone_vqa: float  # the mean of the two: the trained tower's gain on VQA

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def image_recall_at_1(workdir: Path, entry: str) -> float:
    """Text-to-image R@1 of ``entry`` on the world's retrieval set, in points (0-100)."""
    path = result_path(workdir / "results", entry, "coco")
    metrics = read_json(path, "retrieval result")["metrics"]
    if RETRIEVAL_METRIC not in metrics:
        raise InputFileError(path, f"{path} has no {RETRIEVAL_METRIC}")
    return 100.0 * float(metrics[RETRIEVAL_METRIC])


def vqa_accuracy(workdir: Path, entry: str, dataset: str) -> float:
    """Overall VQA multiple-choice accuracy of ``entry`` on ``dataset`` (0-100)."""
    path = result_path(workdir / "results", entry, dataset)
    return float(read_json(path, "VQA result")["metrics"]["overall"])


def _vqa_gain(workdir: Path, entry: str, dataset: str) -> float:
    return vqa_accuracy(workdir, entry, dataset) - vqa_accuracy(workdir, BASELINE, dataset)


def demo_effects(workdir: str | os.PathLike[str]) -> DemoEffects:
    """The effects of the finished demo in ``workdir`` (see the module docstring)."""
    workdir = Path(workdir)
    r1 = image_recall_at_1(workdir, BASELINE)
    alone = [_vqa_gain(workdir, DRAFT_ALONE, dataset) for dataset in VQA_SETS]
    return DemoEffects(
        third_tower_blip2=image_recall_at_1(workdir, THIRD_TOWER_BLIP2) - r1,
        third_tower_llava=image_recall_at_1(workdir, THIRD_TOWER_LLAVA) - r1,
        draft_vqa_real=_vqa_gain(workdir, DRAFT, "vqa_real"),
        draft_vqa_abstract=_vqa_gain(workdir, DRAFT, "vqa_abstract"),
        draft_alone_vqa_real=alone[0],
        draft_alone_vqa_abstract=alone[1],
        draft_alone_vqa=sum(alone) / len(alone),
    )


def effect_targets() -> list[str]:
    """The evaluation files :func:`demo_effects` reads (relative to the demo's folder): the
    Snakemake targets that compute the effects and nothing else of the report."""
    entries = [(BASELINE, "coco"), (THIRD_TOWER_BLIP2, "coco"), (THIRD_TOWER_LLAVA, "coco")]
    entries += [
        (entry, dataset) for entry in (BASELINE, DRAFT, DRAFT_ALONE) for dataset in VQA_SETS
    ]
    return [str(result_path(Path("results"), entry, dataset)) for entry, dataset in entries]


def without_dialogue(train: dict[str, Any]) -> dict[str, Any]:
    """The control for DRAFT's sabotage: ``train`` (the config's ``train`` mapping, edited in
    place and returned) with the DRAFT run :data:`DRAFT_RUN` trained on its captions alone.

    The shuffle leaves two of DRAFT's terms working: the caption-image term (eq. 4.4.1's
    ``1 - a`` part, pairs intact) and the MMD (eq. 4.4.3), which compares the distributions of
    all caption and dialogue logits and so does not see which dialogue is whose. With ``a: 0``
    and ``mmd_weight: 0`` the run keeps the caption term only, on the same batches and steps
    (under AdamW the term's weight barely matters: the update is invariant to the loss' scale up
    to epsilon), so what DRAFT gains beyond this control is what the dialogue brought.
    """
    runs = [run for run in train["runs"] if run["name"] == DRAFT_RUN]
    if len(runs) != 1:
        raise ValueError(f"train.runs has no single run named {DRAFT_RUN!r}")
    runs[0].setdefault("loss", {}).update({"a": 0.0, "mmd_weight": 0.0})
    return train


def shuffle_dialogue(shard: str | os.PathLike[str]) -> int:
    """Give each image of a dialogue shard the next successful image's dialogue (in place,
    atomically, schema and provenance kept); returns how many rows moved.

    Rows that failed keep theirs: the training rows leave them out either way, so the shuffled
    shard trains on exactly as many rows as the original, each with the wrong image.
    """
    table = read_parquet(shard, what="dialogue shard")
    success = [
        i for i, status in enumerate(table.column("status").to_pylist()) if status == "success"
    ]
    if len(success) < 2:
        raise InputFileError(shard, f"{shard}: fewer than two successful rows, nothing to shuffle")
    source = list(range(table.num_rows))
    for position, row in enumerate(success):
        source[row] = success[(position + 1) % len(success)]
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        columns[name] = column if name in _KEPT_WITH_IMAGE else column.take(pa.array(source))
    shuffled = pa.table(columns, schema=table.schema)
    write_parquet_atomic(shuffled, shard)
    log.info("%s: %d dialogues moved to another image", shard, len(success))
    return len(success)
