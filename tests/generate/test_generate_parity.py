"""vLLM vs transformers (greedy, ``dtype: auto`` = float32 on CPU): identical token sequences,
on the tiny random models and on the trained world models the demo generates with.

Covers both generators end to end through the generator code (so the second BLIP-2 turn, whose
prompt holds the first answer, is compared too), LLaVA with JSON-constrained decoding, a
BLIP-2 whose generation config ends replies at the newline token, as BLIP-2 OPT's does, and a
generator configured by data alone (generate.vlms) whose multi-turn prompts come from the
model's own chat template, rendered on each backend. Random weights reach odd tokens and the
token limit; the trained models write what the demo's dialogue is made of (grounded BLIP-2
answers ending at the newline, LLaVA's free-text pairs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest
import torch
from generate_helpers import PARITY_IMAGES, PARITY_KEYS, assert_identical, run_both

from dialogclip.generate.backend import EngineTarget, GenerationBackend
from dialogclip.generate.config import generate_config_from_dict
from dialogclip.generate.parsing import PARSE_OK, qa_json_schema
from dialogclip.world.build import (
    BLIP2_MAX_NEW_TOKENS,
    HELD_OUT_SPLIT,
    LLAVA_MAX_NEW_TOKENS,
    score_blip2,
    score_llava,
)
from dialogclip.world.scenes import draw_scenes
from dialogclip.world.vlms import as_stored

pytestmark = pytest.mark.vllm

IMAGES = PARITY_IMAGES
# The world models' issue-17 targets, on scenes no world model trained on.
WORLD_SCENES = draw_scenes(0, HELD_OUT_SPLIT, 16)
GROUNDED, PARSED = 0.80, 0.90


@dataclass
class Models:
    """One model set under both backends: its ``generate`` params, images and keys."""

    name: str
    params: dict[str, Any]
    hf: dict[str, GenerationBackend]
    vllm: dict[str, GenerationBackend]
    images: list[Any]
    keys: list[str]

    def run_both(self, name: str, config: Any):
        return run_both(name, config, self.hf[name], self.vllm[name], self.images, self.keys)


@pytest.fixture(params=["tiny", "world"])
def models(request: pytest.FixtureRequest, tiny_params: dict[str, Any]) -> Models:
    """The tiny random models on noise, or the committed world models (the demo's prompts:
    the schema's defaults) on held-out scenes as the pipeline stores them."""
    if request.param == "tiny":
        hf, vllm = request.getfixturevalue("hf_backends"), request.getfixturevalue("vllm_backends")
        return Models("tiny", tiny_params, hf, vllm, IMAGES, PARITY_KEYS)
    both = request.getfixturevalue("world_backends")
    params = {"blip2": {"max_new_tokens": BLIP2_MAX_NEW_TOKENS},
              "llava": {"max_new_tokens": LLAVA_MAX_NEW_TOKENS}}  # fmt: skip
    images = [as_stored(scene) for scene in WORLD_SCENES]
    keys = [f"{i:09d}" for i in range(len(images))]
    return Models("world", params, both["transformers"], both["vllm"], images, keys)


def test_auto_dtype_is_float32_in_both_backends(hf_backends, vllm_backends) -> None:
    """vLLM's own "auto" would run these float32 checkpoints in bfloat16 on this CPU."""
    for name, backend in vllm_backends.items():
        assert backend.target == EngineTarget("vllm", "cpu", "float32")
        assert backend.settings()["dtype"] == "float32"  # what the engine reports
        assert hf_backends[name].target.dtype == "float32"
        assert backend.llm.llm_engine.model_config.dtype == torch.float32


def test_blip2_two_turns_identical(models: Models) -> None:
    blip2 = dict(models.params["blip2"])
    if models.name == "tiny":
        blip2["max_new_tokens"] = 10
    config = generate_config_from_dict({**models.params, "blip2": blip2})
    (hf_calls, hf_dialogues), (vllm_calls, vllm_dialogues) = models.run_both("blip2", config)
    assert len(hf_calls) == 2 * len(models.images)  # both turns of every image
    assert_identical(hf_calls, vllm_calls)
    second_turns = [request.prompt for request, _ in hf_calls[len(models.images) :]]
    assert all("What makes this image unique? Answer:" in prompt for prompt in second_turns)
    # The images matter: not every image gets the same reply.
    assert len({completion.token_ids for _, completion in hf_calls}) > 1
    assert [d.answers for d in hf_dialogues] == [d.answers for d in vllm_dialogues]
    if models.name == "world":  # trained: each answer ends at its newline and holds true
        assert all(completion.finish_reason == "stop" for _, completion in hf_calls)
        grounding = score_blip2([d.answers for d in hf_dialogues], WORLD_SCENES)["grounding"]
        assert grounding["rate"] >= GROUNDED, grounding


def test_llava_identical(models: Models) -> None:
    llava = dict(models.params["llava"])
    if models.name == "tiny":
        llava["max_new_tokens"] = 32
    config = generate_config_from_dict({**models.params, "llava": llava})
    (hf_calls, hf_dialogues), (vllm_calls, _) = models.run_both("llava", config)
    assert_identical(hf_calls, vllm_calls)
    assert len({completion.token_ids for _, completion in hf_calls}) > 1
    assert all(completion.prompt_tokens > 16 for _, completion in hf_calls)  # image tokens counted
    if models.name == "world":  # trained: three free-text pairs, read by the generation parser
        parsed = sum(d.parse_status == PARSE_OK for d in hf_dialogues) / len(hf_dialogues)
        assert parsed >= PARSED
        replies = [completion.text for _, completion in hf_calls]
        grounding = score_llava(replies, WORLD_SCENES)["grounding"]
        assert grounding["rate"] >= GROUNDED, grounding


def test_llava_structured_output_identical_and_valid(models: Models) -> None:
    llava = {**models.params["llava"], "structured_output": True, "max_new_tokens": 160}
    llava.setdefault("structured_max_chars", 16)  # the demo's: three pairs fit in 160 tokens
    config = generate_config_from_dict({**models.params, "llava": llava})
    (hf_calls, hf_dialogues), (vllm_calls, _) = models.run_both("llava", config)
    assert_identical(hf_calls, vllm_calls)
    schema = qa_json_schema(3, config.llava.structured_max_chars)
    for _, completion in hf_calls:
        assert completion.finish_reason == "stop"
        assert completion.token_ids[-1] in models.hf["llava"].stop_ids  # EOS kept, as vLLM does
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
