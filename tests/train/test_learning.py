"""Learning checks on CPU with the real towers, objectives and loop, on synthetic data where the
dialogue carries what the image shows.

The world: images of 6 colours; the frozen image tower's features I(x) are one fixed unit vector
per colour plus noise (what the cache would hold; I never trains). Captions name the colour
inside a sentence ("a photo of a red thing"); the dialogue states it
("what colour is it? red"). A tiny CLIP's text tower is first trained briefly on the captions
(so T knows a little), then:

- the third tower G (a copy of T) trains on the dialogue: "only 3rd" retrieval, G applied to the
  captions of held-out images, rises clearly above its value before training, and the loss falls;
- DRAFT trains T on dialogue + captions: image -> question+answer multiple choice (the VQA task)
  rises above the untrained model's, and the MMD term falls.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from dialogclip.models.openclip import register_model_configs
from dialogclip.models.towers import copy_text_tower
from dialogclip.train.objectives import (
    DraftLoss,
    DraftObjective,
    ThirdTowerLoss,
    ThirdTowerObjective,
)
from dialogclip.train.sampler import unique_image_batches
from dialogclip.train.trainer import OptimSettings, RunSettings, fit, shuffled_batches

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
N_PER_COLOUR = 24
LOGIT_SCALE = 20.0


@pytest.fixture(scope="module")
def world() -> dict:
    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip")
    tokenizer = open_clip.get_tokenizer("tiny-clip")
    prototypes = F.normalize(torch.randn(len(COLOURS), 32), dim=-1)
    classes = torch.arange(len(COLOURS)).repeat_interleave(N_PER_COLOUR)
    images = F.normalize(prototypes[classes] + 0.1 * torch.randn(len(classes), 32), dim=-1)
    captions = tokenizer([f"a photo of a {COLOURS[c]} thing" for c in classes])
    dialogue = tokenizer([f"what colour is it? {COLOURS[c]}" for c in classes])
    return {
        "model": model,
        "prototypes": prototypes,
        "classes": classes,
        "images": images,
        "captions": captions,
        "dialogue": dialogue,
        "tokenizer": tokenizer,
    }


def _fit(objective, rows, plan, tmp: Path, epochs: int, lr: float) -> list[dict]:
    optim = OptimSettings(
        lr=lr, weight_decay=0.0, batch_size=12, epochs=epochs, warmup_steps=1, grad_clip=None,
        seed=0,
    )  # fmt: skip
    torch.set_num_threads(1)
    fit(objective, rows, plan, optim, RunSettings(progress=False, checkpoint_every=10_000), tmp, {})
    return [json.loads(line) for line in (tmp / "metrics.jsonl").read_text().splitlines()]


@torch.no_grad()
def _caption_accuracy(tower, world: dict) -> float:
    """Text -> image retrieval at the colour level: each caption's nearest colour prototype."""
    tower.eval()
    text = F.normalize(tower(world["captions"]), dim=-1)
    return float(((text @ world["prototypes"].T).argmax(1) == world["classes"]).float().mean())


def _briefly_trained_text_tower(world: dict, tmp: Path):
    """T after a short caption-image training (DRAFT's loss with a = 0, no MMD and the image as
    the query: one CLIP direction, which leaves T knowing a little; the symmetric loss teaches
    this tiny world's captions almost fully in one epoch, leaving G nothing to show)."""
    tower = copy_text_tower(world["model"])
    rows = [
        {"image_emb": world["images"][i], "caption_tokens": world["captions"][i],
         "dialogue_tokens": world["captions"][i]}
        for i in range(len(world["classes"]))
    ]  # fmt: skip
    objective = DraftObjective(
        tower, LOGIT_SCALE, DraftLoss(a=0.0, mmd_weight=0.0, direction="image_to_text")
    )
    _fit(objective, rows, shuffled_batches(len(rows), 12, 0), tmp, epochs=1, lr=2e-4)
    return tower


def test_third_tower_lifts_only_3rd_retrieval(world: dict, tmp_path: Path) -> None:
    text_tower = _briefly_trained_text_tower(world, tmp_path / "clip")
    with torch.no_grad():
        caption_emb = F.normalize(text_tower(world["captions"]), dim=-1)
    g = copy_text_tower(text_tower)  # G starts as a copy of the trained T
    before = _caption_accuracy(g, world)
    rows = [
        {"image_emb": world["images"][i], "caption_emb": caption_emb[i],
         "dialogue_tokens": world["dialogue"][i]}
        for i in range(len(world["classes"]))
    ]  # fmt: skip
    objective = ThirdTowerObjective(g, LOGIT_SCALE, ThirdTowerLoss())
    metrics = _fit(objective, rows, shuffled_batches(len(rows), 12, 0), tmp_path / "g", 4, 3e-4)
    after = _caption_accuracy(g, world)
    per_epoch = [[m["loss"] for m in metrics if m["epoch"] == e] for e in range(4)]
    assert sum(per_epoch[-1]) / len(per_epoch[-1]) < 0.7 * sum(per_epoch[0]) / len(per_epoch[0])
    assert after >= before + 0.25, (before, after)


@torch.no_grad()
def _multiple_choice_accuracy(tower, world: dict) -> float:
    """VQA-style: for each image, the question+answer text (6 candidates) most similar to it."""
    tower.eval()
    candidates = world["tokenizer"]([f"what colour is it? {colour}" for colour in COLOURS])
    text = F.normalize(tower(candidates), dim=-1)
    return float(((world["images"] @ text.T).argmax(1) == world["classes"]).float().mean())


def test_draft_lifts_question_answer_accuracy_and_mmd_falls(world: dict, tmp_path: Path) -> None:
    tower = copy_text_tower(world["model"])  # the untrained model's text tower
    before = _multiple_choice_accuracy(tower, world)
    rows = [
        {"image_emb": world["images"][i], "caption_tokens": world["captions"][i],
         "dialogue_tokens": world["dialogue"][i]}
        for i in range(len(world["classes"]))
    ]  # fmt: skip
    groups = list(range(len(rows)))  # one sample per image here
    objective = DraftObjective(tower, LOGIT_SCALE, DraftLoss())
    metrics = _fit(objective, rows, unique_image_batches(groups, 12, 0), tmp_path, 4, 3e-4)
    after = _multiple_choice_accuracy(tower, world)
    assert after >= before + 0.25, (before, after)
    mmd = [[m["mmd"] for m in metrics if m["epoch"] == e] for e in range(4)]
    assert sum(mmd[-1]) / len(mmd[-1]) < sum(mmd[0]) / len(mmd[0])
