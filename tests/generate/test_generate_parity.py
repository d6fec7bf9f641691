"""vLLM vs transformers (greedy, ``dtype: auto`` = float32 on CPU): identical token sequences,
on the tiny random models and on the trained world models the demo generates with.

Covers both generators end to end through the generator code (so the second BLIP-2 turn, whose
prompt holds the first answer, is compared too), LLaVA with JSON-constrained decoding, and a
BLIP-2 whose generation config ends replies at the newline token, as BLIP-2 OPT's does. Random
weights reach odd tokens and the token limit; the trained models write what the demo's
dialogue is made of (grounded BLIP-2 answers ending at the newline, LLaVA's free-text pairs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest
import torch
from generate_helpers import noise_image

from dialogclip.generate.backend import (
    Completion,
    EngineTarget,
    GenerationBackend,
    GenerationRequest,
)
from dialogclip.generate.config import generate_config_from_dict
from dialogclip.generate.generators import make_generator
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

IMAGES = [noise_image(seed, size=(40 + 4 * seed, 36)) for seed in range(8)]
KEYS = [f"{i:09d}" for i in range(len(IMAGES))]
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


@pytest.fixture(params=["tiny", "world"])
def models(request: pytest.FixtureRequest, tiny_params: dict[str, Any]) -> Models:
    """The tiny random models on noise, or the committed world models (the demo's prompts:
    the schema's defaults) on held-out scenes as the pipeline stores them."""
    if request.param == "tiny":
        hf, vllm = request.getfixturevalue("hf_backends"), request.getfixturevalue("vllm_backends")
        return Models("tiny", tiny_params, hf, vllm, IMAGES, KEYS)
    both = request.getfixturevalue("world_backends")
    params = {"blip2": {"max_new_tokens": BLIP2_MAX_NEW_TOKENS},
              "llava": {"max_new_tokens": LLAVA_MAX_NEW_TOKENS}}  # fmt: skip
    images = [as_stored(scene) for scene in WORLD_SCENES]
    keys = [f"{i:09d}" for i in range(len(images))]
    return Models("world", params, both["transformers"], both["vllm"], images, keys)


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

    @property
    def target(self) -> EngineTarget:
        return self.inner.target


def _run_both(name: str, config: Any, models: Models):
    runs = {}
    for backend in (models.hf[name], models.vllm[name]):
        recording = Recording(backend)
        dialogues = make_generator(name, config).run(recording, models.images, models.keys)
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
    (hf_calls, hf_dialogues), (vllm_calls, vllm_dialogues) = _run_both("blip2", config, models)
    assert len(hf_calls) == 2 * len(models.images)  # both turns of every image
    _assert_identical(hf_calls, vllm_calls)
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
    (hf_calls, hf_dialogues), (vllm_calls, _) = _run_both("llava", config, models)
    _assert_identical(hf_calls, vllm_calls)
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
    (hf_calls, hf_dialogues), (vllm_calls, _) = _run_both("llava", config, models)
    _assert_identical(hf_calls, vllm_calls)
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
    newline_models = Models("tiny", tiny_params, {"blip2": hf}, {"blip2": vllm}, IMAGES, KEYS)
    (hf_calls, hf_dialogues), (vllm_calls, vllm_dialogues) = _run_both(
        "blip2", config, newline_models
    )
    _assert_identical(hf_calls, vllm_calls)
    ended = [c for _, c in hf_calls if c.finish_reason == "stop" and c.token_ids[-1] == newline]
    # Both kinds of ending occur: at the newline, and at the token limit.
    assert 0 < len(ended) < len(hf_calls)
    assert all(c.text.endswith("\n") for c in ended)  # a newline is not a special token
    assert all(newline not in c.token_ids[:-1] for _, c in hf_calls)  # nothing runs past it
    assert [d.answers for d in hf_dialogues] == [d.answers for d in vllm_dialogues]
    assert not any("\n" in answer for d in hf_dialogues for answer in d.answers)
