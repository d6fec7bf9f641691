"""Reruns only when the science changes: what a dry run of the finished demo plans after an edit.

Machine settings of the generation rule ``generate`` (one rule, a ``{generator}`` wildcard) are
resources (set here with ``--set-resources`` / ``--set-threads`` or a profile, as a user would,
for both generators or, as an expression on ``wildcards.generator``, for one): editing one plans
nothing. Science settings are the ``generate`` section (config params): editing one plans exactly
the jobs that read it, of the generators that read it, and what depends on them. The ``text``
section is read by the dialogue summaries and the VQA candidates, never by generation.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from workflow_helpers import (
    DEMO_BASELINE_EVAL,
    DEMO_RUNS,
    GENERATE_RULE,
    demo_after_dialogue,
    demo_after_runs,
    planned,
    planned_jobs,
    snakemake,
)

from dialogclip.core.config import load_yaml
from dialogclip.core.shards import ShardPlan, count_lines
from dialogclip.generate.config import MACHINE_FLAGS

# The rule's per-generator defaults of host memory (MB), wall time (minutes) and shards per
# engine start (GENERATE_RESOURCES in workflow/rules/generate_functions.smk).
HOST_DEFAULTS = {"blip2": {"mem_mb": "32000", "runtime": "180", "shards_per_engine": "12"}}
HOST_DEFAULTS["llava"] = {"mem_mb": "48000", "runtime": "240", "shards_per_engine": "3"}

# A value other than the rule's default for every machine setting.
MACHINE_EDITS: dict[str, int | str] = {
    "backend": "vllm",
    "chunk_size": 3,
    "decode_workers": 7,
    "prefetch_chunks": 3,
    "transformers_batch_size": 2,
    "transformers_device": "cpu",
    "vllm_gpu_memory_percent": 50,
    "vllm_kv_cache_mib": 64,
    "vllm_max_model_len": 4096,
    "vllm_max_num_seqs": 16,
    "vllm_tensor_parallel_size": 2,
    "vllm_enforce_eager": 1,
    "vllm_executor": "uni",
}


def _n_shards(demo: Path) -> int:
    config = load_yaml(demo / "config.yaml")["cc3m"]
    return len(ShardPlan(count_lines(demo / config["tsv"]), config["shard_size"]).names)


def _overlay(tmp_path: Path, edit: dict[str, Any]) -> str:
    """A config file that Snakemake merges over the demo's config.yaml (--configfile)."""
    path = tmp_path / "edit.yaml"
    path.write_text(yaml.safe_dump(edit))
    return str(path)


def _set_resources(name: str, value: int | str) -> list[str]:
    return ["--set-resources", f"{GENERATE_RULE}:{name}={value}"]


def _for_llava(value: int | str, otherwise: int | str) -> str:
    """A set-resources value for LLaVA jobs only: a Python expression on the wildcard."""
    return f"{value!r} if wildcards.generator == 'llava' else {otherwise!r}"


def test_the_edits_cover_every_machine_setting() -> None:
    defaults = {flag.name: flag.default for flag in MACHINE_FLAGS}
    assert set(MACHINE_EDITS) == set(defaults)
    assert all(MACHINE_EDITS[name] != default for name, default in defaults.items())


@pytest.mark.dag
@pytest.mark.parametrize("name", sorted(MACHINE_EDITS))
def test_editing_a_machine_setting_reruns_nothing(finished_demo: Path, name: str) -> None:
    assert planned_jobs(finished_demo, *_set_resources(name, MACHINE_EDITS[name])) == {}


@pytest.mark.dag
def test_editing_threads_or_memory_reruns_nothing(finished_demo: Path) -> None:
    args = ["--set-threads", f"{GENERATE_RULE}=1"]
    args += ["--set-resources", f"{GENERATE_RULE}:mem_mb=9000", f"{GENERATE_RULE}:runtime=5"]
    args += [f"{GENERATE_RULE}:shards_per_engine=1"]
    assert planned_jobs(finished_demo, *args) == {}
    per_generator = f"{GENERATE_RULE}:mem_mb={_for_llava(90000, 9000)}"
    assert planned_jobs(finished_demo, "--set-resources", per_generator) == {}


@pytest.mark.dag
def test_machine_settings_from_a_profile_rerun_nothing(finished_demo: Path, tmp_path) -> None:
    """How a user tunes a cluster: a profile with set-resources for the generation rule, LLaVA
    on two GPUs with tensor parallel (docs/gpu.md)."""
    profile = tmp_path / "gpu-profile"
    profile.mkdir()
    settings = {"backend": "vllm", "vllm_gpu_memory_percent": 80, "vllm_max_num_seqs": 128}
    settings |= {"gpu": _for_llava(2, 1), "vllm_tensor_parallel_size": _for_llava(2, 1)}
    (profile / "config.yaml").write_text(
        yaml.safe_dump({"set-resources": {GENERATE_RULE: settings}})
    )
    assert planned_jobs(finished_demo, "--profile", str(profile)) == {}


