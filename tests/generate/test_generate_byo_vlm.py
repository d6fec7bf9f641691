"""Bring your own VLM: a generator is data (generate.vlms.<name>: model, kind, questions, prompt
format), and the thesis' two are entries of that form with exactly their prompts.

Run on the tiny LLaVA (transformers backend), whose processor carries the published llava-1.5
chat template: a config-only generator that takes its prompts from that template sends the
same prompt as the built-in LLaVA and so gets the same greedy replies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from generate_helpers import add_generator, n_shards_of, noise_image
from workflow_helpers import DEMO

from dialogclip.core.config import ConfigError, load_yaml
from dialogclip.core.prompts import chat_messages
from dialogclip.generate.config import (
    BLIP2_QUESTIONS,
    LLAVA_QUESTION,
    GenerateConfig,
    VlmSettings,
    generate_config_from_dict,
    generator_entry,
    generator_settings,
)
from dialogclip.generate.generators import DialogueGenerator, QaPairsGenerator, make_generator

IMAGES = [noise_image(seed, size=(40 + 4 * seed, 36)) for seed in range(4)]
KEYS = [f"{i:09d}" for i in range(len(IMAGES))]


def _with_vlm(params: dict[str, Any], name: str, entry: dict[str, Any]) -> GenerateConfig:
    return generate_config_from_dict(
        {**params, "generators": ["blip2", "llava", name], "vlms": {name: entry}}
    )


def test_the_thesis_generators_are_entries_of_the_same_kind() -> None:
    config = GenerateConfig()
    blip2, llava = generator_entry("blip2", config), generator_entry("llava", config)
    assert (blip2.kind, blip2.prompt_format, blip2.questions) == (
        "dialogue",
        "template",
        list(BLIP2_QUESTIONS),
    )
    assert (blip2.prompt_template, blip2.context_template, blip2.max_new_tokens) == (
        "Question: {question} Answer:",
        "Question: {question} Answer: {answer}.",
        40,
    )
    assert (llava.kind, llava.prompt_format, llava.questions, llava.pairs) == (
        "qa_pairs",
        "template",
        [LLAVA_QUESTION],
        3,
    )
    assert llava.prompt_template == "USER: <image>\n{question} ASSISTANT:"
    assert isinstance(make_generator("blip2", config), DialogueGenerator)
    assert isinstance(make_generator("llava", config), QaPairsGenerator)
    # What a shard records stays the section as written (its resume fingerprint with it).
    assert generator_settings("llava", config) is config.llava


def test_the_llava_prompt_is_todays_string(hf_backends) -> None:
    """The exact string LLaVA is sent (a template generator never asks the backend)."""
    prompt = make_generator("llava", GenerateConfig()).prompt(hf_backends["llava"])
    assert prompt == f"USER: <image>\n{LLAVA_QUESTION} ASSISTANT:"


def test_chat_messages_put_earlier_turns_before_the_question() -> None:
    assert chat_messages(["q1", "q2", "q3"], ["a1"]) == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q1"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a1"}]},
        {"role": "user", "content": [{"type": "text", "text": "q2"}]},
    ]
    with pytest.raises(ValueError, match="turn 2 asked but only 2 questions"):
        chat_messages(["q1", "q2"], ["a1", "a2"])


def test_a_chat_template_generator_by_config_alone_matches_the_builtin_llava(
    tiny_params: dict[str, Any], hf_backends: dict[str, Any]
) -> None:
    """qa_pairs with the model's own chat template: the llava-1.5 template renders today's
    prompt, so prompts, greedy replies and parsed pairs equal the built-in LLaVA's."""
    llava = tiny_params["llava"]
    entry = {
        "model": llava["model"],
        "kind": "qa_pairs",
        "questions": [LLAVA_QUESTION],
        "max_new_tokens": 24,
    }
    config = _with_vlm(
        {**tiny_params, "llava": {**llava, "max_new_tokens": 24}}, "llava_chat", entry
    )
    backend = hf_backends["llava"]
    builtin = make_generator("llava", config).run(backend, IMAGES, KEYS)
    by_config = make_generator("llava_chat", config).run(backend, IMAGES, KEYS)
    assert by_config[0].prompts == [f"USER: <image>\n{LLAVA_QUESTION} ASSISTANT:"]
    for ours, theirs in zip(by_config, builtin, strict=True):
        assert (ours.prompts, ours.responses) == (theirs.prompts, theirs.responses)
        assert (ours.questions, ours.answers, ours.parse_status) == (
            theirs.questions,
            theirs.answers,
            theirs.parse_status,
        )
    assert len({d.responses[0] for d in by_config}) > 1  # the images matter


