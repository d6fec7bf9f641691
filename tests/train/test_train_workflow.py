"""The training-data rules on the demo: the jobs planned with train.activate, what an edit
reruns (science in params, machine in resources), and the files they write."""

from __future__ import annotations

import json
import shlex
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from workflow_helpers import (
    DEMO_BLOCKS,
    DEMO_RUNS,
    REPO_ROOT,
    copy_demo,
    demo_after_runs,
    planned_jobs,
    pretend_generators_fetched,
    snakemake,
)

from dialogclip.core.io import read_json
from dialogclip.models.naming import image_model_key
from dialogclip.train.cache import read_embedding_cache
from dialogclip.train.datasets import DraftDataset, ShardFiles, ThirdTowerDataset
from dialogclip.train.rows import read_rows

pytestmark = pytest.mark.dag

DEMO_CONFIG = yaml.safe_load((REPO_ROOT / "resources" / "demo" / "config.yaml").read_text())
RUNS = {run["name"]: run for run in DEMO_CONFIG["train"]["runs"]}
# The demo's one CLIP, every run's starting point: the world's (rule world_clip).
ARCHITECTURE, PRETRAINED = (RUNS["tiny-c3m-blip2"][key] for key in ("architecture", "pretrained"))
SHARDS = ("00000", "00001", "00002")  # the demo's TSV rows in shards of cc3m.shard_size
# ... in blocks of train.shards_per_block = 2 shards: the training data's jobs and files.
BLOCKS = {"00000-00001": SHARDS[:2], "00002-00002": SHARDS[2:]}
# The demo's runs (resources/demo/config.yaml; counted in workflow_helpers.DEMO_RUNS): third
# towers on BLIP-2 and on LLaVA, DRAFT with and without MMD on LLaVA pairs. One image tower:
# an image cache per block, not one per run; both third towers add the same captions (a caption
# cache per block); their rows sets in every block (both DRAFT runs read the same rows); the
# runs themselves and their evaluation variants.
TRAIN_JOBS = Counter(
    {"embed_train_images": DEMO_BLOCKS, "embed_train_captions": DEMO_BLOCKS}
) + demo_after_runs(list(DEMO_RUNS))
MODEL = image_model_key(ARCHITECTURE, PRETRAINED)
ROWS = {  # the rows sets (results/train/rows/<generator>/<architecture>/<form>)
    "blip2": f"blip2/{ARCHITECTURE}/concatenated",
    "llava": f"llava/{ARCHITECTURE}/concatenated",
    "pairs": f"llava/{ARCHITECTURE}/pairs",
}


def _edit_config(workdir: Path, edit) -> None:
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _deactivate(config: dict) -> None:
    config["train"]["activate"] = False


def test_the_demo_plans_the_train_jobs_with_the_rest(tmp_path: Path) -> None:
    workdir = copy_demo(tmp_path / "demo")
    with_training = planned_jobs(workdir)
    _edit_config(workdir, _deactivate)
    without = planned_jobs(workdir)
    assert not {"embed_train_images", "train_rows", "train_run"} & set(without)
    assert with_training == without + TRAIN_JOBS


def test_a_run_on_dialogue_that_is_not_generated_is_refused(tmp_path: Path) -> None:
    workdir = copy_demo(tmp_path / "demo")
    _edit_config(workdir, lambda config: config["generate"].update(generators=["llava"]))
    result = snakemake(workdir, "--dry-run", timeout=300)
    assert result.returncode != 0
    assert "tiny-c3m-blip2 trains on blip2 dialogue, which generate.generators ['llava']" in (
        result.stdout + result.stderr
    )


@pytest.fixture(scope="module")
def trained(finished_demo: Path) -> Path:
    """The finished demo: its four runs trained and evaluated (dry runs only)."""
    return finished_demo


def test_nothing_left_and_machine_settings_rerun_nothing(trained: Path) -> None:
    assert planned_jobs(trained) == Counter()
    assert (
        planned_jobs(
            trained,
            "--set-resources",
            "embed_train_images:batch_size=3",
            "embed_train_captions:batch_size=5",
            "train_run:checkpoint_every=3",
            "train_run:num_workers=1",
            "train_run:processes=2",
            "--set-threads",
            "embed_train_images=1",
            "train_run=1",
        )
        == Counter()
    )


def _run(config: dict, name: str) -> dict:
    """The training run ``name`` of ``config`` (to edit in place)."""
    return next(run for run in config["train"]["runs"] if run["name"] == name)


