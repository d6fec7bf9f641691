"""The report's gallery page: sample images, each with its own caption and dialogue."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from enriched_helpers import enriched_world

from dialogclip.core.io import InputFileError
from dialogclip.report.gallery import spread, write_gallery


class Page(HTMLParser):
    """The gallery's samples as read back from its HTML: per image, its key, the image
    source and the text of its block."""

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[dict[str, str]] = []
        self._in_sample = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "div" and values.get("class") == "sample":
            self.samples.append({"src": "", "text": ""})
            self._in_sample = True
        elif tag == "img" and self._in_sample:
            self.samples[-1]["src"] = values["src"] or ""

    def handle_data(self, data: str) -> None:
        if self._in_sample:
            self.samples[-1]["text"] += data + "\n"


def _read(path: Path) -> list[dict[str, str]]:
    page = Page()
    page.feed(path.read_text())
    return page.samples


def test_spread_takes_first_last_and_evenly_between() -> None:
    assert spread(10, 4) == [0, 3, 6, 9]
    assert spread(3, 12) == [0, 1, 2]  # fewer images than samples: all of them
    assert spread(5, 1) == [0]
    assert spread(0, 4) == [] and spread(5, 0) == []


def test_each_image_shows_its_own_caption_and_dialogue(tmp_path: Path) -> None:
    ingested, dialogue = enriched_world(tmp_path)  # downloaded keys 0, 2-8
    page = tmp_path / "gallery.html"
    samples = write_gallery(ingested, dialogue, 4, page)
    downloaded = ["000000000", *(f"{i:09d}" for i in range(2, 9))]
    assert [s.key for s in samples] == [downloaded[i] for i in (0, 2, 5, 7)]
    read = _read(page)
    assert "4 of 8 downloaded images" in page.read_text()
    assert len(read) == 4
    for sample, shown in zip(samples, read, strict=True):
        key = sample.key
        # the image is the ingested shard's bytes, inline
        assert shown["src"] == "data:image/jpeg;base64," + base64.b64encode(
            b"\xff\xd8 image " + key.encode()
        ).decode("ascii")
        assert f"Caption: caption of {key}" in shown["text"]
        if key.endswith("3"):  # the generators could not decode it: the reason, no pairs
            assert "truncated" in shown["text"] and "question" not in shown["text"]
            continue
        for generator in ("blip2", "llava"):
            assert f"{generator} question {key}\n{generator} answer {key}" in shown["text"]
        # nothing of another image in its block
        others = set(re.findall(r"\d{9}", shown["text"])) - {key}
        assert not others, others


def test_a_failed_parse_shows_the_raw_reply_escaped(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    ingested, dialogue = enriched_world(tmp_path)
    table = pq.read_table(dialogue["llava"][0])
    rows = table.to_pylist()
    rows[0].update(parse_status="no_pairs", questions=[], answers=[],
                   responses=["<b>one</b> question & no answer"])  # fmt: skip
    pq.write_table(table.from_pylist(rows, schema=table.schema), dialogue["llava"][0])
    page = tmp_path / "gallery.html"
    write_gallery(ingested, dialogue, 1, page)
    text = page.read_text()
    assert "llava (parse: no_pairs)" in text
    assert "<pre>&lt;b&gt;one&lt;/b&gt; question &amp; no answer</pre>" in text


def test_dialogue_of_other_images_is_refused_naming_the_shard(tmp_path: Path) -> None:
    ingested, dialogue = enriched_world(tmp_path)
    swapped = {**dialogue, "blip2": dialogue["blip2"][::-1]}
    with pytest.raises(InputFileError, match="dialogue shards of blip2"):
        write_gallery(ingested, swapped, 4, tmp_path / "gallery.html")
    # same names, other rows: the join names the dialogue shard
    other = tmp_path / "other"
    other_ingested, _ = enriched_world(other)
    other_ingested[0].write_bytes(ingested[1].read_bytes())
    with pytest.raises(InputFileError, match=re.escape(str(dialogue["blip2"][0]))):
        write_gallery(other_ingested, dialogue, 4, tmp_path / "gallery.html")