def test_a_chat_template_dialogue_carries_the_earlier_turns(
    tiny_params: dict[str, Any], hf_backends: dict[str, Any]
) -> None:
    entry = {
        "model": tiny_params["llava"]["model"],
        "kind": "dialogue",
        "questions": ["What is in the image?", "What is unusual about it?"],
        "max_new_tokens": 6,
    }
    config = _with_vlm(tiny_params, "chat_dialogue", entry)
    dialogues = make_generator("chat_dialogue", config).run(hf_backends["llava"], IMAGES, KEYS)
    for dialogue in dialogues:
        first = dialogue.responses[0].strip()
        assert dialogue.answers[0] == first
        assert dialogue.prompts == [
            "USER: <image>\nWhat is in the image? ASSISTANT:",
            f"USER: <image>\nWhat is in the image? ASSISTANT: {first} "
            "USER: What is unusual about it? ASSISTANT:",
        ]
        assert dialogue.questions == entry["questions"]


def test_a_model_without_a_chat_template_fails_naming_it(
    tiny_params: dict[str, Any], hf_backends: dict[str, Any]
) -> None:
    model = tiny_params["blip2"]["model"]
    entry = {"model": model, "kind": "qa_pairs", "questions": ["Ask three questions."]}
    generator = make_generator("no_template", _with_vlm(tiny_params, "no_template", entry))
    with pytest.raises(ConfigError, match=rf"{model} has no chat template.*prompt_format: templ"):
        generator.run(hf_backends["blip2"], IMAGES[:1], KEYS[:1])


