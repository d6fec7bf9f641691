"""The evaluation jobs build each configured text variant from the composable pieces, with the
second tower read from a full CLIP checkpoint or from a text-tower-only one (a third tower G)."""

import pytest
import torch
from safetensors.torch import save_file

from dialogclip.core.config import ConfigError
from dialogclip.evaluate.jobs import build_text_encoder
from dialogclip.evaluate.settings import job_from_params
from dialogclip.models.openclip import (
    ClipSpec,
    is_text_tower_key,
    load_clip,
    load_text_tower,
    make_tiny_clip,
)
from dialogclip.models.text_encoders import EmbeddingBlend, TowerTextEncoder, blend_weights

TEXTS = ["a red square", "two blue circles", "a dog", "a red square"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("variants")
    return [str(make_tiny_clip(folder / f"s{seed}.safetensors", seed)) for seed in (0, 1)]


@pytest.fixture(scope="module")
def text_only_checkpoint(tmp_path_factory, checkpoints):
    """Seed 1's text tower alone, as a training stage would save a third tower G."""
    state = load_clip(ClipSpec("tiny-clip", checkpoints[1])).model.state_dict()
    path = tmp_path_factory.mktemp("g") / "third_tower.safetensors"
    save_file({k: v.contiguous() for k, v in state.items() if is_text_tower_key(k)}, str(path))
    return str(path)


def _job(checkpoints, **variant):
    model = {"name": "m", "architecture": "tiny-clip", "pretrained": checkpoints[0], **variant}
    files = {"annotations": "a.json", "images": "img"}
    return job_from_params({"model": model, "dataset": "coco", "files": files})


@pytest.mark.parametrize("variant", ["plain", "embedding_blend", "weight_blend"])
def test_each_variant_equals_its_definition(checkpoints, variant) -> None:
    second = {} if variant == "plain" else {"other": checkpoints[1], "beta": 0.9}
    job = _job(checkpoints, text_variant=variant, **second)
    original = load_clip(ClipSpec("tiny-clip", checkpoints[0]))
    other = load_clip(ClipSpec("tiny-clip", checkpoints[1]))
    got = build_text_encoder(job, original).encode(TEXTS)
    plain, g = (TowerTextEncoder(c.model, c.tokenizer) for c in (original, other))
    expected = {
        "plain": plain,
        "embedding_blend": EmbeddingBlend(plain, g, 0.9),
        "weight_blend": TowerTextEncoder(
            blend_weights(original.model, other.model.state_dict(), 0.9), original.tokenizer
        ),
    }[variant].encode(TEXTS)
    assert torch.allclose(got, expected, atol=1e-6)
    if variant != "plain":
        assert not torch.allclose(got, plain.encode(TEXTS), atol=1e-4)


@pytest.mark.parametrize("variant", ["embedding_blend", "weight_blend"])
def test_a_text_tower_only_checkpoint_gives_the_same_variant(
    checkpoints, text_only_checkpoint, variant
) -> None:
    original = load_clip(ClipSpec("tiny-clip", checkpoints[0]))
    full, text_only = (
        build_text_encoder(_job(checkpoints, text_variant=variant, other=path, beta=0.6), original)
        for path in (checkpoints[1], text_only_checkpoint)
    )
    assert torch.equal(full.encode(TEXTS), text_only.encode(TEXTS))


@pytest.mark.parametrize("variant", ["embedding_blend", "weight_blend"])
def test_beta_one_reproduces_the_plain_tower(checkpoints, variant) -> None:
    original = load_clip(ClipSpec("tiny-clip", checkpoints[0]))
    plain = build_text_encoder(_job(checkpoints), original).encode(TEXTS)
    job = _job(checkpoints, text_variant=variant, other=checkpoints[1], beta=1.0)
    assert torch.allclose(build_text_encoder(job, original).encode(TEXTS), plain, atol=1e-6)


def test_the_second_tower_keeps_the_original_image_tower(checkpoints) -> None:
    original = load_clip(ClipSpec("tiny-clip", checkpoints[0])).model
    second = load_clip(ClipSpec("tiny-clip", checkpoints[1])).model.state_dict()
    tower = load_text_tower(original, checkpoints[1])
    for name, weight in tower.state_dict().items():
        source = second if is_text_tower_key(name) else original.state_dict()
        assert torch.equal(weight, source[name]), name
    assert not torch.equal(tower.token_embedding.weight, original.token_embedding.weight)


def test_a_checkpoint_without_the_text_tower_is_refused(tmp_path, checkpoints) -> None:
    original = load_clip(ClipSpec("tiny-clip", checkpoints[0])).model
    visual = {k: v for k, v in original.state_dict().items() if k.startswith("visual.")}
    save_file(visual, str(tmp_path / "visual.safetensors"))
    with pytest.raises(ValueError, match="not a text tower"):
        load_text_tower(original, tmp_path / "visual.safetensors")
    with pytest.raises(FileNotFoundError, match="absent"):
        load_text_tower(original, tmp_path / "absent.safetensors")


def test_inconsistent_variants_are_config_errors(checkpoints) -> None:
    with pytest.raises(ConfigError, match="needs an explicit `other`"):
        _job(checkpoints, text_variant="weight_blend")
    with pytest.raises(ConfigError, match="only used by the blend"):
        _job(checkpoints, other=checkpoints[1])
    with pytest.raises(ConfigError, match="text_variant must be one of"):
        _job(checkpoints, text_variant="average")
    with pytest.raises(ConfigError, match="beta"):
        _job(checkpoints, text_variant="embedding_blend", other=checkpoints[1], beta=1.5)
    with pytest.raises(ConfigError, match="unknown datasets"):
        _job(checkpoints, datasets=["imagenet"])