def _redone(*runs: str) -> dict[str, int]:
    """What an edit of these runs' training reruns: the runs, their evaluation variants (the
    third towers' six betas on COCO; a DRAFT run's on COCO and both VQA sets, the first one's
    weight blend too) and the report, not their rows."""
    return {**demo_after_runs(list(runs), blocks=0), "report": 1}


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        # A training hyperparameter: that run and what depends on it, nothing else.
        (
            lambda c: _run(c, "tiny-c3m-blip2")["optim"].update(lr=0.5),
            _redone("tiny-c3m-blip2"),
        ),
        (
            lambda c: _run(c, "tiny-draft-llava-nommd")["loss"].update(mmd_weight=0.5),
            _redone("tiny-draft-llava-nommd"),
        ),
        # The job's params carry the whole loss, defaults filled in: writing out a default
        # changes nothing, another direction or MMD sample unit reruns that run.
        (
            lambda c: (
                _run(c, "tiny-draft-llava")
                .setdefault("loss", {})
                .update(direction="text_to_image", a=0.65, mmd_samples="scalar", mmd_form="norm")
            ),
            {},
        ),
        (
            lambda c: (
                _run(c, "tiny-draft-llava").setdefault("loss", {}).update(direction="image_to_text")
            ),
            _redone("tiny-draft-llava"),
        ),
        (
            lambda c: _run(c, "tiny-draft-llava").setdefault("loss", {}).update(mmd_samples="rows"),
            _redone("tiny-draft-llava"),
        ),
        # Other weights for DRAFT (the DRAFT run without MMD's, a finished output of the demo):
        # a new image tower, embedded for training and evaluation.
        (
            lambda c: _run(c, "tiny-draft-llava").update(
                pretrained="results/train/runs/tiny-draft-llava-nommd/final.safetensors"
            ),
            {
                "embed_train_images": DEMO_BLOCKS,
                "embed_eval_images": 3,
                **_redone("tiny-draft-llava"),
            },
        ),
        # QuickGELU changes both frozen towers of the third tower.
        (
            lambda c: _run(c, "tiny-c3m-blip2").update(quickgelu=True),
            {
                "embed_train_images": DEMO_BLOCKS,
                "embed_train_captions": DEMO_BLOCKS,
                "embed_eval_images": 1,
                **_redone("tiny-c3m-blip2"),
            },
        ),
        # Truncated replies kept: that run's own rows (both DRAFT runs read the same ones).
        (
            lambda c: _run(c, "tiny-draft-llava").update(include_truncated=True),
            {"train_rows": DEMO_BLOCKS, **_redone("tiny-draft-llava")},
        ),
        # The separator joins pairs: only the concatenated (third-tower) rows read it - BLIP-2's
        # and LLaVA's, every block - and the dialogue statistics.
        (
            lambda c: c.setdefault("text", {}).update(pair_separator=" / "),
            {
                **demo_after_runs(["tiny-c3m-blip2", "tiny-c3m-llava"]),
                "dialogue_summary": 2,
                "dialogue_quality": 2,
                "report": 1,
            },
        ),
        # Evaluation variants are the evaluation's business: a new beta, one new evaluation.
        (
            lambda c: _run(c, "tiny-c3m-blip2")["evaluate"].update(betas=[0.9, 0.5]),
            {"eval_retrieval": 1, "report": 1},
        ),
    ],
    ids=[
        "lr",
        "mmd_weight",
        "loss_defaults",
        "direction",
        "mmd_samples",
        "pretrained",
        "quickgelu",
        "truncated",
        "separator",
        "betas",
    ],
)
def test_science_edits_rerun_exactly_what_depends_on_them(
    trained: Path, tmp_path: Path, edit, expected
) -> None:
    config = yaml.safe_load((trained / "config.yaml").read_text())
    edit(config)
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(config))
    assert planned_jobs(trained, "--configfile", str(edited)) == Counter(expected)


def test_written_files_join_into_datasets(trained: Path) -> None:
    """One file per block and kind, holding its shards' rows in order: the ingested rows of
    both shards of 00000-00001, every image's stats counted once."""
    emb = trained / "results" / "train" / "emb"
    rows_dir = trained / "results" / "train" / "rows"
    pairs = rows_dir / ROWS["pairs"]
    assert sorted(p.name for p in (emb / "image").iterdir()) == [MODEL]
    assert sorted(p.name for p in (emb / "image" / MODEL).iterdir()) == [
        f"{block}.arrow" for block in BLOCKS
    ]
    assert sorted(str(p.relative_to(rows_dir)) for p in rows_dir.glob("*/*/*")) == sorted(
        ROWS.values()
    )
    n_input = 0
    for block, shards in BLOCKS.items():
        stats = read_json(pairs / f"stats/{block}.json")
        images = stats["images"]
        assert stats["shards"] == list(shards)
        assert images["kept"] + images["n_excluded"] == images["input"]
        cache = read_embedding_cache(emb / "image" / MODEL / f"{block}.arrow").metadata
        assert cache["shards"] == list(shards)
        assert images["input"] == cache["n_input_rows"]
        rows = read_rows(pairs / f"{block}.arrow")
        assert stats["rows"] == len(rows)
        keys = rows.keys.to_pylist()
        assert keys == sorted(keys)
        ingested = [
            pq.read_table(trained / f"results/ingest/retried/shards/{shard}.parquet")
            for shard in shards
        ]
        assert set(keys) <= {key for table in ingested for key in table["key"].to_pylist()}
        assert images["input"] == sum(table.num_rows for table in ingested)
        n_input += images["input"]
    # every TSV row (bytes: one line is not UTF-8 on purpose) in exactly one block
    tsv_lines = (trained / DEMO_CONFIG["cc3m"]["tsv"]).read_bytes().splitlines()
    assert n_input == len(tsv_lines)
    first = read_rows(pairs / "00000-00001.arrow").keys.to_pylist()
    shard_size = DEMO_CONFIG["cc3m"]["shard_size"]
    assert int(first[0]) < shard_size <= int(first[-1])  # rows of both shards of the block
    third = ThirdTowerDataset(
        [
            ShardFiles(
                rows_dir / ROWS["blip2"] / f"{b}.arrow",
                emb / "image" / MODEL / f"{b}.arrow",
                emb / "text" / MODEL / f"{b}.arrow",
            )
            for b in BLOCKS
        ]
    )
    draft = DraftDataset(
        [ShardFiles(pairs / f"{b}.arrow", emb / "image" / MODEL / f"{b}.arrow") for b in BLOCKS]
    )
    assert len(third) > 0 and len(draft) > 0
    # the world CLIP's embedding width and context length
    assert third[0]["image_emb"].shape == (64,) and draft[0]["dialogue_tokens"].shape == (77,)