@pytest.mark.parametrize(
    ("generators", "vlms", "message"),
    [
        (
            ["blip2", "qwen"],
            {},
            r"generators \['qwen'\] are neither blip2, llava nor an entry of generate.vlms",
        ),
        (["blip2"], {"llava": {"model": "m", "kind": "dialogue", "questions": ["q"]}}, "built-in"),
        (
            ["x"],
            {"x": {"model": "m", "kind": "qa_pairs", "questions": ["q1", "q2"]}},
            r"vlms.x.questions: a qa_pairs generator asks exactly one question",
        ),
        (
            ["x"],
            {"x": {"model": "m", "kind": "chat", "questions": ["q"]}},
            r"vlms.x.kind must be one of \('dialogue', 'qa_pairs'\), got 'chat'",
        ),
        (
            ["x"],
            {"x": {"model": "m", "kind": "dialogue", "questions": ["q"], "prompt_format": "t"}},
            r"vlms.x.prompt_format must be one of",
        ),
        (
            ["x"],
            {
                "x": {
                    "model": "m",
                    "kind": "dialogue",
                    "questions": ["q"],
                    "prompt_format": "template",
                    "context_template": "{question}",
                }
            },
            r"vlms.x.context_template must contain",
        ),
        (["x"], {"x": {"model": "m", "kind": "dialogue"}}, r"generate.vlms.x: .*questions"),
        (["x"], {"x": {"model": "m", "kind": "dialogue", "questions": ["q"], "temp": 1}}, "temp"),
    ],
)
def test_a_bad_entry_fails_naming_its_key(
    generators: list[str], vlms: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        generate_config_from_dict({"generators": generators, "vlms": vlms})


def test_the_command_refuses_a_generator_without_an_entry(tmp_path: Path, capsys) -> None:
    """``generate-dialogue --generator NAME`` takes any name its params define; another one
    fails in one line naming the entries."""
    from generate_helpers import write_shard

    from dialogclip.cli import main

    shard = write_shard(tmp_path / "00000.parquet", [])
    argv = ["generate-dialogue", "--generator", "qwen", "--shard", str(shard)]
    argv += ["--output", str(tmp_path / "o.parquet"), "--stats", str(tmp_path / "s.json")]
    entry = {"model": "m", "kind": "qa_pairs", "questions": ["q"]}
    assert main([*argv, "--params", json.dumps({"vlms": {"qwn": entry}})]) == 2
    err = capsys.readouterr().err
    assert "generator 'qwen' is neither blip2, llava nor an entry of generate.vlms" in err
    assert "(entries: ['qwn'])" in err and "Traceback" not in err


def test_an_entry_takes_the_schema_defaults(repo_root: Path) -> None:
    """The workflow fills an entry's defaults from the schema (as the sections'): the rule
    params hold the whole entry, so changing a default reruns its jobs."""
    from dialogclip.core.config import fill_defaults, load_yaml

    config = {"generate": {"vlms": {"x": {"model": "m", "kind": "qa_pairs", "questions": ["q"]}}}}
    fill_defaults(config, load_yaml(repo_root / "workflow/schemas/config.schema.yaml"))
    assert config["generate"]["generators"] == ["blip2", "llava"]
    entry = config["generate"]["vlms"]["x"]
    assert entry["prompt_format"] == "chat_template"
    assert entry["max_new_tokens"] == VlmSettings.max_new_tokens == 256
    assert entry["revision"] is None


# --- the workflow: a generator added to a finished demo by config alone ------------------------

# The demo's LLaVA (the world's, free text) again, as a generate.vlms entry in its chat template:
# the same model and token limit (resources/demo/config.yaml), the same question.
_DEMO_LLAVA = load_yaml(DEMO / "config.yaml")["generate"]["llava"]
DEMO_CHAT_LLAVA = {
    "model": _DEMO_LLAVA["model"],
    "kind": "qa_pairs",
    "questions": [LLAVA_QUESTION],
    "max_new_tokens": _DEMO_LLAVA["max_new_tokens"],
}


@pytest.mark.dag
def test_adding_a_configured_generator_plans_only_its_jobs(
    finished_demo: Path, tmp_path: Path
) -> None:
    """Its generation jobs, its summary and quality statistics, and the report that lists
    every generator: no job of blip2 or llava, nothing downstream of their dialogue."""
    from collections import Counter

    from workflow_helpers import GENERATE_RULE, planned

    plan = planned(
        finished_demo,
        "--configfile",
        add_generator(finished_demo, tmp_path, "llava_chat", DEMO_CHAT_LLAVA),
    )
    n_shards = n_shards_of(finished_demo)
    assert plan.jobs == Counter(
        {GENERATE_RULE: n_shards, "dialogue_summary": 1, "dialogue_quality": 1, "report": 1}
    )
    assert plan.by(GENERATE_RULE, "generator") == {"llava_chat": n_shards}
    assert plan.by("dialogue_summary", "generator") == {"llava_chat": 1}


@pytest.mark.dag
@pytest.mark.jobs
def test_a_configured_generator_runs_in_the_workflow(finished_demo: Path, tmp_path: Path) -> None:
    """The added generator's jobs run (transformers, CPU) and write the rows the built-in LLaVA
    wrote: the same prompt from the chat template, so the same greedy replies and pairs. A
    second dry run then plans nothing of it."""
    import pyarrow.parquet as pq
    from workflow_helpers import copy_demo, planned, snakemake

    demo = copy_demo(tmp_path / "demo", source=finished_demo)
    configfile = add_generator(demo, tmp_path, "llava_chat", DEMO_CHAT_LLAVA)
    summary = "results/dialogue/llava_chat/summary.json"
    result = snakemake(demo, summary, "--configfile", configfile)  # it takes every word after
    assert result.returncode == 0, result.stderr[-6000:]
    columns = ["key", "status", "prompts", "responses", "questions", "answers", "parse_status"]
    shards = sorted((demo / "results/dialogue/llava").glob("[0-9]*.parquet"))
    assert shards
    for shard in shards:
        ours = pq.read_table(demo / "results/dialogue/llava_chat" / shard.name)
        assert set(ours.column("generator").to_pylist()) == {"llava_chat"}
        assert ours.select(columns).to_pylist() == pq.read_table(shard).select(columns).to_pylist()
    assert planned(demo, summary, "--configfile", configfile).jobs == {}
