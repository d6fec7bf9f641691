"""The evaluation jobs build each configured text variant from the composable pieces."""

import pytest
import torch

from dialogclip.core.config import ConfigError
from dialogclip.evaluate.jobs import build_text_encoder
from dialogclip.evaluate.settings import job_from_params
from dialogclip.models.openclip import ClipSpec, load_clip, make_tiny_clip
from dialogclip.models.text_encoders import EmbeddingBlend, TowerTextEncoder, blend_weights

TEXTS = ["a red square", "two blue circles", "a dog"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("variants")
    return [str(make_tiny_clip(folder / f"s{seed}.safetensors", seed)) for seed in (0, 1)]


def _job(checkpoints, **variant):
    model = {"name": "m", "architecture": "tiny-clip", "pretrained": checkpoints[0], **variant}
    files = {"annotations": "a.json", "images": "img"}
    return job_from_params({"model": model, "dataset": "coco", "files": files})


@pytest.mark.parametrize("variant", ["plain", "embedding_blend", "weight_blend"])
def test_each_variant_equals_its_definition(checkpoints, variant) -> None:
    job = _job(checkpoints, text_variant=variant, other=checkpoints[1], beta=0.9)
    original = load_clip(ClipSpec("tiny-clip", checkpoints[0]))
    other = load_clip(ClipSpec("tiny-clip", checkpoints[1]))
    got = build_text_encoder(job, original).encode(TEXTS)
    plain, second = (TowerTextEncoder(c.model, c.tokenizer) for c in (original, other))
    expected = {
        "plain": plain,
        "embedding_blend": EmbeddingBlend(plain, second, 0.9),
        "weight_blend": TowerTextEncoder(
            blend_weights(original.model, other.model.state_dict(), 0.9), original.tokenizer
        ),
    }[variant].encode(TEXTS)
    assert torch.allclose(got, expected, atol=1e-6)
    if variant != "plain":
        assert not torch.allclose(got, plain.encode(TEXTS), atol=1e-4)


def test_a_blend_without_its_second_model_is_a_config_error(checkpoints) -> None:
    with pytest.raises(ConfigError, match="needs `other`"):
        _job(checkpoints, text_variant="weight_blend")
    with pytest.raises(ConfigError, match="text_variant must be one of"):
        _job(checkpoints, text_variant="average")
