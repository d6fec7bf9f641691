"""The trained runs exported as files (rule export_models, target `models`) on the finished demo:
open_clip loads each checkpoint by its manifest's name, the third tower's loader builds its
embedding blends, and CLIP_benchmark (its COCO reader and ``zeroshot_retrieval.evaluate``,
1.6.2 = upstream 48de38c for these files) scores each exported model exactly as the project's
evaluation scored the entry it reproduces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
import pytest
from clip_benchmark_helpers import clip_benchmark_recalls
from workflow_helpers import DEMO_RUNS, copy_demo, planned, snakemake

from dialogclip.core.io import read_json
from dialogclip.export.models import load_embedding_blend
from dialogclip.models.openclip import register_model_configs

pytestmark = pytest.mark.dag

# The cut-offs the workflow evaluates (evaluate.ks) on the world's 300 retrieval images.
KS = (1, 5, 10)
FOLDER = "results/export/models"


def _clip_benchmark_coco(demo: Path, model: Any, preprocess: Any, tokenizer: Any) -> dict:
    """CLIP_benchmark's ``mscoco_captions`` retrieval on the demo's COCO files."""
    root, annotations = demo / "eval/coco", demo / "eval/coco/coco_test_karpathy.json"
    return clip_benchmark_recalls(
        "mscoco_captions", root, annotations, model, preprocess, tokenizer, KS
    )


def _assert_scores_as_evaluated(demo: Path, entry: str, theirs: dict) -> None:
    ours = read_json(demo / f"results/eval/retrieval/{entry}/coco.json")["metrics"]
    assert set(theirs) == {f"{kind}_retrieval_recall@{k}" for kind in ("image", "text") for k in KS}
    for metric, value in theirs.items():
        assert ours[metric] == pytest.approx(value, abs=1e-6), (entry, metric)


@pytest.fixture(scope="module")
def exported(finished_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    demo = copy_demo(tmp_path_factory.mktemp("export") / "demo", source=finished_demo)
    assert planned(demo, "models").jobs == {"export_models": len(DEMO_RUNS), "models": 1}
    result = snakemake(demo, "models")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return demo


def test_each_run_gets_its_folder_and_manifest(exported: Path) -> None:
    manifests = {run: read_json(exported / FOLDER / run / "manifest.json") for run in DEMO_RUNS}
    files = {
        run: sorted(model["file"] for model in manifest["models"])
        for run, manifest in manifests.items()
    }
    assert files == {
        "tiny-c3m-blip2": ["tiny-c3m-blip2-tower.safetensors"],
        "tiny-c3m-llava": ["tiny-c3m-llava-tower.safetensors"],
        "tiny-draft-llava": [
            "tiny-draft-llava-beta0.safetensors",
            "tiny-draft-llava-wblend-beta0.9.safetensors",
        ],
        "tiny-draft-llava-nommd": ["tiny-draft-llava-nommd-beta0.safetensors"],
    }
    for run in manifests:
        folder = exported / FOLDER / run  # Snakemake's .snakemake_timestamp aside
        listed = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        assert listed == sorted([*files[run], "manifest.json"])
    third = manifests["tiny-c3m-blip2"]["models"][0]
    assert third["kind"] == "third_tower"
    assert third["entries"]["tiny-c3m-blip2-beta0.9"] == 0.9
    # Exported once: nothing left to do.
    assert planned(exported, "models").jobs == {}


@pytest.mark.parametrize(
    "run, entry",
    [
        ("tiny-draft-llava", "tiny-draft-llava-beta0"),  # DRAFT's text tower alone
        ("tiny-draft-llava", "tiny-draft-llava-wblend-beta0.9"),  # a weight blend
    ],
)
def test_open_clip_loads_a_checkpoint_and_clip_benchmark_scores_it_as_evaluated(
    exported: Path, run: str, entry: str
) -> None:
    manifest = read_json(exported / FOLDER / run / "manifest.json")
    (model_info,) = [m for m in manifest["models"] if m["entry"] == entry]
    register_model_configs()  # the demo's world-clip architecture (a real one needs nothing)
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_info["open_clip_name"],
        pretrained=str(exported / FOLDER / run / model_info["file"]),
    )
    tokenizer = open_clip.get_tokenizer(model_info["open_clip_name"])
    theirs = _clip_benchmark_coco(exported, model.eval(), preprocess, tokenizer)
    _assert_scores_as_evaluated(exported, entry, theirs)


@pytest.mark.parametrize("beta", ["0", "0.6", "0.9"])
def test_the_third_towers_loader_gives_its_embedding_blends(
    exported: Path, beta: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The demo's run started from a checkpoint path, relative to its working directory.
    monkeypatch.chdir(exported)
    entry = f"tiny-c3m-blip2-beta{beta}"
    clip = load_embedding_blend(exported / FOLDER / "tiny-c3m-blip2", entry)
    theirs = _clip_benchmark_coco(exported, clip.model, clip.preprocess, clip.tokenizer)
    _assert_scores_as_evaluated(exported, entry, theirs)
