"""open_clip loading (tiny random checkpoints, QuickGELU choice) and text-encoder variants."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dialogclip.core.config import ConfigError
from dialogclip.models.naming import image_model_key, is_checkpoint_path
from dialogclip.models.openclip import (
    ClipSpec,
    checkpoint_quickgelu,
    load_clip,
    make_tiny_clip,
    resolve_quickgelu,
)
from dialogclip.models.text_encoders import (
    EmbeddingBlend,
    TowerTextEncoder,
    blend_state_dicts,
    blend_weights,
)

TEXTS = ["a dog on a sofa", "two red cars", "a bowl of fruit", "a dog on a sofa", ""]


@pytest.fixture(scope="module")
def tiny_clips(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("clip")
    return [
        load_clip(
            ClipSpec("tiny-clip", str(make_tiny_clip(folder / f"seed{seed}.safetensors", seed)))
        )
        for seed in (0, 1)
    ]


def _encoder(clip):
    return TowerTextEncoder(clip.model, clip.tokenizer, batch_size=2)


def test_checkpoint_round_trip_is_exact_and_seeded(tmp_path: Path, tiny_clips) -> None:
    again = load_clip(ClipSpec("tiny-clip", str(make_tiny_clip(tmp_path / "again.safetensors", 0))))
    first, second = (_encoder(c).encode(TEXTS) for c in (tiny_clips[0], again))
    assert torch.equal(first, second)
    assert not torch.allclose(first, _encoder(tiny_clips[1]).encode(TEXTS))


def test_text_embeddings_are_unit_vectors_independent_of_batching(tiny_clips) -> None:
    clip = tiny_clips[0]
    batched = TowerTextEncoder(clip.model, clip.tokenizer, batch_size=2).encode(TEXTS)
    whole = TowerTextEncoder(clip.model, clip.tokenizer, batch_size=100).encode(TEXTS)
    assert batched.shape == (len(TEXTS), 32)
    assert torch.allclose(batched.norm(dim=-1), torch.ones(len(TEXTS)))
    assert torch.allclose(batched, whole, atol=1e-6)


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.safetensors"):
        load_clip(ClipSpec("tiny-clip", str(tmp_path / "absent.safetensors")))


@pytest.mark.parametrize(
    ("architecture", "pretrained", "setting", "expected"),
    [
        ("ViT-B-32", "laion400m_e32", "auto", True),  # trained with QuickGELU
        ("ViT-B-32", "openai", "auto", True),
        ("ViT-B-32", "laion2b_s34b_b79k", "auto", False),
        ("ViT-B-32", "laion400m_e32", False, False),  # the thesis' mismatched set-up
        ("ViT-B-32", "laion2b_s34b_b79k", True, True),  # forced
        ("ViT-B-32-quickgelu", "laion400m_e32", "auto", True),  # the architecture sets it
        ("tiny-clip", "x/tiny.safetensors", "auto", False),  # no record: GELU
    ],
)
def test_quickgelu_resolution(architecture, pretrained, setting, expected) -> None:
    assert resolve_quickgelu(ClipSpec(architecture, pretrained, setting)) is expected


def test_quickgelu_architectures_cannot_be_switched_to_gelu() -> None:
    with pytest.raises(ConfigError, match="always uses QuickGELU"):
        resolve_quickgelu(ClipSpec("ViT-B-32-quickgelu", "laion400m_e32", False))


def test_a_checkpoint_records_its_activation(tmp_path: Path, tiny_clips) -> None:
    state = {k: v.contiguous() for k, v in tiny_clips[0].model.state_dict().items()}
    save_file(state, str(tmp_path / "qg.safetensors"), metadata={"quick_gelu": "true"})
    spec = ClipSpec("tiny-clip", str(tmp_path / "qg.safetensors"))
    assert checkpoint_quickgelu(spec.pretrained) is True and resolve_quickgelu(spec) is True
    clip = load_clip(spec)
    assert clip.quickgelu and clip.open_clip_name == "tiny-clip-quickgelu"
    # The activation really changes the model: same weights, different text embeddings.
    assert not torch.allclose(_encoder(clip).encode(TEXTS), _encoder(tiny_clips[0]).encode(TEXTS))
    assert tiny_clips[0].open_clip_name == "tiny-clip"


def test_pretrained_is_required() -> None:
    with pytest.raises(ConfigError, match="pretrained"):
        load_clip(ClipSpec("tiny-clip", None))


class _Fixed:
    def __init__(self, table: torch.Tensor) -> None:
        self.table = table

    def encode(self, texts):
        return self.table[: len(texts)]


def test_embedding_blend_matches_the_formula_on_seeded_tensors() -> None:
    gen = torch.Generator().manual_seed(0)
    t = F.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    g = F.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    texts = ["x"] * 6
    for beta in (0.0, 0.6, 0.9, 0.95, 1.0):
        got = EmbeddingBlend(_Fixed(t), _Fixed(g), beta).encode(texts)
        expected = torch.stack(
            [
                (beta * t[i] + (1 - beta) * g[i]) / (beta * t[i] + (1 - beta) * g[i]).norm()
                for i in range(6)
            ]
        )
        assert torch.allclose(got, expected, atol=1e-6), beta
    with pytest.raises(ValueError, match="beta"):
        EmbeddingBlend(_Fixed(t), _Fixed(g), 1.5)


def test_embedding_blend_of_real_towers(tiny_clips) -> None:
    plain, third = (_encoder(c) for c in tiny_clips)
    assert torch.equal(EmbeddingBlend(plain, third, 1.0).encode(TEXTS), plain.encode(TEXTS))
    assert torch.equal(EmbeddingBlend(plain, third, 0.0).encode(TEXTS), third.encode(TEXTS))


def test_weight_blend_interpolates_every_parameter(tiny_clips) -> None:
    original, finetuned = (c.model for c in tiny_clips)
    state = finetuned.state_dict()
    blended = blend_weights(original, state, 0.9).state_dict()
    for name, weight in original.state_dict().items():
        if weight.is_floating_point():
            assert torch.allclose(blended[name], 0.9 * weight + 0.1 * state[name]), name
    # beta = 1 reproduces the original tower exactly; beta = 0 the fine-tuned one.
    tokenizer = tiny_clips[0].tokenizer
    same = TowerTextEncoder(blend_weights(original, state, 1.0), tokenizer).encode(TEXTS)
    assert torch.equal(same, TowerTextEncoder(original, tokenizer).encode(TEXTS))
    tuned = TowerTextEncoder(blend_weights(original, state, 0.0), tokenizer).encode(TEXTS)
    assert torch.allclose(tuned, TowerTextEncoder(finetuned, tokenizer).encode(TEXTS), atol=1e-6)


def test_weight_blend_refuses_different_architectures(tiny_clips) -> None:
    state = dict(tiny_clips[0].model.state_dict())
    state.pop("logit_scale")
    with pytest.raises(ValueError, match="logit_scale"):
        blend_state_dicts(tiny_clips[0].model.state_dict(), state, 0.5)


@pytest.mark.parametrize(
    ("pretrained", "is_path"),
    [
        ("laion400m_e32", False),
        ("openai", False),
        ("results/train/g.safetensors", True),
        ("model.pt", True),
        ("/abs/ckpt.bin", True),
    ],
)
def test_checkpoint_paths_are_told_from_tags(pretrained: str, is_path: bool) -> None:
    assert is_checkpoint_path(pretrained) is is_path


def test_image_model_keys_name_the_image_tower_only() -> None:
    assert image_model_key("ViT-B-32", "laion400m_e32") == "ViT-B-32__laion400m_e32__auto"
    assert image_model_key("ViT-B-32", "laion400m_e32", False).endswith("__gelu")
    first, second = (image_model_key("tiny-clip", f"{d}/tiny.safetensors") for d in ("a", "b"))
    assert first != second and first.startswith("tiny-clip__tiny-")
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", image_model_key("hf-hub:org/m", "x y/z.pt"))
