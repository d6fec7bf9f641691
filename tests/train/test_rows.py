"""Training rows: the join of an ingested shard with a dialogue shard, the exclusion counts, the
text forms and their tokens, a block of shards as its shards' rows end to end, the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from train_helpers import dialogue_row, ingest_row, write_dialogue, write_ingested

from dialogclip.cli import main
from dialogclip.core.text_forms import TextForms
from dialogclip.train.rows import (
    RowsSettings,
    build_rows,
    load_tokenizer,
    read_rows,
    rows_settings_from_params,
    write_rows,
)

Q = ["What is shown?", "What colour is it?", "Where is it?"]
A = ["A dog.", "Brown.", "On a sofa."]
# With the questions: 36 tokens for pair 1, 71 for pairs 1-2, 82 (> 77) for all three.
LONG_A = [" ".join(["word"] * 30), " ".join(["more"] * 30), "on a sofa in the living room"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-clip")


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> tuple[Path, Path]:
    """12 ingested rows and the LLaVA dialogue of the downloaded ones, one case per row."""
    folder = tmp_path_factory.mktemp("shard")
    ingested = write_ingested(
        folder / "ingest" / "00000.parquet",
        [
            ingest_row(0),  # kept
            ingest_row(1, status="failed_to_download"),
            ingest_row(2),  # no dialogue row
            ingest_row(3),  # image_error
            ingest_row(4),  # wrong_count
            ingest_row(5),  # reply cut at max_new_tokens
            ingest_row(6, status="malformed_row"),
            ingest_row(7),  # unparsed
            ingest_row(8),  # long answers
            ingest_row(9, status="disallowed_url"),
            ingest_row(10, status="failed_to_resize"),
            ingest_row(11, caption="a red car"),  # kept
        ],
    )
    dialogue = write_dialogue(
        folder / "dialogue" / "llava" / "00000.parquet",
        [
            dialogue_row(0, Q, A),
            dialogue_row(3, [], [], status="image_error"),
            dialogue_row(4, Q[:2], A[:2], parse_status="wrong_count"),
            dialogue_row(5, Q, A, finish_reasons=["length"]),
            dialogue_row(7, [], [], parse_status="unparsed"),
            dialogue_row(8, Q, LONG_A),
            dialogue_row(
                11, ["Is it red?", "What is it?", "Is it new?"], ["Yes.", "A car.", "No."]
            ),
        ],
    )
    return ingested, dialogue


EXCLUDED = {
    "disallowed_url": 1,
    "failed_to_download": 1,
    "failed_to_resize": 1,
    "image_error": 1,
    "malformed_row": 1,
    "missing_dialogue": 1,
    "parse_unparsed": 1,
    "parse_wrong_count": 1,
    "truncated_reply": 1,
}


def test_every_excluded_image_is_counted_by_reason(shard, tokenizer) -> None:
    result = build_rows(*shard, RowsSettings("tiny-clip", "pairs"), tokenizer)
    images = result.stats["images"]
    assert images == {"input": 12, "kept": 3, "excluded": EXCLUDED, "n_excluded": 9}
    assert images["kept"] + images["n_excluded"] == images["input"]
    assert result.stats["generator"] == "llava"


def test_truncated_replies_count_when_included(shard, tokenizer) -> None:
    result = build_rows(*shard, RowsSettings("tiny-clip", "pairs", True), tokenizer)
    excluded = {k: v for k, v in EXCLUDED.items() if k != "truncated_reply"}
    assert result.stats["images"]["excluded"] == excluded
    assert sorted(set(result.table.column("key").to_pylist())) == [
        "000000000",
        "000000005",
        "000000008",
        "000000011",
    ]


def test_pairs_form_gives_one_row_per_pair_with_the_caption(shard, tokenizer) -> None:
    forms = TextForms(qa_template="Q: {question} A: {answer}")
    result = build_rows(*shard, RowsSettings("tiny-clip", "pairs", text=forms), tokenizer)
    table = result.table.to_pydict()
    assert table["key"] == ["000000000"] * 3 + ["000000008"] * 3 + ["000000011"] * 3
    assert table["sample"] == [0, 1, 2] * 3
    assert table["text"][:3] == [
        "Q: What is shown? A: A dog.",
        "Q: What colour is it? A: Brown.",
        "Q: Where is it? A: On a sofa.",
    ]
    assert table["caption"][-3:] == ["a red car"] * 3
    assert result.stats["rows"] == 9 and result.stats["rows_per_image"] == 3.0


def test_concatenated_form_joins_the_pairs(shard, tokenizer) -> None:
    forms = TextForms(pair_separator=" | ")
    result = build_rows(*shard, RowsSettings("tiny-clip", "concatenated", text=forms), tokenizer)
    table = result.table.to_pydict()
    assert table["key"] == ["000000000", "000000008", "000000011"]
    assert table["sample"] == [0, 0, 0]
    assert (
        table["text"][0]
        == "What is shown? A dog. | What colour is it? Brown. | Where is it? On a sofa."
    )
    # truncate: the long dialogue is kept whole; the tokenizer cuts it (counted).
    assert table["text"][1] == " | ".join(f"{q} {a}" for q, a in zip(Q, LONG_A, strict=True))
    assert result.stats["truncated"] == {"texts": 1, "captions": 0}
    assert result.stats["pairs_dropped"] == 0


def test_drop_pairs_keeps_whole_pairs_that_fit(shard, tokenizer) -> None:
    forms = TextForms(long_texts="drop_pairs")
    result = build_rows(*shard, RowsSettings("tiny-clip", "concatenated", text=forms), tokenizer)
    text = result.table.column("text").to_pylist()[1]
    # Pairs 1-2 take 71 of the 77 tokens; the third pair would make 82.
    assert text == f"{Q[0]} {LONG_A[0]} {Q[1]} {LONG_A[1]}"
    assert result.stats["pairs_dropped"] == 1
    assert result.stats["truncated"] == {"texts": 0, "captions": 0}


def test_tokens_are_the_architecture_tokenizers(shard, tokenizer, tmp_path) -> None:
    result = build_rows(*shard, RowsSettings("tiny-clip", "pairs"), tokenizer)
    write_rows(result, tmp_path / "rows.arrow", tmp_path / "stats.json")
    rows = read_rows(tmp_path / "rows.arrow")
    texts = result.table.column("text").to_pylist()
    captions = result.table.column("caption").to_pylist()
    assert rows.tokens.dtype == np.int32 and rows.tokens.shape == (9, 77)
    assert np.array_equal(rows.tokens, tokenizer(texts).numpy())
    assert np.array_equal(rows.caption_tokens, tokenizer(captions).numpy())
    assert not rows.tokens.flags.owndata and not rows.tokens.flags.writeable  # mapped file
    assert rows.keys.to_pylist() == result.table.column("key").to_pylist()
    assert np.array_equal(rows.sample, [0, 1, 2] * 3)
    assert json.loads((tmp_path / "stats.json").read_text()) == result.stats
    assert rows.metadata["images"] == result.stats["images"]


def test_blip2_dialogue_concatenates_the_turns(tmp_path, tokenizer) -> None:
    ingested = write_ingested(tmp_path / "i.parquet", [ingest_row(0), ingest_row(1)])
    turns = ["What do you see in this image?", "What makes this image unique?"]
    dialogue = write_dialogue(
        tmp_path / "d.parquet",
        [
            dialogue_row(0, turns, ["a dog", "it is red"], generator="blip2"),
            dialogue_row(1, turns, ["a cat", ""], generator="blip2", parse_status="empty_answer"),
        ],
    )
    result = build_rows(ingested, dialogue, RowsSettings("tiny-clip", "concatenated"), tokenizer)
    assert result.table.column("text").to_pylist() == [
        "What do you see in this image? a dog What makes this image unique? it is red"
    ]
    assert result.stats["images"]["excluded"] == {"parse_empty_answer": 1}
    assert result.stats["generator"] == "blip2"


def test_a_dialogue_of_another_shard_is_refused(tmp_path, tokenizer) -> None:
    ingested = write_ingested(tmp_path / "i.parquet", [ingest_row(0)])
    dialogue = write_dialogue(tmp_path / "d.parquet", [dialogue_row(40, Q, A)])
    with pytest.raises(
        ValueError, match=r"d\.parquet: 1 keys \(e\.g\. 000000040\) are not in .*i\.parquet"
    ):
        build_rows(ingested, dialogue, RowsSettings("tiny-clip"), tokenizer)
    with pytest.raises(FileNotFoundError, match=r"dialogue shard not found: .*absent\.parquet"):
        build_rows(ingested, tmp_path / "absent.parquet", RowsSettings("tiny-clip"), tokenizer)


def _second_shard(folder: Path) -> tuple[Path, Path]:
    """Shard 00001 of the same generator: one image kept, one without dialogue."""
    ingested = write_ingested(folder / "00001.parquet", [ingest_row(20), ingest_row(21)])
    dialogue = write_dialogue(folder / "llava-00001.parquet", [dialogue_row(20, Q, A)])
    return ingested, dialogue


def test_a_block_of_shards_is_its_shards_rows_end_to_end(shard, tokenizer, tmp_path) -> None:
    """One job turns a block of consecutive shards into one rows file: each shard joined with
    its own dialogue, the rows shard after shard, the counts summed."""
    second = _second_shard(tmp_path)
    settings = RowsSettings("tiny-clip", "pairs")
    block = build_rows([shard[0], second[0]], [shard[1], second[1]], settings, tokenizer)
    parts = [build_rows(*pair, settings, tokenizer) for pair in (shard, second)]
    assert block.table.equals(pa.concat_tables([part.table for part in parts]))
    assert block.table.column("key").to_pylist()[-3:] == ["000000020"] * 3
    stats = block.stats
    assert stats["shards"] == ["00000", "00001"]
    assert stats["images"]["input"] == 14 and stats["rows"] == 12
    assert stats["images"]["excluded"] == {**EXCLUDED, "missing_dialogue": 2}
    assert [item["dialogue"] for item in stats["inputs"]] == [str(shard[1]), str(second[1])]
    with pytest.raises(ValueError, match="2 ingested shards but 1 dialogue shards"):
        build_rows([shard[0], second[0]], [shard[1]], settings, tokenizer)
    # Paired by position: the second shard's keys are not in the first's dialogue.
    with pytest.raises(ValueError, match=r"keys \(e\.g\. 000000020\) are not in .*00000\.parquet"):
        build_rows([shard[0], second[0]], [second[1], shard[1]], settings, tokenizer)


def test_command_writes_rows_and_stats(shard, tmp_path) -> None:
    ingested, dialogue = shard
    params = {
        "architecture": "tiny-clip",
        "sample_form": "concatenated",
        "include_truncated": False,
        "text": {
            "qa_template": "{question} {answer}",
            "pair_separator": " ",
            "long_texts": "truncate",
        },
    }
    second = _second_shard(tmp_path)
    argv = ["train-rows", "--params", json.dumps(params), "--ingested", str(ingested)]
    argv += [str(second[0]), "--dialogue", str(dialogue), str(second[1])]
    argv += ["--output", str(tmp_path / "r.arrow")]
    assert main([*argv, "--stats", str(tmp_path / "s.json")]) == 0
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["images"]["excluded"] == {**EXCLUDED, "missing_dialogue": 2}
    assert stats["rows"] == 4 and stats["shards"] == ["00000", "00001"]
    assert read_rows(tmp_path / "r.arrow").tokens.shape == (4, 77)
    assert rows_settings_from_params(params).text == TextForms()
    with pytest.raises(Exception, match=r"sample_form must be one of \('concatenated', 'pairs'\)"):
        rows_settings_from_params({**params, "sample_form": "triples"})
