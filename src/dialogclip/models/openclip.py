"""Loading OpenCLIP models by architecture + pretrained tag or checkpoint path.

QuickGELU: OpenAI's and LAION-400M's ViT-B-32 weights were trained with QuickGELU activations,
but open_clip also lists those tags under the plain ``ViT-B-32`` architecture (GELU), and
loading them there silently costs about a point of COCO R@1. ``quickgelu: auto`` therefore turns
QuickGELU on whenever open_clip's record of the tag says the weights were trained with it (or,
for a ``.safetensors`` checkpoint, its metadata ``quick_gelu`` says so); ``quickgelu: false``
reproduces the mismatched set-up (the thesis' likely setting). The value used is returned with
the model so every result can record it.

Checkpoints are read with open_clip's own loader (safetensors, or ``torch.load`` with
``weights_only=True``).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dialogclip.core.config import ConfigError
from dialogclip.core.io import read_safetensors_metadata
from dialogclip.models.naming import QuickGelu, is_checkpoint_path

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
QUICKGELU_METADATA_KEY = "quick_gelu"  # in a .safetensors checkpoint's metadata: "true"/"false"
# State-dict entries that are not part of the text tower of an open_clip CLIP / CustomTextCLIP.
NON_TEXT_PREFIXES = ("visual.",)
NON_TEXT_KEYS = frozenset({"logit_scale", "logit_bias"})


@dataclass(frozen=True)
class ClipSpec:
    """Which OpenCLIP model to load."""

    architecture: str  # open_clip model name, e.g. "ViT-B-32" or our "tiny-clip"
    pretrained: str | None = None  # a pretrained tag (e.g. "laion400m_e32") or a checkpoint path
    quickgelu: QuickGelu = "auto"  # "auto": on iff the weights were trained with QuickGELU


@dataclass
class LoadedClip:
    """A loaded model with its image preprocessing, tokenizer and the activation used."""

    model: Any  # open_clip.CLIP, eval mode
    preprocess: Callable[[Any], torch.Tensor]  # PIL image -> [3, H, W]
    tokenizer: Callable[[Sequence[str]], torch.Tensor]  # N texts -> LongTensor [N, context]
    quickgelu: bool  # the activation the model actually uses
    model_name: str = ""  # the architecture as configured

    @property
    def open_clip_name(self) -> str:
        """The open_clip model name that loads the same model (``ViT-B-32-quickgelu``, ...)."""
        name = self.model_name
        if self.quickgelu and not name.endswith("-quickgelu"):
            return f"{name}-quickgelu"
        return name


def register_model_configs() -> None:
    """Make our model configs (e.g. ``tiny-clip``) loadable by name through open_clip."""
    import open_clip

    if "tiny-clip" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def architecture_uses_quickgelu(architecture: str) -> bool:
    """True if the architecture's own config sets QuickGELU (the ``-quickgelu`` variants)."""
    import open_clip

    register_model_configs()
    config = open_clip.get_model_config(architecture)
    if config is None:
        raise ConfigError(
            f"unknown open_clip architecture {architecture!r}; see open_clip.list_models()"
        )
    return bool(config.get("quick_gelu", False))


def trained_with_quickgelu(architecture: str, pretrained: str | None) -> bool:
    """True if the weights ``pretrained`` were trained with QuickGELU, as far as is recorded.

    Tags: open_clip's pretrained config (``quick_gelu``) or a listing under
    ``<architecture>-quickgelu``. Checkpoint paths: the ``quick_gelu`` metadata of a
    ``.safetensors`` file; without it, False (set ``quickgelu`` explicitly for such weights).
    """
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    if pretrained is None:
        return False
    if is_checkpoint_path(pretrained):
        return checkpoint_quickgelu(pretrained) is True
    if get_pretrained_cfg(architecture, pretrained).get("quick_gelu", False):
        return True
    return (f"{architecture}-quickgelu", pretrained) in set(open_clip.list_pretrained())


def checkpoint_quickgelu(path: str | Path) -> bool | None:
    """The ``quick_gelu`` record in a ``.safetensors`` checkpoint's metadata (None if absent)."""
    if Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return None
    value = read_safetensors_metadata(path, "CLIP checkpoint").get(QUICKGELU_METADATA_KEY)
    return None if value is None else value.lower() == "true"


def resolve_quickgelu(spec: ClipSpec) -> bool:
    """The QuickGELU setting ``spec`` loads with (see the module docstring)."""
    if architecture_uses_quickgelu(spec.architecture):
        if spec.quickgelu is False:
            raise ConfigError(
                f"{spec.architecture} always uses QuickGELU; for GELU use the architecture "
                f"without '-quickgelu' and quickgelu: false"
            )
        return True
    if spec.quickgelu == "auto":
        return trained_with_quickgelu(spec.architecture, spec.pretrained)
    return bool(spec.quickgelu)


