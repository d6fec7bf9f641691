"""The training-data rules on the demo: the jobs planned with train.activate, what an edit
reruns (science in params, machine in resources), and the files they write."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml
from workflow_helpers import copy_demo, planned_jobs, snakemake

from dialogclip.core.io import read_json
from dialogclip.models.naming import image_model_key
from dialogclip.train.cache import read_embedding_cache
from dialogclip.train.datasets import DraftDataset, ShardFiles, ThirdTowerDataset
from dialogclip.train.rows import read_rows

TINY = "results/models/tiny-clip-0.safetensors"
SHARDS = ("00000", "00001", "00002")  # the demo's 70 TSV rows in shards of 32
RUNS = [
    {
        "name": "c3m-blip2",
        "method": "third_tower",
        "architecture": "tiny-clip",
        "pretrained": TINY,
        "generator": "blip2",
        # The demo's random BLIP-2 always talks until max_new_tokens: without this, no rows.
        "include_truncated": True,
    },
    {
        "name": "draft-llava",
        "method": "draft",
        "architecture": "tiny-clip",
        "pretrained": TINY,
        "generator": "llava",
    },
]
# Both runs share one image tower: 3 image caches, not 6; the third tower adds the captions.
TRAIN_JOBS = Counter({"embed_train_images": 3, "embed_train_captions": 3, "train_rows": 6})
MODEL = image_model_key("tiny-clip", TINY)


def _edit_config(workdir: Path, edit) -> None:
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _activate(config: dict) -> None:
    config["train"] = {"activate": True, "runs": [dict(run) for run in RUNS]}


def test_fresh_demo_plans_the_train_jobs_with_the_rest(tmp_path: Path) -> None:
    workdir = copy_demo(tmp_path / "demo")
    without = planned_jobs(workdir)
    assert not set(TRAIN_JOBS) & set(without)  # train.activate defaults to false
    _edit_config(workdir, _activate)
    assert planned_jobs(workdir) == without + TRAIN_JOBS


def test_a_run_on_dialogue_that_is_not_generated_is_refused(tmp_path: Path) -> None:
    workdir = copy_demo(tmp_path / "demo")

    def edit(config):
        _activate(config)
        config["generate"]["generators"] = ["llava"]

    _edit_config(workdir, edit)
    result = snakemake(workdir, "--dry-run", timeout=300)
    assert result.returncode != 0
    assert "c3m-blip2 trains on blip2 dialogue, which generate.generators ['llava']" in (
        result.stdout + result.stderr
    )


@pytest.fixture(scope="module")
def trained(finished_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The finished demo with train activated and its training data made."""
    workdir = copy_demo(tmp_path_factory.mktemp("train") / "demo", source=finished_demo)
    assert planned_jobs(workdir) == Counter()
    _edit_config(workdir, _activate)
    assert planned_jobs(workdir) == TRAIN_JOBS
    result = snakemake(workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return workdir


def test_nothing_left_and_machine_settings_rerun_nothing(trained: Path) -> None:
    assert planned_jobs(trained) == Counter()
    assert (
        planned_jobs(
            trained,
            "--set-resources",
            "embed_train_images:batch_size=3",
            "embed_train_captions:batch_size=5",
            "--set-threads",
            "embed_train_images=1",
        )
        == Counter()
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        # A new model for the third tower: its caches and (new tokenizer) its rows.
        (
            lambda c: c["train"]["runs"][0].update(architecture="ViT-B-32"),
            {"embed_train_images": 3, "embed_train_captions": 3, "train_rows": 3},
        ),
        # Other weights for DRAFT: a new image cache; the rows (same tokenizer) stay.
        (
            lambda c: c["train"]["runs"][1].update(
                pretrained="results/models/tiny-clip-1.safetensors"
            ),
            {"embed_train_images": 3},
        ),
        # QuickGELU changes both towers of the third tower.
        (
            lambda c: c["train"]["runs"][0].update(quickgelu=True),
            {"embed_train_images": 3, "embed_train_captions": 3},
        ),
        (lambda c: c["train"]["runs"][1].update(include_truncated=True), {"train_rows": 3}),
        # The separator joins pairs: only the concatenated (third-tower) rows read it.
        (lambda c: c.setdefault("text", {}).update(pair_separator=" / "), {"train_rows": 3}),
        (lambda c: c["train"]["runs"][1].update(sample_form="concatenated"), {"train_rows": 3}),
        # Hyperparameters are not the data's business.
        (lambda c: c["train"]["runs"][0].update(optim={"lr": 0.1}), {}),
    ],
    ids=["architecture", "pretrained", "quickgelu", "truncated", "separator", "form", "optim"],
)
def test_science_edits_rerun_exactly_what_depends_on_them(
    trained: Path, tmp_path: Path, edit, expected
) -> None:
    workdir = copy_demo(tmp_path / "demo", source=trained)
    _edit_config(workdir, edit)
    assert planned_jobs(workdir) == Counter(expected)


def test_written_files_join_into_datasets(trained: Path) -> None:
    emb = trained / "results" / "train" / "emb"
    rows_dir = trained / "results" / "train" / "rows"
    assert sorted(p.name for p in (emb / "image").iterdir()) == [MODEL]
    assert sorted(p.name for p in (emb / "image" / MODEL).iterdir()) == [
        f"{s}.arrow" for s in SHARDS
    ]
    assert sorted(str(p.relative_to(rows_dir)) for p in rows_dir.glob("*/*/*")) == [
        "blip2/tiny-clip/concatenated-with_truncated",
        "llava/tiny-clip/pairs",
    ]
    for shard in SHARDS:
        stats = read_json(rows_dir / f"llava/tiny-clip/pairs/stats/{shard}.json")
        images = stats["images"]
        assert images["kept"] + images["n_excluded"] == images["input"]
        ingested = read_embedding_cache(emb / "image" / MODEL / f"{shard}.arrow").metadata
        assert images["input"] == ingested["n_input_rows"]
        assert stats["rows"] == len(read_rows(rows_dir / f"llava/tiny-clip/pairs/{shard}.arrow"))
    third = ThirdTowerDataset(
        [
            ShardFiles(
                rows_dir / f"blip2/tiny-clip/concatenated-with_truncated/{s}.arrow",
                emb / "image" / MODEL / f"{s}.arrow",
                emb / "text" / MODEL / f"{s}.arrow",
            )
            for s in SHARDS
        ]
    )
    draft = DraftDataset(
        [
            ShardFiles(
                rows_dir / f"llava/tiny-clip/pairs/{s}.arrow", emb / "image" / MODEL / f"{s}.arrow"
            )
            for s in SHARDS
        ]
    )
    assert len(third) > 0 and len(draft) > 0
    assert third[0]["image_emb"].shape == (32,) and draft[0]["dialogue_tokens"].shape == (77,)