def _shell_flags(output: str, generator: str) -> list[dict[str, str]]:
    """The machine flags (and ``gpus``, the devices claimed) of every generate-dialogue command
    of ``generator`` a dry run prints."""
    commands = re.findall(
        rf"dialogclip --gpus \d+ --allow-cpu [01] generate-dialogue --generator {generator} .*",
        output,
    )
    flags = []
    for command in commands:
        words = shlex.split(command.split(" 2> ")[0])
        found = {flag.name: words[words.index(flag.flag) + 1] for flag in MACHINE_FLAGS}
        flags.append({"gpus": words[words.index("--gpus") + 1], **found})
    return flags


def _forced_commands(demo: Path, *args: str) -> str:
    """The dry run's output when every generation job is forced, shell commands printed."""
    forced = ["--dry-run", "--printshellcmds", "--forcerun", GENERATE_RULE]
    result = snakemake(demo, *forced, *args, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr


@pytest.mark.dag
def test_rule_defaults_and_overrides_reach_the_command(finished_demo: Path) -> None:
    """Every machine setting is on the shell line: the rule's default equals the command's
    (MACHINE_FLAGS); a set-resources override written as an expression on the generator
    replaces it for that generator's jobs only (docs/gpu.md: LLaVA on two GPUs)."""
    defaults = {flag.name: str(flag.default) for flag in MACHINE_FLAGS}
    override = ["--set-resources", f"{GENERATE_RULE}:gpu={_for_llava(2, 1)}"]
    override += [
        f"{GENERATE_RULE}:{k}={_for_llava(v, defaults[k])}" for k, v in MACHINE_EDITS.items()
    ]
    output = _forced_commands(finished_demo, *override)
    n_shards = _n_shards(finished_demo)
    edited = {name: str(value) for name, value in MACHINE_EDITS.items()}
    assert _shell_flags(output, "blip2") == [{"gpus": "1", **defaults}] * n_shards
    assert _shell_flags(output, "llava") == [{"gpus": "2", **edited}] * n_shards


@pytest.mark.dag
def test_a_plain_override_reaches_both_generators(finished_demo: Path) -> None:
    defaults = {flag.name: str(flag.default) for flag in MACHINE_FLAGS}
    output = _forced_commands(finished_demo, *_set_resources("chunk_size", 3))
    expected = [{"gpus": "1", **defaults, "chunk_size": "3"}] * _n_shards(finished_demo)
    assert _shell_flags(output, "blip2") == expected
    assert _shell_flags(output, "llava") == expected


def _host_resources(demo: Path, *args: str) -> dict[str, list[dict[str, str]]]:
    """{generator: [the HOST_DEFAULTS resources of each of its generation jobs]} when all are
    forced."""
    plan = planned(demo, "--forcerun", GENERATE_RULE, *args)
    jobs: dict[str, list[dict[str, str]]] = {}
    for job in plan.of(GENERATE_RULE):
        host = {key: job.resources[key] for key in HOST_DEFAULTS["blip2"]}
        jobs.setdefault(job.wildcards["generator"], []).append(host)
    return jobs


@pytest.mark.dag
def test_host_memory_and_wall_time_are_per_generator(finished_demo: Path) -> None:
    """One rule, two generators: its memory and wall-time defaults follow the generator; a
    plain override sets both generators, an expression on the wildcard one of them."""
    n_shards = _n_shards(finished_demo)
    assert _host_resources(finished_demo) == {
        name: [host] * n_shards for name, host in HOST_DEFAULTS.items()
    }
    assert _host_resources(finished_demo, *_set_resources("mem_mb", 9000)) == {
        name: [{**host, "mem_mb": "9000"}] * n_shards for name, host in HOST_DEFAULTS.items()
    }
    llava_only = _set_resources("mem_mb", _for_llava(60000, 32000))
    assert _host_resources(finished_demo, *llava_only) == {
        "blip2": [HOST_DEFAULTS["blip2"]] * n_shards,
        "llava": [{**HOST_DEFAULTS["llava"], "mem_mb": "60000"}] * n_shards,
    }


@pytest.mark.dag
def test_engine_reuse_and_wall_time_reach_the_command(finished_demo: Path) -> None:
    """Each generator's shards per engine start and wall time are on its jobs' shell lines
    (work ahead reads them); a plain override sets both generators."""
    for args, expected in [
        ((), {"blip2": ("12", "180"), "llava": ("3", "240")}),
        (_set_resources("shards_per_engine", 1), {"blip2": ("1", "180"), "llava": ("1", "240")}),
    ]:
        output = _forced_commands(finished_demo, *args)
        for generator, values in expected.items():
            commands = re.findall(rf"generate-dialogue --generator {generator} .*", output)
            found = set()
            for command in commands:
                words = shlex.split(command.split(" 2> ")[0])
                found.add(
                    tuple(words[words.index(f) + 1] for f in ("--shards-per-engine", "--runtime"))
                )
            assert len(commands) == _n_shards(finished_demo)
            assert found == {values}, generator


@pytest.mark.dag
@pytest.mark.parametrize(
    ("edit", "generators"),
    [
        ({"llava": {"prompt_template": "USER: <image>\n{question}\nASSISTANT:"}}, ["llava"]),
        ({"llava": {"question": "Ask three questions and answer them."}}, ["llava"]),
        ({"llava": {"structured_output": True}}, ["llava"]),  # the demo's LLaVA is free text
        ({"llava": {"max_new_tokens": 100}}, ["llava"]),
        ({"blip2": {"max_new_tokens": 7}}, ["blip2"]),
        ({"blip2": {"context_template": "Question: {question} Answer: {answer}"}}, ["blip2"]),
        ({"blip2": {"questions": ["What is this?"]}}, ["blip2"]),
        ({"blip2": {"revision": "main"}}, ["blip2"]),
        ({"dtype": "float32"}, ["blip2", "llava"]),
        ({"sampling": {"temperature": 0.7}}, ["blip2", "llava"]),
        ({"sampling": {"seed": 1}}, ["blip2", "llava"]),
        ({"decode": {"shortest_side": 256}}, ["blip2", "llava"]),
        ({"decode": {"min_side": 20}}, ["blip2", "llava"]),
    ],
)
def test_editing_generation_science_reruns_exactly_its_jobs(
    finished_demo: Path, tmp_path: Path, edit: dict, generators: list[str]
) -> None:
    """Each edited generator's jobs on every shard (and no other generator's), and what reads
    its dialogue: statistics, training rows, the runs on it, their evaluations, the report."""
    n_shards = _n_shards(finished_demo)
    expected = Counter({GENERATE_RULE: n_shards * len(generators)})
    expected += demo_after_dialogue(*generators)
    configfile = _overlay(tmp_path, {"generate": edit})
    plan = planned(finished_demo, "--configfile", configfile)
    assert plan.jobs == expected
    assert plan.by(GENERATE_RULE, "generator") == dict.fromkeys(generators, n_shards)


# The pair template reaches every sample (DRAFT pairs, the joined dialogue) and the VQA
# candidates (the baseline's too); the separator and the long-text policy only the joined
# dialogue (the third-tower runs). Both generators' statistics read every text setting.
TEXT_STATISTICS = Counter({"dialogue_summary": 2, "dialogue_quality": 2, "report": 1})
EVERY_TEXT = (
    TEXT_STATISTICS
    + demo_after_runs(list(DEMO_RUNS))
    + Counter({"eval_vqa": DEMO_BASELINE_EVAL["eval_vqa"]})
)
JOINED_TEXT = TEXT_STATISTICS + demo_after_runs(
    [name for name, run in DEMO_RUNS.items() if run.form == "concatenated"]
)


@pytest.mark.dag
@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"qa_template": "Question: {question} Answer: {answer}"}, EVERY_TEXT),
        ({"pair_separator": " | "}, JOINED_TEXT),
        ({"long_texts": "drop_pairs"}, JOINED_TEXT),
    ],
)
def test_editing_the_text_form_never_reruns_generation(
    finished_demo: Path, tmp_path: Path, edit: dict, expected: Counter
) -> None:
    """The text form redoes what reads texts (statistics, training rows and what follows them,
    VQA candidates); never a dialogue shard."""
    configfile = _overlay(tmp_path, {"text": edit})
    assert planned_jobs(finished_demo, "--configfile", configfile) == expected


@pytest.mark.dag
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"vllm": {"gpu_memory_utilization": 0.5}}, "generate: unknown key(s) ['vllm']"),
        ({"transformers": {"batch_size": 4}}, "generate: unknown key(s) ['transformers']"),
        ({"decode": {"workers": 4}}, "generate.decode: unknown key(s) ['workers']"),
        ({"chunk_size": 64}, "generate: unknown key(s) ['chunk_size']"),
        ({"backend": "vllm"}, "generate: unknown key(s) ['backend']"),
        ({"dialogue": {"separator": " "}}, "generate: unknown key(s) ['dialogue']"),
    ],
)
def test_an_old_config_with_machine_keys_fails_naming_the_key(
    finished_demo: Path, tmp_path: Path, edit: dict, message: str
) -> None:
    configfile = _overlay(tmp_path, {"generate": edit})
    result = snakemake(finished_demo, "--dry-run", "--configfile", configfile, timeout=300)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
