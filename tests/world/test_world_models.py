"""The committed world models (resources/demo/world_models, written by `dialogclip world
build-models`): small enough for git, trained on the demo config's prompts, grounded on held-out
scenes; and (slow) a rebuild behaves as the committed build did."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from dialogclip.world.build import (
    BUILD_FILE,
    CLIP_FILE,
    HELD_OUT_SPLIT,
    behaviour,
    blip2_replies,
    build_models,
    compare_behaviour,
    prompts_from_config,
    score_blip2,
    settings_from_params,
)
from dialogclip.world.scenes import draw_scenes
from dialogclip.world.vlms import VlmPrompts

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "resources/demo/world_models"
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
DEMO_CONFIG = ROOT / "resources/demo/config.yaml"
# Targets of issue 17 (point 3) for the dialogue models.
GROUNDED, PARSED = 0.80, 0.90
# A rebuild on another CPU differs in float arithmetic, so it is held to the committed
# behaviour within this many points of each rate, not to the committed bytes.
REBUILD_TOLERANCE = 0.03


pytestmark = pytest.mark.usefixtures("one_thread")


def _build() -> dict:
    return json.loads((MODELS / BUILD_FILE).read_text())


def _prompts() -> VlmPrompts:
    """The demo's prompts, as the models are built on them (LLaVA in free text: the demo's
    default, which prompts_from_config requires)."""
    return prompts_from_config(DEMO_CONFIG, SCHEMA)


def test_the_committed_models_are_small_and_trained_on_the_demo_prompts() -> None:
    files = [path for path in MODELS.rglob("*") if path.is_file()]
    assert {CLIP_FILE, BUILD_FILE} <= {path.name for path in files}
    assert all(path.stat().st_size < 1_000_000 for path in files), [
        (path.name, path.stat().st_size) for path in files if path.stat().st_size >= 1_000_000
    ]
    assert sum(path.stat().st_size for path in files) < 6_000_000
    for name in ("blip2", "llava"):
        assert len(list((MODELS / name).glob("model-*.safetensors"))) > 1, name
    # If the demo's prompts change, the models must be rebuilt (the command in docs/world.md).
    assert json.loads(json.dumps(asdict(_prompts()))) == _build()["prompts"]


def test_the_committed_models_answer_grounded_on_held_out_scenes() -> None:
    """Greedy replies to the demo's prompts on 100 scenes no model trained on, scored against
    the scene records: the targets hold, and the CLIP retrieves far above chance (1 %)."""
    seen = behaviour(MODELS, _prompts(), _build()["world_seed"], 100)
    assert seen["blip2"]["grounding"]["rate"] >= GROUNDED, seen["blip2"]
    assert seen["llava"]["grounding"]["rate"] >= GROUNDED, seen["llava"]
    assert seen["llava"]["three_pairs_rate"] >= PARSED, seen["llava"]
    assert seen["clip"]["r1_complete"] > 0.1, seen["clip"]
    # The replies are about their own scene: shifted by one scene, BLIP-2's fall far below.
    scenes = draw_scenes(_build()["world_seed"], HELD_OUT_SPLIT, 40)
    answers = blip2_replies(MODELS / "blip2", _prompts(), scenes)
    shifted = score_blip2(answers[1:] + answers[:1], scenes)["grounding"]["rate"]
    assert shifted < seen["blip2"]["grounding"]["rate"] - 0.15, shifted


@pytest.mark.slow
def test_a_rebuild_behaves_as_the_committed_models(tmp_path: Path) -> None:
    """`dialogclip world build-models` with the committed settings (about 15 min of one core)
    gives the committed behaviour rate by rate (compare_behaviour)."""
    committed = _build()
    rebuilt = build_models(
        tmp_path / "models",
        _prompts(),
        settings_from_params(committed["settings"]),
        committed["world_seed"],
    )
    assert compare_behaviour(committed["behaviour"], rebuilt["behaviour"], REBUILD_TOLERANCE) == []
