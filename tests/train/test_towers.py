"""Text towers of open_clip models as modules: copies, trainable parts, saved state."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from train_helpers import build_tiny_hf_clip

from dialogclip.cli import main
from dialogclip.models.openclip import ClipSpec, is_text_tower_key, load_clip, load_text_tower
from dialogclip.models.towers import TextTower, copy_text_tower, set_trainable, text_tower_state
from dialogclip.train.objectives import (
    DraftLoss,
    DraftObjective,
    ThirdTowerLoss,
    ThirdTowerObjective,
)

BLOCK_SUFFIXES_CLIP = [
    "ln_1.weight",
    "ln_1.bias",
    "attn.in_proj_weight",
    "attn.in_proj_bias",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
]
BLOCK_SUFFIXES_HF = [
    "attention.self.query.weight",
    "attention.self.query.bias",
    "attention.self.key.weight",
    "attention.self.key.bias",
    "attention.self.value.weight",
    "attention.self.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
]


@pytest.fixture(scope="module", params=["clip", "roberta", "bert"])
def model_and_tokens(request, tiny_clip, tmp_path_factory):
    """(model, tokens [3, L]) for the native CLIP text tower and two HF text towers."""
    if request.param == "clip":
        tokens = tiny_clip.tokenizer(["a dog on a sofa", "two red cars", ""])
        return request.param, tiny_clip.model, tokens
    model = build_tiny_hf_clip(tmp_path_factory.mktemp("hf"), request.param)
    tokens = torch.randint(2, 99, (3, 12), generator=torch.Generator().manual_seed(0))
    tokens[0, 8:] = 1  # padding: the HF tower masks it
    return request.param, model, tokens


def _perturb(tower: torch.nn.Module, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in tower.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def test_copy_gives_the_models_text_features(model_and_tokens) -> None:
    _, model, tokens = model_and_tokens
    tower = copy_text_tower(model)
    with torch.no_grad():
        expected = model.encode_text(tokens, normalize=False)
        assert torch.equal(tower(tokens), expected)
    assert expected.shape == (3, 32 if model_and_tokens[0] == "clip" else 16)


def test_copy_is_independent_of_the_original(model_and_tokens) -> None:
    _, model, tokens = model_and_tokens
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    tower = copy_text_tower(model)
    set_trainable(tower, 1)
    _perturb(tower)
    with torch.no_grad():
        assert not torch.allclose(tower(tokens), model.encode_text(tokens))
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    # Only the copy is independent: a TextTower built directly holds the model's parameters.
    own = {id(p) for p in model.parameters()}
    assert {id(p) for p in TextTower(model).parameters()} <= own
    assert not {id(p) for p in tower.parameters()} & own


def _expected_trainable(kind: str, last_k: int, n_blocks: int) -> list[str]:
    kept = range(n_blocks - last_k, n_blocks)
    if kind == "clip":
        return [
            "text_projection",
            *(f"transformer.resblocks.{i}.{s}" for i in kept for s in BLOCK_SUFFIXES_CLIP),
            "ln_final.weight",
            "ln_final.bias",
        ]
    names = [f"text.transformer.encoder.layer.{i}.{s}" for i in kept for s in BLOCK_SUFFIXES_HF]
    if kind == "bert":  # the [CLS] pooler runs after the blocks
        names += ["text.transformer.pooler.dense.weight", "text.transformer.pooler.dense.bias"]
    return [*names, "text.proj.weight"]


@pytest.mark.parametrize("last_k", [0, 1, 2])
def test_set_trainable_keeps_the_last_blocks_norm_and_projection(model_and_tokens, last_k) -> None:
    kind, model, _ = model_and_tokens
    tower = copy_text_tower(model)
    n_blocks = 2 if kind == "clip" else 3
    names = set_trainable(tower, last_k)
    assert names == _expected_trainable(kind, last_k, n_blocks)
    assert names == [name for name, p in tower.named_parameters() if p.requires_grad]
    # The embeddings never train with last_k set.
    assert not any("embedding" in name for name in names)
    assert all(p.requires_grad for p in model.parameters())


def test_set_trainable_all_and_out_of_range(model_and_tokens) -> None:
    kind, model, _ = model_and_tokens
    tower = copy_text_tower(model)
    set_trainable(tower, 1)
    names = set_trainable(tower, None)
    assert names == [name for name, _ in tower.named_parameters()]
    assert all(p.requires_grad for p in tower.parameters())
    n_blocks = 2 if kind == "clip" else 3
    with pytest.raises(
        ValueError, match=rf"last_k must be in \[0, {n_blocks}\].*got {n_blocks + 1}"
    ):
        set_trainable(tower, n_blocks + 1)


def test_saved_state_loads_through_the_evaluation_loader(model_and_tokens, tmp_path) -> None:
    _, model, tokens = model_and_tokens
    tower = copy_text_tower(model)
    _perturb(tower)  # a trained G differs from the original tower
    state = text_tower_state(tower)
    # Exactly the text-tower entries of the full model, under open_clip's names.
    assert sorted(state) == sorted(name for name in model.state_dict() if is_text_tower_key(name))
    path = tmp_path / "tower.safetensors"
    save_file(state, str(path))
    loaded = load_text_tower(model, path)
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(tokens), tower(tokens))
        assert not torch.allclose(model.encode_text(tokens), tower(tokens))
    # The state is a copy: changing the tower afterwards does not change it.
    _perturb(tower, seed=2)
    assert torch.equal(state[next(iter(state))], text_tower_state(loaded)[next(iter(state))])


def test_tiny_clip_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "tiny-clip-3.safetensors"
    assert main(["make-tiny-clip", "--output", str(path), "--seed", "3"]) == 0
    clip = load_clip(ClipSpec("tiny-clip", str(path)))
    tower = copy_text_tower(clip.model)
    tokens = clip.tokenizer(["a photo of a cat"])
    with torch.no_grad():
        assert torch.equal(tower(tokens), clip.model.encode_text(tokens))
    assert tower.kind == "clip" and len(tower.blocks()) == 2


def test_a_model_without_text_tower_is_refused() -> None:
    with pytest.raises(TypeError, match="Linear has no open_clip text tower"):
        TextTower(torch.nn.Linear(2, 2))


def test_draft_gradient_reaches_only_the_text_tower(tiny_clip) -> None:
    """DRAFT trains T alone: with I(x) from the frozen image tower (as its cache holds it), the
    loss reaches every parameter of T (the MMD term on its own as well) and none of the image
    tower's."""
    model = tiny_clip.model
    images = torch.randn(4, 3, *model.visual.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # what embed_train_images stores
        image_emb = model.encode_image(images)
    batch = {
        "image_emb": image_emb,
        "caption_tokens": tiny_clip.tokenizer(["a dog", "two cars", "a red kite", "snow"]),
        "dialogue_tokens": tiny_clip.tokenizer(
            ["what is it? a dog", "how many? two", "what colour? red", "where? a hill"]
        ),
    }
    grads = {}
    for mmd_weight in (1.0, 0.0):
        tower = copy_text_tower(model)
        objective = DraftObjective(tower, 100.0, DraftLoss(mmd_weight=mmd_weight))
        loss, _ = objective.loss(batch, lambda features: features)
        loss.backward()
        grads[mmd_weight] = {name: p.grad for name, p in tower.named_parameters()}
    assert all(grad is not None for grad in grads[1.0].values())
    assert any(grad.abs().sum() > 0 for grad in grads[1.0].values())
    assert all(p.grad is None for p in model.visual.parameters())
    # The MMD term adds its own gradient to T's weights.
    changed = [n for n in grads[1.0] if not torch.allclose(grads[1.0][n], grads[0.0][n])]
    assert "transformer.resblocks.0.attn.in_proj_weight" in changed


@pytest.mark.parametrize("objective_class", [DraftObjective, ThirdTowerObjective])
def test_trainable_temperature_trains_from_the_pretrained_scale(tiny_clip, objective_class) -> None:
    """loss.temperature: trainable optimises a log logit scale starting at the model's (logged
    as a part, not exported); frozen keeps the float and adds no parameter."""
    model = tiny_clip.model
    generator = torch.Generator().manual_seed(3)
    dim = model.text_projection.shape[1]
    texts = tiny_clip.tokenizer(["a dog", "two cars", "a red kite", "snow"])
    batch = {
        "image_emb": torch.randn(4, dim, generator=generator),
        "caption_emb": torch.randn(4, dim, generator=generator),
        "caption_tokens": texts,
        "dialogue_tokens": tiny_clip.tokenizer(["dog?", "cars?", "kite?", "snow?"]),
    }
    loss_class = DraftLoss if objective_class is DraftObjective else ThirdTowerLoss
    frozen = objective_class(copy_text_tower(model), 20.0, loss_class())
    _, parts = frozen.loss(batch, lambda features: features)
    assert frozen.module is frozen.tower and "logit_scale" not in parts
    trained = objective_class(copy_text_tower(model), 20.0, loss_class(temperature="trainable"))
    scale = dict(trained.module.named_parameters())["log_logit_scale"]
    assert float(scale.detach()) == pytest.approx(math.log(20.0))
    loss, parts = trained.loss(batch, lambda features: features)
    assert parts["logit_scale"] == pytest.approx(20.0)
    # The same loss value as the frozen objective's at the start: one temperature, two forms.
    assert float(loss.detach()) == pytest.approx(
        float(frozen.loss(batch, lambda f: f)[0].detach()), rel=1e-6
    )
    loss.backward()
    assert scale.grad is not None and float(scale.grad) != 0
    assert "log_logit_scale" not in trained.export_state()
    assert set(trained.export_state()) == set(frozen.export_state())
