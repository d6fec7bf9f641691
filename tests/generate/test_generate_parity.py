"""vLLM vs transformers on the tiny models (fp32, greedy): identical token sequences.

Covers both generators end to end through the generator code (so the second BLIP-2 turn, whose
prompt holds the first answer, is compared too) and LLaVA with JSON-constrained decoding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jsonschema
import pytest
from generate_helpers import noise_image

from dialogclip.generate.backend import Completion, GenerationBackend, GenerationRequest
from dialogclip.generate.config import generate_config_from_dict
from dialogclip.generate.generators import make_generator
from dialogclip.generate.parsing import qa_json_schema

pytestmark = pytest.mark.vllm

IMAGES = [noise_image(seed, size=(40 + 4 * seed, 36)) for seed in range(8)]
KEYS = [f"{i:09d}" for i in range(len(IMAGES))]


class Recording(GenerationBackend):
    """Passes requests to a real backend and keeps every request/completion pair."""

    def __init__(self, inner: GenerationBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[tuple[GenerationRequest, Completion]] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        completions = self.inner.generate(requests)
        self.calls.extend(zip(requests, completions, strict=True))
        return completions

    def settings(self) -> dict[str, Any]:
        return self.inner.settings()


def _run_both(name: str, config: Any, hf: GenerationBackend, vllm: GenerationBackend):
    runs = {}
    for backend in (hf, vllm):
        recording = Recording(backend)
        dialogues = make_generator(name, config).run(recording, IMAGES, KEYS)
        runs[backend.name] = (recording.calls, dialogues)
    return runs["transformers"], runs["vllm"]


def _assert_identical(hf_calls, vllm_calls) -> None:
    assert len(hf_calls) == len(vllm_calls)
    for (hf_request, hf_out), (vllm_request, vllm_out) in zip(hf_calls, vllm_calls, strict=True):
        assert hf_request.prompt == vllm_request.prompt
        assert hf_out.token_ids == vllm_out.token_ids, hf_request.prompt
        assert hf_out.text == vllm_out.text
        assert hf_out.finish_reason == vllm_out.finish_reason
        assert hf_out.prompt_tokens == vllm_out.prompt_tokens


def test_blip2_two_turns_identical(tiny_params, hf_backends, vllm_backends) -> None:
    config = generate_config_from_dict(
        {**tiny_params, "blip2": {**tiny_params["blip2"], "max_new_tokens": 10}}
    )
    (hf_calls, hf_dialogues), (vllm_calls, vllm_dialogues) = _run_both(
        "blip2", config, hf_backends["blip2"], vllm_backends["blip2"]
    )
    assert len(hf_calls) == 2 * len(IMAGES)  # both turns of every image
    _assert_identical(hf_calls, vllm_calls)
    second_turns = [request.prompt for request, _ in hf_calls[len(IMAGES) :]]
    assert all("What makes this image unique? Answer:" in prompt for prompt in second_turns)
    # The images matter: not every image gets the same reply.
    assert len({completion.token_ids for _, completion in hf_calls}) > 1
    assert [d.answers for d in hf_dialogues] == [d.answers for d in vllm_dialogues]


def test_llava_identical(tiny_params, hf_backends, vllm_backends) -> None:
    config = generate_config_from_dict(
        {**tiny_params, "llava": {**tiny_params["llava"], "max_new_tokens": 32}}
    )
    (hf_calls, _), (vllm_calls, _) = _run_both(
        "llava", config, hf_backends["llava"], vllm_backends["llava"]
    )
    _assert_identical(hf_calls, vllm_calls)
    assert len({completion.token_ids for _, completion in hf_calls}) > 1
    assert all(completion.prompt_tokens > 16 for _, completion in hf_calls)  # image tokens counted


def test_llava_structured_output_identical_and_valid(
    tiny_params, hf_backends, vllm_backends
) -> None:
    llava = {**tiny_params["llava"], "structured_output": True, "max_new_tokens": 160}
    config = generate_config_from_dict({**tiny_params, "llava": llava})
    (hf_calls, hf_dialogues), (vllm_calls, _) = _run_both(
        "llava", config, hf_backends["llava"], vllm_backends["llava"]
    )
    _assert_identical(hf_calls, vllm_calls)
    schema = qa_json_schema(3, llava["structured_max_chars"])
    for _, completion in hf_calls:
        assert completion.finish_reason == "stop"
        assert completion.token_ids[-1] in hf_backends["llava"].stop_ids  # EOS kept, as vLLM does
        jsonschema.validate(json.loads(completion.text), schema)  # every reply is schema-valid
    assert all(len(d.questions) <= 3 for d in hf_dialogues)
