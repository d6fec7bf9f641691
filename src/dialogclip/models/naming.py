"""Names for models that the workflow needs before any model is loaded (standard library only,
so the Snakefile can import it cheaply).

- :func:`is_checkpoint_path`: does a ``pretrained`` value name a file (a rule may have to build
  it) rather than an open_clip pretrained tag?
- :func:`image_model_key`: one name per image tower (architecture, weights, activation). The
  image embeddings of an evaluation set are cached under it, so every text variant built on the
  same image tower reuses them; the training image-embedding caches use it too.
- :func:`text_model_key`: the same for a frozen text tower (training's caption-embedding caches).
- :func:`architecture_key`: an architecture as a file-name part (training rows are tokenised
  with the architecture's tokenizer and keyed by it).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePath

QuickGelu = bool | str  # True, False or "auto"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def is_checkpoint_path(pretrained: str | None) -> bool:
    """True if ``pretrained`` is a file path; open_clip tags have no slash and no file suffix."""
    if not pretrained:
        return False
    return "/" in pretrained or "\\" in pretrained or pretrained.endswith(CHECKPOINT_SUFFIXES)


def quickgelu_label(quickgelu: QuickGelu) -> str:
    """``auto``, ``quickgelu`` or ``gelu``: the configured setting in words."""
    if quickgelu == "auto":
        return "auto"
    if isinstance(quickgelu, bool):
        return "quickgelu" if quickgelu else "gelu"
    raise ValueError(f"quickgelu must be 'auto', true or false, got {quickgelu!r}")


def image_model_key(architecture: str, pretrained: str, quickgelu: QuickGelu = "auto") -> str:
    """A file-name-safe key for one image tower, e.g. ``ViT-B-32__laion400m_e32__auto``.

    A checkpoint path contributes its stem and a short hash of the path (two runs' checkpoints
    often share a file name); a changed file at the same path is caught by the workflow, which
    lists the checkpoint as an input of the embedding job.
    """
    if is_checkpoint_path(pretrained):
        digest = hashlib.sha1(pretrained.encode()).hexdigest()[:8]
        weights = f"{PurePath(pretrained).stem}-{digest}"
    else:
        weights = pretrained
    key = f"{architecture}__{weights}__{quickgelu_label(quickgelu)}"
    return _UNSAFE.sub("_", key)


def text_model_key(architecture: str, pretrained: str, quickgelu: QuickGelu = "auto") -> str:
    """A file-name-safe key for one frozen text tower, e.g. ``ViT-B-32__laion400m_e32__auto``.

    A text tower depends on exactly what the image tower does (the weights, and the activation:
    QuickGELU vs GELU changes the text transformer's outputs too), so the key has the same form
    as :func:`image_model_key`; it has its own name so the two can diverge (say, if the image
    preprocessing became configurable) without touching the callers.
    """
    return image_model_key(architecture, pretrained, quickgelu)


def architecture_key(architecture: str) -> str:
    """An open_clip architecture name as a file-name part (``hf-hub:org/x`` -> ``hf-hub_org_x``)."""
    return _UNSAFE.sub("_", architecture)
