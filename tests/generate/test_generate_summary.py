"""dialogue_summary's text figures: dialogue texts (in the `text` form) vs each CLIP tokenizer's
context, checked against a naive count through the tokenizer's own call."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dialogclip.cli import main
from dialogclip.core.config import ConfigError, load_yaml
from dialogclip.core.io import read_json, write_parquet_atomic
from dialogclip.core.text_forms import TextForms
from dialogclip.generate.generators import Dialogue
from dialogclip.generate.schema import RowContext, dialogue_row, error_row, rows_to_table
from dialogclip.generate.text_lengths import architecture_token_counter, text_length_summary

LONG_ANSWER = (
    "a brown dog with a red collar runs along a wide sandy beach near the blue sea while two "
    "children play with a ball"
)
DIALOGUES = [
    # short: a BLIP-2-like two-turn dialogue
    (["What do you see in this image?", "What makes this image unique?"], ["a dog", "the sky"]),
    # three long pairs: too long together, two of them fit
    (["What is the dog doing?", "Where is it?", "What is around it?"], [LONG_ANSWER] * 3),
    # two pairs, the first alone already over 77 tokens
    (["Describe everything.", "And then?"], [" ".join([LONG_ANSWER] * 5), "nothing"]),
]


def _naive_tokens(architecture: str, text: str) -> int:
    """Tokens of ``text`` through the tokenizer's own call with a context long enough never to
    truncate: the non-padding positions, start and end tokens included."""
    import open_clip

    from dialogclip.models.openclip import register_model_configs

    register_model_configs()
    tokens = open_clip.get_tokenizer(architecture)([text], context_length=4096)[0]
    return int((tokens != 0).sum())


def _naive_drop_pairs(architecture: str, questions, answers, forms: TextForms, limit: int) -> int:
    """Pairs dropped from the end until the dialogue fits (at least one pair kept)."""
    pairs = forms.pairs(questions, answers)
    kept = len(pairs)
    while kept > 1 and _naive_tokens(architecture, forms.pair_separator.join(pairs[:kept])) > limit:
        kept -= 1
    return len(pairs) - kept


@pytest.mark.parametrize("architecture", ["ViT-B-32", "tiny-clip"])
@pytest.mark.parametrize(
    "forms",
    [TextForms(), TextForms(qa_template="Question: {question} Answer: {answer}.")],
)
def test_text_lengths_match_a_naive_count(architecture: str, forms: TextForms) -> None:
    counter = architecture_token_counter(architecture)
    assert (counter.tokenizer, counter.context_length) == ("SimpleTokenizer", 77)
    summary = text_length_summary(DIALOGUES, forms, [counter])
    lengths = [_naive_tokens(architecture, forms.dialogue(q, a)) for q, a in DIALOGUES]
    too_long = [i for i, n in enumerate(lengths) if n > 77]
    dropped = [_naive_drop_pairs(architecture, *DIALOGUES[i], forms, 77) for i in too_long]
    assert too_long == [1, 2]  # the fixture's intent: one short dialogue, two long ones
    assert summary == {
        "n_texts": 3,
        "architectures": {
            architecture: {
                "tokenizer": "SimpleTokenizer",
                "context_length": 77,
                "n_too_long": 2,
                "fraction_too_long": round(2 / 3, 6),
                "tokens_max": max(lengths),
                "tokens_mean": round(sum(lengths) / 3, 2),
                "drop_pairs": {
                    "n_losing_pairs": sum(n > 0 for n in dropped),
                    "pairs_dropped": sum(dropped),
                    "n_first_pair_truncated": 1,
                },
            }
        },
    }
    assert dropped == [1, 1]


def test_the_text_form_changes_the_counts() -> None:
    """A longer pair template pushes the short dialogue's token count up by exactly its words."""
    counter = architecture_token_counter("ViT-B-32")
    plain = text_length_summary(DIALOGUES[:1], TextForms(), [counter])
    tagged = text_length_summary(
        DIALOGUES[:1], TextForms(qa_template="Question: {question} Answer: {answer}"), [counter]
    )
    # "question :" and "answer :" are two BPE tokens each, for both pairs: 8 more tokens.
    assert tagged["architectures"]["ViT-B-32"]["tokens_max"] == (
        plain["architectures"]["ViT-B-32"]["tokens_max"] + 8
    )


