"""vLLM vs transformers on the tiny models (greedy, ``dtype: auto`` = float32 on CPU):
identical token sequences.

Covers both generators end to end through the generator code (so the second BLIP-2 turn, whose
prompt holds the first answer, is compared too), LLaVA with JSON-constrained decoding, a
BLIP-2 whose generation config ends replies at the newline token, as BLIP-2 OPT's does, and a
generator configured by data alone (generate.vlms) whose multi-turn prompts come from the
model's own chat template, rendered on each backend.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch
from generate_helpers import PARITY_IMAGES, assert_identical, run_both

from dialogclip.generate.backend import EngineTarget
from dialogclip.generate.config import generate_config_from_dict
from dialogclip.generate.parsing import qa_json_schema

pytestmark = pytest.mark.vllm

IMAGES = PARITY_IMAGES


def test_auto_dtype_is_float32_in_both_backends(hf_backends, vllm_backends) -> None:
    """vLLM's own "auto" would run these float32 checkpoints in bfloat16 on this CPU."""
    for name, backend in vllm_backends.items():
        assert backend.target == EngineTarget("vllm", "cpu", "float32")
        assert backend.settings()["dtype"] == "float32"  # what the engine reports
        assert hf_backends[name].target.dtype == "float32"
        assert backend.llm.llm_engine.model_config.dtype == torch.float32


def test_blip2_two_turns_identical(tiny_params, hf_backends, vllm_backends) -> None:
    config = generate_config_from_dict(
        {**tiny_params, "blip2": {**tiny_params["blip2"], "max_new_tokens": 10}}
    )
    (hf_calls, hf_dialogues), (vllm_calls, vllm_dialogues) = run_both(
        "blip2", config, hf_backends["blip2"], vllm_backends["blip2"]
    )
    assert len(hf_calls) == 2 * len(IMAGES)  # both turns of every image
    assert_identical(hf_calls, vllm_calls)
    second_turns = [request.prompt for request, _ in hf_calls[len(IMAGES) :]]
    assert all("What makes this image unique? Answer:" in prompt for prompt in second_turns)
    # The images matter: not every image gets the same reply.
    assert len({completion.token_ids for _, completion in hf_calls}) > 1
    assert [d.answers for d in hf_dialogues] == [d.answers for d in vllm_dialogues]


def test_llava_identical(tiny_params, hf_backends, vllm_backends) -> None:
    config = generate_config_from_dict(
        {**tiny_params, "llava": {**tiny_params["llava"], "max_new_tokens": 32}}
    )
    (hf_calls, _), (vllm_calls, _) = run_both(
        "llava", config, hf_backends["llava"], vllm_backends["llava"]
    )
    assert_identical(hf_calls, vllm_calls)
    assert len({completion.token_ids for _, completion in hf_calls}) > 1
    assert all(completion.prompt_tokens > 16 for _, completion in hf_calls)  # image tokens counted


def test_llava_structured_output_identical_and_valid(
    tiny_params, hf_backends, vllm_backends
) -> None:
    llava = {**tiny_params["llava"], "structured_output": True, "max_new_tokens": 160}
    config = generate_config_from_dict({**tiny_params, "llava": llava})
    (hf_calls, hf_dialogues), (vllm_calls, _) = run_both(
        "llava", config, hf_backends["llava"], vllm_backends["llava"]
    )
    assert_identical(hf_calls, vllm_calls)
    schema = qa_json_schema(3, llava["structured_max_chars"])
    for _, completion in hf_calls:
        assert completion.finish_reason == "stop"
        assert completion.token_ids[-1] in hf_backends["llava"].stop_ids  # EOS kept, as vLLM does
        jsonschema.validate(json.loads(completion.text), schema)  # every reply is schema-valid
    assert all(len(d.questions) <= 3 for d in hf_dialogues)


def test_newline_eos_ends_replies_alike(tiny_params, newline_eos_backends) -> None:
    hf, vllm = newline_eos_backends
    newline = hf.tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    assert hf.tokenizer.eos_token_id != newline  # the stop comes from generation_config only
    assert newline in hf.stop_ids and newline in vllm.stop_ids
    config = generate_config_from_dict(
        {**tiny_params, "blip2": {**tiny_params["blip2"], "max_new_tokens": 10}}
    )
    (hf_calls, hf_dialogues), (vllm_calls, vllm_dialogues) = run_both("blip2", config, hf, vllm)
    assert_identical(hf_calls, vllm_calls)
    ended = [c for _, c in hf_calls if c.finish_reason == "stop" and c.token_ids[-1] == newline]
    # Both kinds of ending occur: at the newline, and at the token limit.
    assert 0 < len(ended) < len(hf_calls)
    assert all(c.text.endswith("\n") for c in ended)  # a newline is not a special token
    assert all(newline not in c.token_ids[:-1] for _, c in hf_calls)  # nothing runs past it
    assert [d.answers for d in hf_dialogues] == [d.answers for d in vllm_dialogues]
    assert not any("\n" in answer for d in hf_dialogues for answer in d.answers)


def test_chat_template_dialogue_by_config_identical(
    tiny_params, hf_backends, vllm_backends
) -> None:
    """A generate.vlms entry (no code): a two-turn dialogue in the tiny LLaVA's chat template.
    Each backend renders the template itself; prompts, tokens and answers agree."""
    questions = ["What is in the image?", "What is unusual about it?"]
    entry = {"model": tiny_params["llava"]["model"], "kind": "dialogue", "questions": questions}
    config = generate_config_from_dict(
        {**tiny_params, "generators": ["chat"], "vlms": {"chat": {**entry, "max_new_tokens": 10}}}
    )
    (hf_calls, hf_dialogues), (vllm_calls, vllm_dialogues) = run_both(
        "chat", config, hf_backends["llava"], vllm_backends["llava"]
    )
    assert len(hf_calls) == 2 * len(IMAGES)
    assert_identical(hf_calls, vllm_calls)
    for dialogue in vllm_dialogues:
        assert dialogue.prompts[1] == (
            f"USER: <image>\n{questions[0]} ASSISTANT: {dialogue.answers[0]} "
            f"USER: {questions[1]} ASSISTANT:"
        )
    assert len({completion.token_ids for _, completion in hf_calls}) > 1
    assert [d.answers for d in hf_dialogues] == [d.answers for d in vllm_dialogues]
