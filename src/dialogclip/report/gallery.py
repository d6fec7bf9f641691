"""The report's gallery: sample images with their caption and every generator's dialogue.

One self-contained HTML page (``results/report/gallery.html``: the images inline as ``data:``
URIs, so the page travels alone and ``snakemake --report`` embeds it whole). The samples are
spread evenly over the downloaded images in key order, so a rerun shows the same ones and a
larger dataset still shows its beginning, middle and end. The rows come from the same checked
join of ingested and dialogue shards as the dataset export
(:func:`dialogclip.export.dataset.enriched_shard`): a dialogue shown beside the wrong image is
an error, not a picture.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from dialogclip.core.io import atomic_path, read_parquet
from dialogclip.export.dataset import check_shard_names, enriched_shard

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One image of the gallery: its key, JPEG bytes, caption, and per generator the row of
    its dialogue shard (status, prompts, responses, questions, answers, parse_status, ...)."""

    key: str
    jpg: bytes
    caption: str | None
    dialogue: dict[str, dict[str, Any]] = field(default_factory=dict)


def spread(n_items: int, n: int) -> list[int]:
    """``min(n, n_items)`` indices spread evenly over ``range(n_items)``, first and last
    included (one item: the first)."""
    n = min(n, n_items)
    if n <= 1:
        return list(range(n))
    return [round(i * (n_items - 1) / (n - 1)) for i in range(n)]


def gallery_samples(
    ingested: Sequence[Path], dialogue: Mapping[str, Sequence[Path]], n: int
) -> tuple[list[Sample], int]:
    """``n`` downloaded images spread over ``ingested`` (key order), with their dialogue from
    ``dialogue`` (per generator, one shard per ingested shard, the same file names); and the
    number of downloaded images they were drawn from. Only the shards holding a sample are
    joined and read whole (at most ``n`` of CC3M's 332): the others give their status column."""
    check_shard_names(ingested, dialogue)
    counts = [_downloaded(Path(path)) for path in ingested]
    chosen = spread(sum(counts), n)
    samples = []
    for index, (path, count, offset) in enumerate(zip(ingested, counts, _offsets(counts),
                                                      strict=True)):  # fmt: skip
        rows = [i - offset for i in chosen if offset <= i < offset + count]
        if not rows:
            continue
        shard = {generator: Path(paths[index]) for generator, paths in dialogue.items()}
        picked = enriched_shard(Path(path), shard).take(pa.array(rows))
        images = _images(Path(path), picked["key"])
        for row in picked.to_pylist():
            samples.append(
                Sample(
                    key=row["key"],
                    jpg=images[row["key"]],
                    caption=row["caption"],
                    dialogue={generator: row[generator] for generator in dialogue},
                )
            )
    return samples, sum(counts)


def _downloaded(ingested: Path) -> int:
    """The downloaded rows of an ingested shard (the rows the generators ran on)."""
    status = read_parquet(ingested, columns=["status"], what="ingested shard")["status"]
    return pc.sum(pc.equal(status, "success")).as_py() or 0


def _offsets(counts: Sequence[int]) -> list[int]:
    offsets, total = [], 0
    for count in counts:
        offsets.append(total)
        total += count
    return offsets


def _images(ingested: Path, keys: pa.ChunkedArray) -> dict[str, bytes]:
    table = read_parquet(ingested, columns=["key", "jpg"], what="ingested shard")
    table = table.filter(pc.is_in(table["key"], value_set=keys.combine_chunks()))
    return dict(zip(table["key"].to_pylist(), table["jpg"].to_pylist(), strict=True))


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
.sample { display: flex; gap: 1.2em; border-top: 1px solid #ccc; padding: 0.8em 0; }
.sample img { width: 192px; height: auto; image-rendering: pixelated; flex: none; }
.sample h2 { font-size: 1em; margin: 0 0 0.3em; }
.caption { font-style: italic; }
dl { margin: 0.2em 0 0.6em; } dt { color: #555; } dd { margin: 0 0 0.2em 1.2em; }
.generator { font-weight: bold; margin-top: 0.4em; }
.failed { color: #b00; }
"""


def render_gallery(samples: Sequence[Sample], n_images: int | None = None) -> str:
    """The gallery page (HTML) of ``samples``; ``n_images``: how many images they were drawn
    from, for the heading."""
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>DialogCLIP gallery</title>", f"<style>{STYLE}</style></head><body>",
           "<h1>Sample images with their caption and dialogue</h1>"]  # fmt: skip
    drawn_from = f" of {n_images}" if n_images is not None else ""
    out.append(f"<p>{len(samples)}{drawn_from} downloaded images, spread evenly in key order.</p>")
    if not samples:
        out.append("<p>No downloaded image yet.</p>")
    for sample in samples:
        data = base64.b64encode(sample.jpg).decode("ascii")
        out.append('<div class="sample">')
        out.append(f'<img src="data:image/jpeg;base64,{data}" alt="image {sample.key}">')
        out.append(f"<div><h2>{sample.key}</h2>")
        out.append(f'<p class="caption">Caption: {html.escape(sample.caption or "")}</p>')
        for generator, row in sample.dialogue.items():
            out += _dialogue_html(generator, row)
        out.append("</div></div>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _dialogue_html(generator: str, row: Mapping[str, Any]) -> list[str]:
    status = row["status"]
    if status != "success":
        reason = html.escape(row.get("error_message") or status)
        return [f'<p class="generator">{generator}</p>', f'<p class="failed">{reason}</p>']
    parse = row.get("parse_status") or "ok"
    head = generator if parse == "ok" else f"{generator} (parse: {html.escape(parse)})"
    lines = [f'<p class="generator">{head}</p>', "<dl>"]
    for question, answer in zip(row["questions"] or [], row["answers"] or [], strict=False):
        lines.append(f"<dt>{html.escape(question)}</dt><dd>{html.escape(answer)}</dd>")
    lines.append("</dl>")
    if parse != "ok":  # what the parser could not read, as the model wrote it
        for response in row["responses"] or []:
            lines.append(f"<pre>{html.escape(response)}</pre>")
    return lines


def write_gallery(
    ingested: Sequence[Path],
    dialogue: Mapping[str, Sequence[Path]],
    n: int,
    path: Path,
) -> list[Sample]:
    """Write the gallery page of ``n`` samples to ``path`` (atomically); the samples."""
    samples, n_images = gallery_samples(ingested, dialogue, n)
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(render_gallery(samples, n_images))
    log.info("gallery: %d of %d images -> %s", len(samples), n_images, path)
    return samples