def test_architectures_sharing_a_tokenizer_share_the_count() -> None:
    counters = [
        architecture_token_counter(name)
        for name in ("ViT-B-32", "ViT-L-14", "ViT-H-14", "tiny-clip")
    ]
    assert len({counter.key for counter in counters}) == 1
    summary = text_length_summary(DIALOGUES, TextForms(), counters)
    figures = list(summary["architectures"].values())
    assert list(summary["architectures"]) == ["ViT-B-32", "ViT-L-14", "ViT-H-14", "tiny-clip"]
    assert all(entry == figures[0] for entry in figures)


def test_an_unknown_architecture_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown model architecture 'ViT-Q-99'"):
        architecture_token_counter("ViT-Q-99")


def _dialogue(questions: list[str], answers: list[str], status: str = "ok") -> Dialogue:
    return Dialogue(
        prompts=["p"], responses=["r"], finish_reasons=["stop"], prompt_tokens=[3],
        generated_tokens=[2], questions=questions, answers=answers, parse_status=status,
    )  # fmt: skip


def test_summary_command_reads_the_shards(tmp_path: Path) -> None:
    """Only images the generator ran on with at least one pair are texts; shards add up."""
    ctx = RowContext(generator="llava", model="m", revision=None, backend="transformers")
    first = [
        dialogue_row("000000000", None, _dialogue(*DIALOGUES[0]), ctx),
        error_row("000000001", None, "image too small", ctx),
        dialogue_row("000000002", None, _dialogue([], [], "unparsed"), ctx),
    ]
    second = [dialogue_row(f"00000000{i}", None, _dialogue(*DIALOGUES[i]), ctx) for i in (1, 2)]
    shards = []
    for name, rows in (("00000", first), ("00001", second)):
        shards.append(tmp_path / f"{name}.parquet")
        write_parquet_atomic(rows_to_table(rows), shards[-1], {})
    output = tmp_path / "summary.json"
    argv = ["dialogue-summary", "--shards", *map(str, shards), "--output", str(output)]
    argv += ["--text", '{"long_texts": "drop_pairs"}', "--architectures", "ViT-B-32"]
    assert main(argv) == 0
    summary = read_json(output)
    assert summary["text"] == {
        "qa_template": "{question} {answer}",
        "pair_separator": " ",
        "long_texts": "drop_pairs",
    }
    assert summary["text_lengths"] == text_length_summary(
        DIALOGUES, TextForms(long_texts="drop_pairs"), [architecture_token_counter("ViT-B-32")]
    )
    assert summary["text_lengths"]["n_texts"] == 3


@pytest.mark.dag
def test_the_demo_summary_measures_every_dialogue(finished_demo: Path) -> None:
    """The workflow hands the shards, the text section and evaluate.models' architectures
    (the demo: world-clip) to each generator's summary."""
    config = load_yaml(finished_demo / "config.yaml")
    architectures = sorted({entry["architecture"] for entry in config["evaluate"]["models"]})
    assert architectures == ["world-clip"]
    for generator in ("blip2", "llava"):
        folder = finished_demo / "results" / "dialogue" / generator
        pairs = []
        for path in sorted(folder.glob("*.parquet")):
            table = pq.read_table(path)
            table = table.filter(pc.equal(table["status"], "success"))
            rows = zip(table["questions"].to_pylist(), table["answers"].to_pylist(), strict=True)
            pairs.extend((q, a) for q, a in rows if q)
        summary = read_json(folder / "summary.json")
        assert summary["text"] == {
            "qa_template": "{question} {answer}",
            "pair_separator": " ",
            "long_texts": "truncate",
        }
        assert summary["text_lengths"]["n_texts"] == len(pairs) > 0
        lengths = [_naive_tokens("world-clip", TextForms().dialogue(q, a)) for q, a in pairs]
        figures = summary["text_lengths"]["architectures"]["world-clip"]
        assert figures["n_too_long"] == sum(n > 77 for n in lengths)
        assert figures["tokens_max"] == max(lengths)
