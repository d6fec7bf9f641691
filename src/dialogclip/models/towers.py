"""The text tower of an open_clip model as a module of its own: the third tower G, DRAFT's tower.

Two kinds of open_clip models carry a text tower:

- ``open_clip.CLIP`` (ViT-B-32, ViT-L-14, ViT-H-14, ``tiny-clip``): the text transformer's parts
  sit on the model itself (``token_embedding``, ``positional_embedding``, ``transformer``,
  ``ln_final``, ``text_projection``, the causal ``attn_mask``);
- ``open_clip.CustomTextCLIP``: the tower is the submodule ``model.text``, either open_clip's
  own ``TextTransformer`` or an ``HFTextEncoder`` wrapping a Hugging Face encoder (RoBERTa,
  XLM-R, mT5, BERT).

:class:`TextTower` holds exactly those parts under the same attribute names, so its
``state_dict()`` uses open_clip's names and a saved tower loads back into a full model with
``dialogclip.models.openclip.load_text_tower`` (the evaluation's ``other`` checkpoint). Its
forward is the model's ``encode_text(tokens, normalize=False)``: for ``CLIP`` we call open_clip's
own ``CLIP.encode_text`` on the tower (it reads only the attributes copied here), so the tower
follows the installed open_clip version exactly instead of re-implementing it.

:func:`set_trainable` chooses what trains: everything, or the last ``k`` transformer blocks plus
what comes after them (the final norm, the pooler of an HF model that has one, the projection);
the thesis trains all of G for ViT-B-32 and the last 2-3 blocks for ViT-L-14 / ViT-H-14.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

# Attributes of open_clip.CLIP that make up its text tower (state-dict names = these names).
CLIP_TEXT_MODULES = ("token_embedding", "transformer", "ln_final")
CLIP_TEXT_PARAMETERS = ("positional_embedding",)
CLIP_TEXT_ATTRIBUTES = ("context_length", "vocab_size", "text_pool_type", "text_eos_id")
# Final norms that some Hugging Face encoders put after their blocks (T5/mT5: final_layer_norm).
HF_FINAL_NORMS = ("final_layer_norm", "layer_norm", "ln_f", "norm")


class TextTower(nn.Module):
    """The text tower of a loaded open_clip model, sharing its parameters.

    ``forward(tokens [N, L] long) -> [N, D]`` unnormalised features, equal to
    ``model.encode_text(tokens, normalize=False)``. Use :func:`copy_text_tower` for an
    independent copy (the third tower G); constructing a ``TextTower`` directly shares the
    model's parameters (training it would change the model).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        text = getattr(model, "text", None)
        if isinstance(text, nn.Module):  # CustomTextCLIP: native TextTransformer or HFTextEncoder
            self.kind = "hf" if _is_hf_encoder(text) else "custom"
            self.text = text
            return
        missing = [
            name for name in (*CLIP_TEXT_MODULES, "text_projection") if not hasattr(model, name)
        ]
        if missing:
            raise TypeError(
                f"{type(model).__name__} has no open_clip text tower (missing {missing}); "
                "expected an open_clip CLIP or CustomTextCLIP"
            )
        self.kind = "clip"
        for name in CLIP_TEXT_MODULES:
            setattr(self, name, getattr(model, name))
        for name in CLIP_TEXT_PARAMETERS:
            setattr(self, name, getattr(model, name))
        # nn.Linear (proj_type linear), a Parameter [width, D], or None: assigned as is.
        self.text_projection = model.text_projection
        for name in CLIP_TEXT_ATTRIBUTES:
            setattr(self, name, getattr(model, name, None))
        # Non-persistent, as on CLIP: the causal mask is rebuilt, never saved.
        self.register_buffer("attn_mask", getattr(model, "attn_mask", None), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, L] -> features [N, D] (not normalised)."""
        if self.kind == "clip":
            from open_clip.model import CLIP

            # open_clip's own code on our attributes: identical to model.encode_text.
            return CLIP.encode_text(self, tokens, normalize=False)
        return self.text(tokens)

    def blocks(self) -> nn.ModuleList:
        """The tower's transformer blocks, first to last."""
        if self.kind == "clip":
            return self.transformer.resblocks
        if self.kind == "custom":
            return self.text.transformer.resblocks
        encoder = _hf_encoder(self.text)
        layer_attr = _hf_arch(self.text)["config_names"].get("layer_attr", "layer")
        return getattr(encoder, layer_attr)

    def head(self) -> dict[str, nn.Module | nn.Parameter]:
        """What comes after the blocks, by state-dict prefix: final norm, pooler, projection."""
        parts: dict[str, Any] = {}
        if self.kind == "clip":
            parts["ln_final"] = self.ln_final
            parts["text_projection"] = self.text_projection
        elif self.kind == "custom":
            parts["text.ln_final"] = self.text.ln_final
            parts["text.text_projection"] = self.text.text_projection
        else:
            encoder = _hf_encoder(self.text)
            prefix = "text.transformer" + (
                ".encoder" if encoder is not self.text.transformer else ""
            )
            for name in HF_FINAL_NORMS:
                if isinstance(getattr(encoder, name, None), nn.Module):
                    parts[f"{prefix}.{name}"] = getattr(encoder, name)
            # BERT-style pooler (dense + tanh over [CLS]) runs after the blocks: part of the head.
            if isinstance(getattr(self.text.transformer, "pooler", None), nn.Module):
                parts["text.transformer.pooler"] = self.text.transformer.pooler
            parts["text.proj"] = self.text.proj
        return {name: part for name, part in parts.items() if part is not None}


