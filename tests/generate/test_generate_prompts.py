"""Prompts (METHOD.md section 3), BLIP-2 answer cleaning, the science/machine settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dialogclip.core.config import ConfigError, load_yaml
from dialogclip.core.prompts import blip2_prompt, clean_blip2_answer, llava_prompt
from dialogclip.generate.config import (
    BLIP2_QUESTIONS,
    MACHINE_FLAGS,
    Blip2Settings,
    GenerateConfig,
    LlavaSettings,
    MachineSettings,
    TransformersSettings,
    VllmSettings,
    generate_config_from_dict,
    machine_settings,
)
from dialogclip.generate.generators import make_generator

BLIP2 = "Question: {question} Answer:"
CONTEXT = Blip2Settings().context_template


def test_blip2_turns_follow_the_method() -> None:
    """METHOD.md section 3: BLIP-2's own multi-turn form (LAVIS: "Question: {} Answer: {}.",
    turns joined by a space), with the thesis' two questions."""
    questions = list(BLIP2_QUESTIONS)
    assert CONTEXT == "Question: {question} Answer: {answer}."
    first = blip2_prompt(BLIP2, CONTEXT, questions, [])
    assert first == "Question: What do you see in this image? Answer:"
    second = blip2_prompt(BLIP2, CONTEXT, questions, ["a dog on a beach"])
    assert second == (
        "Question: What do you see in this image? Answer: a dog on a beach. "
        "Question: What makes this image unique? Answer:"
    )


def test_blip2_generator_asks_turn_two_in_the_multi_turn_form(hf_backends) -> None:
    """The prompts the generator really sends (tiny BLIP-2, transformers): turn 2 holds turn 1's
    question and cleaned answer through the context template."""
    from generate_helpers import noise_image

    config = GenerateConfig(blip2=Blip2Settings(max_new_tokens=4))
    generator = make_generator("blip2", config)
    (dialogue,) = generator.run(hf_backends["blip2"], [noise_image(3)], ["k"])
    q1, q2 = BLIP2_QUESTIONS
    assert dialogue.prompts == [
        f"Question: {q1} Answer:",
        f"Question: {q1} Answer: {dialogue.answers[0]}. Question: {q2} Answer:",
    ]


def test_blip2_context_template_is_a_setting() -> None:
    template = "Q: {question} A: {answer}"
    assert blip2_prompt("Q: {question} A:", template, ["q1?", "q2?", "q3?"], ["a1", "a2"]) == (
        "Q: q1? A: a1 Q: q2? A: a2 Q: q3? A:"
    )
    config = generate_config_from_dict({"blip2": {"context_template": template}})
    assert config.blip2.context_template == template
    with pytest.raises(ConfigError, match=r"blip2\.context_template must contain"):
        generate_config_from_dict({"blip2": {"context_template": "Question: {question}"}})


def test_blip2_prompt_rejects_a_turn_past_the_questions() -> None:
    with pytest.raises(ValueError, match="turn 2"):
        blip2_prompt(BLIP2, CONTEXT, ["q1?", "q2?"], ["a", "b"])


def test_llava_prompt_is_the_chat_form() -> None:
    assert llava_prompt("USER: <image>\n{question} ASSISTANT:", "Hi?") == (
        "USER: <image>\nHi? ASSISTANT:"
    )


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        (" a dog on a beach ", "a dog on a beach"),
        ("a dog\nQuestion: what else?", "a dog"),
        ("a dog Question: What makes it unique? Answer: nothing", "a dog"),
        ("", ""),
    ],
)
def test_blip2_answer_is_cut_before_invented_turns(response: str, answer: str) -> None:
    assert clean_blip2_answer(response, BLIP2) == answer


def test_config_defaults_equal_the_schema_defaults(repo_root: Path) -> None:
    """The dataclasses and workflow/schemas/config.schema.yaml must describe the same keys (the
    science only) with the same defaults."""
    schema = load_yaml(repo_root / "workflow" / "schemas" / "config.schema.yaml")
    section = schema["properties"]["generate"]
    defaults = GenerateConfig()

    def check(schema_node: dict, value: object, where: str) -> None:
        fields = {field.name for field in dataclasses.fields(value)}
        assert set(schema_node["properties"]) == fields, where
        for key, sub in schema_node["properties"].items():
            field_value = getattr(value, key)
            if sub.get("type") == "object" and "properties" in sub:  # a nested section
                check(sub, field_value, f"{where}.{key}")
            else:
                assert sub["default"] == field_value, f"{where}.{key}"

    check(section, defaults, "generate")