# The evaluation files the thesis config reads (config.yaml, evaluate.*): a dry run only needs
# them to exist.
THESIS_EVAL_FILES = (
    "resources/coco/dataset_coco.json",
    "resources/vqa/MultipleChoice_mscoco_val2014_questions.json",
    "resources/vqa/mscoco_val2014_annotations.json",
    "resources/vqa/MultipleChoice_abstract_v002_val2015_questions.json",
    "resources/vqa/abstract_v002_val2015_annotations.json",
)


def test_the_thesis_config_trains_every_run_and_links_every_thesis_row(tmp_path: Path) -> None:
    """config.yaml plans chapter 5's training runs, and every row of numbers.yaml is reproduced
    by one of its evaluation entries (the report's --params name them)."""
    (tmp_path / "resources" / "cc3m").mkdir(parents=True)
    (tmp_path / "resources" / "cc3m" / "Train_GCC-training.tsv").write_text("a dog\thttp://x/1\n")
    for folder in ("resources/coco/val2014", "resources/vqa/scene_img_abstract_v002_val2015"):
        (tmp_path / folder).mkdir(parents=True)
    for name in THESIS_EVAL_FILES:
        (tmp_path / name).write_text("{}")
    pretend_generators_fetched(tmp_path)
    config = ("--configfile", str(REPO_ROOT / "config.yaml"))
    planned = planned_jobs(tmp_path, *config)
    # 6 third towers (5 frozen model pairs: the caption caches) + 7 DRAFT runs (4 epoch counts
    # with MMD, 2 without, 1 with QuickGELU); one image-embedding cache per model (LAION-400M
    # twice: the thesis' GELU and the QuickGELU set-up).
    assert (planned["train_run"], planned["embed_train_images"]) == (13, 5)
    assert planned["embed_train_captions"] == 5
    result = snakemake(tmp_path, "--dry-run", "--printshellcmds", *config, timeout=300)
    command = next(line for line in result.stdout.splitlines() if "dialogclip report " in line)
    words = shlex.split(command)
    entries = json.loads(words[words.index("--params") + 1])["models"]
    linked = set()
    for entry in entries:
        rows = entry["thesis_row"]
        linked.update([rows] if isinstance(rows, str) else rows or [])
    thesis = yaml.safe_load((REPO_ROOT / "resources" / "thesis" / "numbers.yaml").read_text())
    assert linked == set(thesis["rows"])
    by_name = {entry["name"]: entry for entry in entries}
    draft = by_name["draft-vitb32-laion400m-12ep-wblend-beta0.9"]
    assert (draft["text_variant"], draft["beta"], draft["thesis_row"]) == (
        "weight_blend",
        0.9,
        None,
    )
    assert by_name["draft-vitb32-laion400m-12ep-beta0.9"]["thesis_row"] == [
        "draft-vitb32-laion400m-blend-12ep",
        "draft-vitb32-laion400m-blend",
    ]
    assert "draft-vitb32-laion400m-12ep-wblend-beta0" not in by_name  # = the embedding blend's
    # The thesis' LAION-400M rows are laion400m_e31 run with GELU (OpenCLIP's published result
    # for that set-up); the QuickGELU-correct entries beside them claim no thesis row.
    laion400m = [entry for entry in entries if "laion400m" in entry["pretrained"]]
    linked_400m = [entry for entry in laion400m if entry["thesis_row"]]
    assert linked_400m and all(
        (entry["pretrained"], entry["quickgelu"]) == ("laion400m_e31", False)
        for entry in linked_400m
    )
    quickgelu = {entry["name"] for entry in laion400m if entry["quickgelu"] is True}
    assert {
        "vitb32-laion400m-quickgelu",
        "c3m-vitb32-laion400m-quickgelu-llava-beta0.9",
        "draft-vitb32-laion400m-quickgelu-6ep-beta0.9",
        "draft-vitb32-laion400m-quickgelu-6ep-beta0",
    } <= quickgelu
    assert all(by_name[name]["thesis_row"] is None for name in quickgelu)