def _is_hf_encoder(text: nn.Module) -> bool:
    from open_clip.hf_model import HFTextEncoder

    return isinstance(text, HFTextEncoder)


def _hf_arch(text: nn.Module) -> dict[str, Any]:
    from open_clip.hf_configs import arch_dict

    model_type = text.config.model_type
    if model_type not in arch_dict:
        raise ValueError(f"HF text tower of type {model_type!r} is not in open_clip's arch_dict")
    return arch_dict[model_type]


def _hf_encoder(text: nn.Module) -> nn.Module:
    # BERT/RoBERTa keep their blocks in transformer.encoder; a T5 encoder stack holds them itself.
    return getattr(text.transformer, "encoder", text.transformer)


def copy_text_tower(model: nn.Module) -> TextTower:
    """An independent copy of ``model``'s text tower (the image tower is not copied).

    Returns the tower in ``model``'s train/eval mode with every parameter trainable; the
    original model is left as it was.
    """
    shared = TextTower(model)
    tower = copy.deepcopy(shared)
    for parameter in tower.parameters():
        parameter.requires_grad_(True)
    return tower


def set_trainable(tower: TextTower, last_k: int | None) -> list[str]:
    """Make all of ``tower`` trainable (``last_k=None``), or only its last ``last_k`` blocks and
    its head (final norm, pooler if any, projection); everything else is frozen.

    Returns the names of the trainable parameters (open_clip state-dict names), in module order.
    """
    if last_k is None:
        for parameter in tower.parameters():
            parameter.requires_grad_(True)
        return [name for name, _ in tower.named_parameters()]
    blocks = tower.blocks()
    if not 0 <= last_k <= len(blocks):
        raise ValueError(f"last_k must be in [0, {len(blocks)}] for this tower, got {last_k}")
    for parameter in tower.parameters():
        parameter.requires_grad_(False)
    trainable: list[nn.Module | nn.Parameter] = [
        *list(blocks)[len(blocks) - last_k :],
        *tower.head().values(),
    ]
    for part in trainable:
        if isinstance(part, nn.Parameter):
            part.requires_grad_(True)
        else:
            for parameter in part.parameters():
                parameter.requires_grad_(True)
    return [name for name, parameter in tower.named_parameters() if parameter.requires_grad]


def text_tower_state(tower: TextTower) -> dict[str, torch.Tensor]:
    """The tower's weights under open_clip's names, detached CPU copies (contiguous, so
    ``safetensors.torch.save_file`` takes them); loadable with ``openclip.load_text_tower``."""
    return {
        name: tensor.detach().to("cpu", copy=True).contiguous()
        for name, tensor in tower.state_dict().items()
    }
