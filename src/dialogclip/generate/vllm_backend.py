"""The vLLM backend: one offline ``vllm.LLM`` engine per job, a chunk's requests in one call.

vLLM schedules the whole list itself (continuous batching up to ``max_num_seqs``), so the
backend submits every request of a chunk at once. Images go in as PIL images through
``multi_modal_data``; LLaVA prompts carry ``<image>`` (expanded by the processor), BLIP-2 prompts
do not (vLLM inserts the query-token placeholders itself), exactly as in transformers.

On a CPU-only machine (tests, benchmarks) run it in-process with the settings of
``docs/vllm_on_cpu.md``: env ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``enforce_eager: true``,
``distributed_executor_backend: uni`` and a small ``kv_cache_memory_bytes``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from dialogclip.generate.backend import (
    FINISH_LENGTH,
    FINISH_STOP,
    Completion,
    GenerationBackend,
    GenerationRequest,
    stop_token_ids,
)
from dialogclip.generate.config import SamplingSettings, VllmSettings

log = logging.getLogger(__name__)


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
        **engine_overrides: Any,
    ) -> None:
        from vllm import LLM

        self._settings = settings
        self._sampling = sampling
        kwargs: dict[str, Any] = {
            "model": model,
            "revision": revision,
            "tokenizer_revision": revision,
            "dtype": dtype,
            "seed": sampling.seed,
            "gpu_memory_utilization": settings.gpu_memory_utilization,
            "tensor_parallel_size": settings.tensor_parallel_size,
            "max_num_seqs": settings.max_num_seqs,
            "enforce_eager": settings.enforce_eager,
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
        kwargs.update(engine_overrides)  # e.g. load_format="dummy" in the GPU benchmark
        log.info("vllm: starting engine for %s", model)
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        generation = self.llm.llm_engine.model_config.try_get_generation_config()
        self.stop_ids = stop_token_ids(self.tokenizer, generation)

    def settings(self) -> dict[str, Any]:
        return {
            "dtype": str(self.llm.llm_engine.model_config.dtype).removeprefix("torch."),
            "max_model_len": self.llm.llm_engine.model_config.max_model_len,
            "tensor_parallel_size": self._settings.tensor_parallel_size,
            "max_num_seqs": self._settings.max_num_seqs,
            "enforce_eager": self._settings.enforce_eager,
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