def test_unknown_and_invalid_keys_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="chunksize"):
        generate_config_from_dict({"chunksize": 3})
    with pytest.raises(ConfigError, match="dtype must be one of"):
        generate_config_from_dict({"dtype": "float8"})
    with pytest.raises(ConfigError, match=r"generate\.llava: unknown"):
        generate_config_from_dict({"llava": {"modle": "x"}})
    with pytest.raises(ConfigError, match="question"):
        generate_config_from_dict({"blip2": {"prompt_template": "no placeholder"}})


def test_structured_prompt_is_asked_only_when_switched_on() -> None:
    plain = make_generator("llava", generate_config_from_dict({}))
    structured = make_generator(
        "llava", generate_config_from_dict({"llava": {"structured_output": True}})
    )
    assert plain.schema is None and plain.question == LlavaSettings().question
    assert structured.schema is not None
    assert structured.question == LlavaSettings().structured_question


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"backend": "vllm"}, r"generate: unknown key\(s\) \['backend'\]"),
        ({"chunk_size": 64}, r"generate: unknown key\(s\) \['chunk_size'\]"),
        ({"vllm": {"gpu_memory_utilization": 0.5}}, r"generate: unknown key\(s\) \['vllm'\]"),
        ({"transformers": {"batch_size": 4}}, r"generate: unknown key\(s\) \['transformers'\]"),
        ({"decode": {"workers": 4}}, r"generate\.decode: unknown key\(s\) \['workers'\]"),
        ({"decode": {"prefetch_chunks": 2}}, r"unknown key\(s\) \['prefetch_chunks'\]"),
        ({"dialogue": {"separator": " "}}, r"generate: unknown key\(s\) \['dialogue'\]"),
    ],
)
def test_machine_keys_are_not_config(section: dict, message: str) -> None:
    """Machine settings left the config: an old section that still has one fails naming it."""
    with pytest.raises(ConfigError, match=message):
        generate_config_from_dict(section)


def test_machine_flag_defaults_are_the_machine_settings_defaults() -> None:
    assert machine_settings() == MachineSettings()
    assert {flag.name for flag in MACHINE_FLAGS} == {
        "backend", "chunk_size", "decode_workers", "prefetch_chunks", "transformers_batch_size",
        "transformers_device", "vllm_gpu_memory_percent", "vllm_kv_cache_mib",
        "vllm_max_model_len", "vllm_max_num_seqs", "vllm_tensor_parallel_size",
        "vllm_enforce_eager", "vllm_executor",
    }  # fmt: skip


def test_machine_flags_map_to_engine_arguments() -> None:
    """Resources are ints or strings: percent -> fraction, MiB -> bytes, 0/auto -> unset."""
    machine = machine_settings(
        threads=3,
        backend="vllm",
        chunk_size=64,
        decode_workers=5,
        prefetch_chunks=2,
        transformers_batch_size=16,
        transformers_device="cpu",
        vllm_gpu_memory_percent=85,
        vllm_kv_cache_mib=64,
        vllm_max_model_len=2048,
        vllm_max_num_seqs=32,
        vllm_tensor_parallel_size=2,
        vllm_enforce_eager=1,
        vllm_executor="uni",
    )
    assert machine == MachineSettings(
        backend="vllm",
        chunk_size=64,
        threads=3,
        decode_workers=5,
        prefetch_chunks=2,
        vllm=VllmSettings(
            gpu_memory_utilization=0.85,
            kv_cache_memory_bytes=64 * 1024 * 1024,
            max_model_len=2048,
            max_num_seqs=32,
            tensor_parallel_size=2,
            enforce_eager=True,
            distributed_executor_backend="uni",
        ),
        transformers=TransformersSettings(batch_size=16, device="cpu"),
    )
    unset = machine_settings(vllm_kv_cache_mib=0, vllm_max_model_len=0, decode_workers=0)
    assert unset.vllm.kv_cache_memory_bytes is None and unset.vllm.max_model_len is None
    assert unset.decode_workers is None and unset.vllm.distributed_executor_backend is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"backend": "tensorrt"}, "backend must be one of"),
        ({"chunk_size": 0}, "chunk_size must be >= 1"),
        ({"vllm_gpu_memory_percent": 0}, "vllm_gpu_memory_percent must be in 1..100"),
        ({"vllm_gpu_memory_percent": 120}, "vllm_gpu_memory_percent must be in 1..100"),
        ({"transformers_batch_size": 0}, "transformers_batch_size must be >= 1"),
        (
            {"vllm_max_num_sqs": 3},
            r"unknown generation machine setting\(s\) \['vllm_max_num_sqs'\]",
        ),
    ],
)
def test_bad_machine_settings_name_the_resource(flags: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        machine_settings(**flags)
