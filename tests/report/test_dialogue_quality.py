"""Dialogue-quality statistics: CLIPScore against naive references, counts, token lengths."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dialogclip.core.text_forms import TextForms
from dialogclip.models.openclip import ClipSpec, load_clip, make_tiny_clip
from dialogclip.report.dialogue_quality import (
    clipscore,
    describe,
    dialogue_quality,
    in_sample,
    length_stats,
    token_counter,
)
from dialogclip.report.settings import DialogueQualitySettings, ReportClip


def test_clipscore_matches_a_naive_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(9, 16, generator=generator) * 3
    texts = torch.randn(9, 16, generator=generator)
    texts[0] = -images[0]  # a negative cosine: clipped to 0
    expected = []
    for image, text in zip(images.tolist(), texts.tolist(), strict=True):
        dot = sum(a * b for a, b in zip(image, text, strict=True))
        cos = dot / (math.sqrt(sum(a * a for a in image)) * math.sqrt(sum(b * b for b in text)))
        expected.append(2.5 * max(cos, 0.0))
    assert expected[0] == 0.0
    assert torch.allclose(clipscore(images, texts), torch.tensor(expected), atol=1e-6)
    assert torch.allclose(clipscore(images, texts, weight=1.0), torch.tensor(expected) / 2.5)


def test_describe_matches_numpy() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    stats = describe(values)
    assert stats["n"] == 8 and stats["min"] == 1.0 and stats["max"] == 9.0
    assert stats["mean"] == pytest.approx(np.mean(values))
    assert stats["std"] == pytest.approx(np.std(values))
    assert stats["median"] == pytest.approx(np.median(values))
    assert stats["p95"] == pytest.approx(np.percentile(values, 95))
    assert describe([])["mean"] is None


def test_length_stats_count_texts_beyond_the_context() -> None:
    stats = length_stats([10, 77, 78, 80, 10], context_length=77)
    assert stats["beyond_context"] == 2 and stats["share_beyond_context"] == 0.4
    assert stats["histogram"] == {"10": 2, "77": 1, "78": 1, "80": 1}


def test_sample_depends_on_keys_and_seed_only() -> None:
    keys = [f"{i:09d}" for i in range(50)]
    sample = in_sample(keys, 10, seed=0)
    assert len(sample) == 10 and sample == in_sample(reversed(keys), 10, seed=0)
    assert sample != in_sample(keys, 10, seed=1)
    assert in_sample(keys, None, seed=0) == set(keys) == in_sample(keys, 80, seed=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    path = make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny.safetensors", seed=0)
    return str(path), load_clip(ClipSpec("tiny-clip", str(path)))


def test_token_counter_counts_before_truncation(tiny) -> None:
    _, loaded = tiny
    count = token_counter(loaded.tokenizer)
    text = "a red triangle on a light blue background"
    tokens = loaded.tokenizer([text])[0]
    assert count(text) == int((tokens != 0).sum())  # start + words + end, no padding
    long = " ".join(["word"] * 100)
    assert count(long) == 102 and int((loaded.tokenizer([long])[0] != 0).sum()) == 77


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buffer, format="JPEG")
    return buffer.getvalue()


COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (120, 120, 0), (0, 90, 160)]


def _write_shards(folder: Path) -> tuple[Path, Path]:
    """One ingested shard (5 rows, one failed download) and its dialogue shard (4 rows: two
    parsed, one unparsed without pairs, one image error)."""
    ingest = folder / "ingest" / "00000.parquet"
    dialogue = folder / "dialogue" / "00000.parquet"
    ingest.parent.mkdir(parents=True)
    dialogue.parent.mkdir(parents=True)
    keys = [f"{i:09d}" for i in range(5)]
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "key": key,
                    "caption": f"caption number {i}",
                    "status": "failed_to_download" if i == 4 else "success",
                    "jpg": None if i == 4 else _jpeg(COLORS[i]),
                }
                for i, key in enumerate(keys)
            ]
        ),
        ingest,
    )
    long_answer = " ".join(["word"] * 90)  # one pair beyond 77 CLIP tokens
    rows = [
        ("success", "ok", ["what is it?", "where?"], ["a red thing", "on a table"], ["stop"] * 2,
         [5, 4]),
        ("success", "ok", ["what is it?", "why?"], ["a word", long_answer], ["length"], [160]),
        ("success", "unparsed", [], [], ["stop"], [7]),
        ("image_error", None, [], [], [], []),
    ]  # fmt: skip
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "key": keys[i],
                    "status": status,
                    "parse_status": parse,
                    "questions": q,
                    "answers": a,
                    "finish_reasons": reasons,
                    "generated_tokens": generated,
                }
                for i, (status, parse, q, a, reasons, generated) in enumerate(rows)
            ]
        ),
        dialogue,
    )
    return dialogue, ingest


def test_statistics_of_one_generator(tmp_path: Path, tiny) -> None:
    checkpoint, loaded = tiny
    dialogue, ingest = _write_shards(tmp_path)
    text = TextForms(qa_template="Q: {question} A: {answer}", pair_separator=" | ")
    settings = DialogueQualitySettings(sample=None)
    summary, table = dialogue_quality(
        "llava", [dialogue], [ingest], ReportClip("tiny-clip", checkpoint), settings, text,
        batch_size=2, device="cpu",
    )  # fmt: skip
    assert summary["rows"] == {
        "dialogue_rows": 4,
        "status": {"image_error": 1, "success": 3},
        "generated": 3,
        "with_dialogue": 2,
    }
    assert summary["parse"] == {"ok": 2, "unparsed": 1}
    assert summary["parse_rate"] == pytest.approx(2 / 3)
    assert summary["finish_reasons"] == {"length": 1, "stop": 3}
    assert summary["finish_reason_shares"]["stop"] == 0.75

    # CLIPScore of the two images with dialogue, recomputed by hand with the same model
    count = token_counter(loaded.tokenizer)
    dialogues = [
        "Q: what is it? A: a red thing | Q: where? A: on a table",
        "Q: what is it? A: a word | Q: why? A: " + " ".join(["word"] * 90),
    ]
    captions = ["caption number 0", "caption number 1"]
    with torch.inference_mode():
        pixels = torch.stack(
            [loaded.preprocess(Image.open(io.BytesIO(_jpeg(c)))) for c in COLORS[:2]]
        )
        image = loaded.model.encode_image(pixels)

        def score(texts: list[str]) -> list[float]:
            emb = loaded.model.encode_text(
                loaded.tokenizer(["A photo depicts " + t for t in texts])
            )
            cos = torch.nn.functional.cosine_similarity(image, emb)
            return [2.5 * max(c, 0.0) for c in cos.tolist()]

    expected_dialogue, expected_caption = score(dialogues), score(captions)
    records = table.to_pylist()
    assert [r["key"] for r in records] == ["000000000", "000000001", "000000002"]
    assert [r["clipscore_dialogue"] for r in records[:2]] == pytest.approx(
        expected_dialogue, abs=1e-5
    )
    assert [r["clipscore_caption"] for r in records[:2]] == pytest.approx(
        expected_caption, abs=1e-5
    )
    assert records[2]["clipscore_dialogue"] is None  # unparsed: nothing to score
    score_summary = summary["clipscore"]
    assert score_summary["n_images"] == 2
    assert score_summary["dialogue"]["mean"] == pytest.approx(np.mean(expected_dialogue), abs=1e-5)
    assert score_summary["caption"]["mean"] == pytest.approx(np.mean(expected_caption), abs=1e-5)
    assert sum(score_summary["histogram"]["dialogue"]) == 2

    tokens = summary["tokens"]
    assert tokens["context_length"] == 77
    assert [r["dialogue_tokens"] for r in records] == [
        count(dialogues[0]),
        count(dialogues[1]),
        None,
    ]
    assert tokens["dialogue"]["beyond_context"] == 1 and tokens["dialogue"]["n"] == 2
    assert tokens["pair"]["n"] == 4 and tokens["pair"]["beyond_context"] == 1
    assert tokens["dropped_pairs"] == 0  # truncate: the tokenizer cuts, no pair is dropped
    assert tokens["caption"]["share_beyond_context"] == 0.0 and tokens["caption"]["n"] == 3
    assert tokens["generated_per_image"]["mean"] == pytest.approx((9 + 160 + 7) / 3)
    assert summary["clip"]["context_length"] == 77 and summary["clip"]["quickgelu_used"] is False


def test_sample_and_drop_pairs(tmp_path: Path, tiny) -> None:
    checkpoint, _ = tiny
    dialogue, ingest = _write_shards(tmp_path)
    text = TextForms(long_texts="drop_pairs")
    summary, table = dialogue_quality(
        "blip2", [dialogue], [ingest], ReportClip("tiny-clip", checkpoint),
        DialogueQualitySettings(sample=1, seed=3), text, device="cpu",
    )  # fmt: skip
    scored = [r["key"] for r in table.to_pylist() if r["clipscore_dialogue"] is not None]
    assert scored == sorted(in_sample(["000000000", "000000001"], 1, seed=3))
    assert summary["clipscore"]["n_images"] == 1
    # drop_pairs: the long second pair of image 1 is dropped, the dialogue keeps the first
    assert (
        summary["tokens"]["dropped_pairs"] == 1 and summary["tokens"]["long_texts"] == "drop_pairs"
    )
    assert [r["dropped_pairs"] for r in table.to_pylist()] == [0, 1, 0]


@pytest.mark.jobs
def test_command_writes_summary_and_per_image_table(tmp_path: Path, tiny) -> None:
    checkpoint, _ = tiny
    dialogue, ingest = _write_shards(tmp_path)
    params = {
        "text": {"qa_template": "{question} {answer}", "long_texts": "truncate"},
        "clip": {"architecture": "tiny-clip", "pretrained": checkpoint, "quickgelu": "auto"},
        "dialogue_quality": {"sample": None, "prefix": "A photo depicts", "weight": 2.5, "seed": 0},
    }  # fmt: skip
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "dialogclip.cli", "dialogue-quality", "--params", json.dumps(params),
         "--generator", "llava", "--dialogue", str(dialogue), "--ingested", str(ingest),
         "--output", str(out / "llava.json"), "--per-image", str(out / "llava.parquet"),
         "--batch-size", "3", "--threads", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "llava.json").read_text())
    assert summary["generator"] == "llava" and summary["clipscore"]["n_images"] == 2
    assert pq.read_table(out / "llava.parquet").num_rows == 3


def test_a_dialogue_shard_without_its_ingested_shard_is_named(tmp_path: Path, tiny) -> None:
    checkpoint, _ = tiny
    dialogue, _ = _write_shards(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"{dialogue}: no ingested shard named 00000"):
        dialogue_quality(
            "llava", [dialogue], [tmp_path / "00001.parquet"], ReportClip("tiny-clip", checkpoint),
            DialogueQualitySettings(), TextForms(), device="cpu",
        )  # fmt: skip