def check_checkpoint(path: str | Path, what: str) -> None:
    """A missing checkpoint is a FileNotFoundError, a damaged ``.safetensors`` one (checked
    through its header, which must cover the file) a CorruptFileError, both naming the file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if Path(path).suffix == ".safetensors":
        read_safetensors_metadata(path, what)


def load_clip(
    spec: ClipSpec, device: str | torch.device = "cpu", weights_dir: str | Path | None = None
) -> LoadedClip:
    """Build ``spec`` in eval mode on ``device``; checkpoints load with ``weights_only=True``.

    With ``weights_dir``, a pretrained tag loads from the file ``dialogclip.models.weights``
    fetched there (with the tag's own preprocessing), never from a hub; a missing file is an
    error naming it and the command that fetches it.
    """
    import open_clip

    register_model_configs()
    if spec.pretrained is None:
        raise ConfigError(f"{spec.architecture}: `pretrained` (a tag or a checkpoint) is required")
    if is_checkpoint_path(spec.pretrained):
        check_checkpoint(spec.pretrained, "CLIP checkpoint")
    quickgelu = resolve_quickgelu(spec)
    source, tag_preprocess = spec.pretrained, {}
    if weights_dir is not None and not is_checkpoint_path(spec.pretrained):
        from dialogclip.models.weights import local_weights, tag_config

        source = str(local_weights(weights_dir, spec.architecture, spec.pretrained))
        # A file carries no preprocessing record: keep the tag's (mean, std, interpolation).
        tag = tag_config(spec.architecture, spec.pretrained)
        tag_preprocess = {
            f"image_{key}": tag[name]
            for key, name in (
                ("mean", "mean"),
                ("std", "std"),
                ("interpolation", "interpolation"),
                ("resize_mode", "resize_mode"),
            )
            if name in tag
        }
    model, _, preprocess = open_clip.create_model_and_transforms(
        spec.architecture,
        pretrained=source,
        force_quick_gelu=quickgelu,
        device=device,
        **tag_preprocess,
        weights_only=True,
    )
    model.eval()
    log.info(
        "loaded %s (pretrained=%s, quickgelu=%s)", spec.architecture, spec.pretrained, quickgelu
    )
    tokenizer = open_clip.get_tokenizer(spec.architecture)
    return LoadedClip(model, preprocess, tokenizer, quickgelu, model_name=spec.architecture)


def token_count_function(tokenizer: Any) -> Callable[[str], int]:
    """``text -> number of tokens`` an open_clip tokenizer makes of it before truncation, start
    and end tokens included (so a text fits the tower iff the count <= its context length)."""
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):
        # open_clip's SimpleTokenizer (CLIP's BPE): encode() cleans the text as __call__ does.
        return lambda text: len(tokenizer.encode(text)) + 2
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None:  # open_clip's HFTokenizer: the wrapped tokenizer adds its specials
        clean = getattr(tokenizer, "clean_fn", lambda text: text)
        return lambda text: len(inner(clean(text))["input_ids"])
    raise TypeError(f"cannot count tokens with {type(tokenizer).__name__}")


def is_text_tower_key(name: str) -> bool:
    """True for the state-dict entries of the text tower (everything but the image tower and
    the logit scale/bias)."""
    return name not in NON_TEXT_KEYS and not name.startswith(NON_TEXT_PREFIXES)


def load_text_tower(model: Any, checkpoint: str | Path) -> Any:
    """A copy of ``model`` whose text tower comes from ``checkpoint``.

    ``checkpoint`` holds the text tower under open_clip's names (``token_embedding.*``,
    ``positional_embedding``, ``transformer.*``, ``ln_final.*``, ``text_projection``; ``text.*``
    for custom-text models), e.g. a trained third tower G or a fine-tuned text tower; a full CLIP
    state dict works too. Its other entries are ignored: the image tower stays ``model``'s.
    Every text-tower entry must be present with the same shape.
    """
    from open_clip.factory import load_state_dict

    path = Path(checkpoint)
    check_checkpoint(path, "text tower checkpoint")
    state = load_state_dict(str(path), device="cpu", weights_only=True)
    own = model.state_dict()
    text_keys = [name for name in own if is_text_tower_key(name)]
    missing = [name for name in text_keys if name not in state]
    if missing:
        raise ValueError(
            f"{path}: not a text tower of this architecture: {len(missing)} entries missing, "
            f"e.g. {missing[:3]}"
        )
    for name in text_keys:
        if tuple(state[name].shape) != tuple(own[name].shape):
            raise ValueError(
                f"{path}: {name} has shape {tuple(state[name].shape)}, "
                f"expected {tuple(own[name].shape)}"
            )
    tower = copy.deepcopy(model)
    tower.load_state_dict({**own, **{name: state[name] for name in text_keys}})
    return tower.eval()


def make_tiny_clip(output: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised ``tiny-clip`` model (seeded) as a safetensors checkpoint."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from dialogclip.core.io import atomic_path

    register_model_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model("tiny-clip", pretrained=None)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    metadata = {
        "architecture": "tiny-clip",
        "seed": str(seed),
        QUICKGELU_METADATA_KEY: json.dumps(False),
    }
    with atomic_path(output) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(output)
