"""Flickr30k 1k retrieval: a configured evaluation set through the same retrieval rule, and
CLIP_benchmark's own Flickr30k evaluation (its dataset reader, collate function and
``zeroshot_retrieval.evaluate``) giving the same recalls on the same files.

The set is made from the demo's COCO test images in both published Flickr30k formats:
Karpathy's ``dataset_flickr30k.json`` (what the workflow reads) and CLIP_benchmark's
``flickr30k_test_karpathy.txt`` (what its CLI reads), the images renamed as Flickr's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from clip_benchmark_helpers import clip_benchmark_recalls
from workflow_helpers import REPO_ROOT, copy_demo, planned, snakemake

from dialogclip.core.io import read_json
from dialogclip.models.openclip import ClipSpec, load_clip

pytestmark = pytest.mark.dag

# The workflow's recall cut-offs (evaluate.ks, its default): CLIP_benchmark's recall@k needs
# k <= the number of images, which the demo's 300 test images allow.
KS = (1, 5, 10)
# The demo's entry `tiny` (the world's CLIP), which takes every configured set.
DEMO_EVALUATE = yaml.safe_load((REPO_ROOT / "resources/demo/config.yaml").read_text())["evaluate"]
(TINY,) = (
    ClipSpec(e["architecture"], e["pretrained"])
    for e in DEMO_EVALUATE["models"]
    if e["name"] == "tiny"
)


def _write_flickr(demo: Path, folder: Path) -> int:
    """The demo's COCO Karpathy test images and captions as a Flickr30k set in ``folder``, in
    both formats; returns the number of images. Train/val images stay in the JSON only (the
    workflow evaluates the test split), as in Karpathy's file."""
    coco = read_json(demo / "eval/coco/dataset_coco.json")
    images_dir = folder / "flickr30k-images"
    images_dir.mkdir(parents=True)
    karpathy, lines = [], ["image,caption"]
    for i, image in enumerate(coco["images"]):
        name = f"{1000092795 + 7 * i}.jpg"  # Flickr's names: its photo ids
        shutil.copy(demo / "eval/coco" / image["filepath"] / image["filename"], images_dir / name)
        sentences = [{"raw": s["raw"], "tokens": s["tokens"]} for s in image["sentences"]]
        karpathy.append(
            {"filename": name, "imgid": i, "split": image["split"], "sentences": sentences}
        )
        if image["split"] == "test":
            lines += [f"{name},{s['raw'].strip()}" for s in image["sentences"]]
    karpathy_json = {"images": karpathy, "dataset": "flickr30k"}
    (folder / "dataset_flickr30k.json").write_text(json.dumps(karpathy_json))
    (folder / "flickr30k_test_karpathy.txt").write_text("\n".join(lines) + "\n")
    return sum(image["split"] == "test" for image in coco["images"])


def _clip_benchmark_recalls(folder: Path, checkpoint: Path) -> dict[str, float]:
    """CLIP_benchmark's ``flickr30k`` retrieval on the set's files, the demo's CLIP (its
    ``checkpoint``) loaded as the project loads it (its architecture is registered in this
    process only)."""
    clip = load_clip(ClipSpec(TINY.architecture, str(checkpoint)), device=torch.device("cpu"))
    annotations = folder / "flickr30k_test_karpathy.txt"
    root = folder / "flickr30k-images"
    return clip_benchmark_recalls(
        "flickr30k", root, annotations, clip.model, clip.preprocess, clip.tokenizer, KS
    )


def test_flickr30k_is_evaluated_by_the_retrieval_rule_as_clip_benchmark_does(
    tmp_path: Path,
) -> None:
    demo = copy_demo(tmp_path / "demo")
    n_test = _write_flickr(demo, demo / "eval/flickr30k")
    overlay = tmp_path / "flickr.yaml"
    files = {
        "annotations": "eval/flickr30k/dataset_flickr30k.json",
        "images": "eval/flickr30k/flickr30k-images",
    }
    overlay.write_text(yaml.safe_dump({"evaluate": {"flickr30k": files}}))
    target = "results/eval/retrieval/tiny/flickr30k.json"

    # Configured, the set joins the evaluation of the entries that take every set (the demo's
    # `tiny`), with its own image embeddings.
    plan = planned(demo, "--configfile", str(overlay))
    assert ("tiny", "flickr30k") in {
        (job.wildcards["model"], job.wildcards["retrieval_set"])
        for job in plan.of("eval_retrieval")
    }
    assert "flickr30k" in plan.by("embed_eval_images", "dataset")

    result = snakemake(demo, target, "--configfile", str(overlay))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    record = read_json(demo / target)
    assert (record["dataset"], record["task"]) == ("flickr30k", "zeroshot_retrieval")
    assert (record["n_images"], record["n_texts"]) == (n_test, 5 * n_test)
    ours = record["metrics"]
    theirs = _clip_benchmark_recalls(demo / "eval/flickr30k", demo / TINY.pretrained)
    assert set(theirs) == {f"{kind}_retrieval_recall@{k}" for kind in ("image", "text") for k in KS}
    for metric, value in theirs.items():
        assert ours[metric] == pytest.approx(value, abs=1e-6), metric
