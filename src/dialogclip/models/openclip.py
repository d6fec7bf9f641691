"""Loading OpenCLIP models by architecture + pretrained tag or checkpoint path.

QuickGELU: OpenAI's and LAION-400M's ViT-B-32 weights were trained with QuickGELU activations,
but open_clip also lists those tags under the plain ``ViT-B-32`` architecture (GELU), and
loading them there silently costs about a point of COCO R@1. ``quickgelu: auto`` therefore turns
QuickGELU on whenever open_clip lists the tag under ``<architecture>-quickgelu``;
``quickgelu: false`` reproduces the mismatched set-up (the thesis' likely setting). The value
used is returned with the model so every result can record it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from dialogclip.core.io import atomic_path

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
QuickGelu = bool | Literal["auto"]


@dataclass(frozen=True)
class ClipSpec:
    """Which OpenCLIP model to load."""

    architecture: str  # open_clip model name, e.g. "ViT-B-32" or our "tiny-clip"
    pretrained: str | None = None  # a pretrained tag (e.g. "laion400m_e32") or a checkpoint path
    quickgelu: QuickGelu = "auto"  # "auto": on iff the weights were trained with QuickGELU


@dataclass
class LoadedClip:
    """A loaded model with its image preprocessing, tokenizer and the QuickGELU setting used."""

    model: Any  # open_clip.CLIP
    preprocess: Any  # PIL image -> tensor [3, H, W]
    tokenizer: Any  # list[str] -> LongTensor [N, context_length]
    quickgelu: bool


def register_model_configs() -> None:
    """Make our model configs (e.g. ``tiny-clip``) loadable by name through open_clip."""
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)


def trained_with_quickgelu(architecture: str, pretrained: str | None) -> bool:
    """True if open_clip lists ``pretrained`` under ``<architecture>-quickgelu``."""
    import open_clip

    if pretrained is None or architecture.endswith("-quickgelu"):
        return False
    return (f"{architecture}-quickgelu", pretrained) in set(open_clip.list_pretrained())


def resolve_quickgelu(spec: ClipSpec) -> bool:
    """The QuickGELU setting to load ``spec`` with (see the module docstring)."""
    if spec.quickgelu == "auto":
        return trained_with_quickgelu(spec.architecture, spec.pretrained)
    return bool(spec.quickgelu)


def load_clip(spec: ClipSpec, device: str | torch.device = "cpu") -> LoadedClip:
    """Build ``spec`` in eval mode on ``device``; checkpoints load with ``weights_only=True``."""
    import open_clip

    register_model_configs()
    pretrained = spec.pretrained
    if pretrained is not None and _looks_like_path(pretrained) and not Path(pretrained).is_file():
        raise FileNotFoundError(f"CLIP checkpoint not found: {spec.pretrained}")
    quickgelu = resolve_quickgelu(spec)
    model, _, preprocess = open_clip.create_model_and_transforms(
        spec.architecture,
        pretrained=spec.pretrained,
        force_quick_gelu=quickgelu,
        device=device,
    )
    model.eval()
    log.info(
        "loaded %s (pretrained=%s, quickgelu=%s)", spec.architecture, spec.pretrained, quickgelu
    )
    return LoadedClip(model, preprocess, open_clip.get_tokenizer(spec.architecture), quickgelu)


def _looks_like_path(pretrained: str) -> bool:
    return Path(pretrained).suffix in {".safetensors", ".pt", ".pth", ".bin"} or "/" in pretrained


def make_tiny_clip(output: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised ``tiny-clip`` model (seeded) as a safetensors checkpoint."""
    import open_clip
    from safetensors.torch import save_file

    register_model_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model("tiny-clip", pretrained=None)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(output) as tmp:
        save_file(state, str(tmp))
    return Path(output)
