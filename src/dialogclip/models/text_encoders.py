"""Text encoders as composable pieces: the evaluation asks only for ``encode(texts)``.

- :class:`TowerTextEncoder`: a CLIP text tower (the plain baseline, or a third tower G, or a
  fine-tuned tower: any open_clip model's ``encode_text``).
- :class:`EmbeddingBlend`: ``beta * T(x) + (1 - beta) * G(x)`` of two encoders' unit embeddings,
  renormalised so that similarities stay cosine similarities. ``beta`` weights the original T
  (beta = 0.9 keeps 90 % of it, as in the thesis; beta = 1 is T alone, beta = 0 "only 3rd").
- :func:`blend_weights`: ``theta = beta * theta_original + (1 - beta) * theta_finetuned``,
  a new model whose parameters interpolate two models of the same architecture.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from tqdm import tqdm


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (as CLIP_benchmark evaluates), full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda")
    return contextlib.nullcontext()


class TextEncoder(Protocol):
    """Anything that maps texts to L2-normalised embeddings [N, D]."""

    def encode(self, texts: Sequence[str]) -> torch.Tensor: ...


class TowerTextEncoder:
    """The text tower of an open_clip model, batched, in inference mode."""

    def __init__(
        self,
        model: Any,
        tokenizer: Callable[[Sequence[str]], torch.Tensor],
        batch_size: int = 256,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = torch.device(device)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """texts (N) -> [N, D] float32 unit vectors (on the CPU)."""
        if not texts:
            raise ValueError("no texts to encode")
        chunks = []
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="texts", unit="batch", disable=len(starts) < 2):
            tokens = self.tokenizer(list(texts[start : start + self.batch_size])).to(self.device)
            with autocast_for(self.device):
                features = self.model.encode_text(tokens)  # [B, D]
            chunks.append(F.normalize(features.float(), dim=-1).cpu())
        return torch.cat(chunks)


class EmbeddingBlend:
    """``normalize(beta * original(x) + (1 - beta) * other(x))``."""

    def __init__(self, original: TextEncoder, other: TextEncoder, beta: float) -> None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.original, self.other, self.beta = original, other, beta

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """texts (N) -> [N, D] unit vectors."""
        if self.beta == 1.0:
            return self.original.encode(texts)
        if self.beta == 0.0:
            return self.other.encode(texts)
        blended = self.beta * self.original.encode(texts) + (1 - self.beta) * self.other.encode(
            texts
        )
        return F.normalize(blended, dim=-1)


def blend_state_dicts(
    original: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], beta: float
) -> dict[str, torch.Tensor]:
    """``beta * original + (1 - beta) * finetuned`` for every floating-point tensor.

    Both must hold the same keys and shapes; non-float tensors (e.g. token ids buffers) must be
    equal and are copied from ``original``.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if set(original) != set(finetuned):
        diff = sorted(set(original) ^ set(finetuned))[:5]
        raise ValueError(f"the two models' parameters differ in names, e.g. {diff}")
    blended = {}
    for name, weight in original.items():
        other = finetuned[name]
        if weight.shape != other.shape:
            raise ValueError(
                f"{name}: shapes differ, {tuple(weight.shape)} vs {tuple(other.shape)}"
            )
        if weight.is_floating_point():
            blended[name] = beta * weight + (1 - beta) * other.to(weight.dtype)
        else:
            blended[name] = weight.clone()
    return blended


def blend_weights(original_model: Any, finetuned_state: Mapping[str, torch.Tensor], beta: float):
    """A copy of ``original_model`` with parameters ``beta * original + (1 - beta) * finetuned``."""
    model = copy.deepcopy(original_model)
    model.load_state_dict(blend_state_dicts(original_model.state_dict(), finetuned_state, beta))
    return model.eval()
