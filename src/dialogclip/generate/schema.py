"""The Arrow schema of ``results/dialogue/{generator}/{shard}.parquet`` and its rows.

One row per successfully downloaded image of the ingested shard, keyed by ``key``. Per-turn
columns are lists with one entry per request (BLIP-2: one per question; LLaVA: one). The pairs
are stored raw (``questions``, ``answers``): the text a CLIP tower reads is made from them by the
reader with the ``text`` section (``dialogclip.core.text_forms``), so editing that form never
reruns generation. docs/architecture.md ("Dialogue generation") documents every column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from dialogclip.generate.generators import Dialogue

STATUS_SUCCESS = "success"  # the generator ran on the image
STATUS_IMAGE_ERROR = "image_error"  # the bytes could not be used (error_message says why)

_strings = pa.list_(pa.string())
_ints = pa.list_(pa.int32())

DIALOGUE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("generator", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("revision", pa.string()),
        pa.field("backend", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_message", pa.string()),
        pa.field("prompts", _strings),
        pa.field("responses", _strings),
        pa.field("questions", _strings),
        pa.field("answers", _strings),
        pa.field("parse_status", pa.string()),
        pa.field("finish_reasons", _strings),
        pa.field("prompt_tokens", _ints),
        pa.field("generated_tokens", _ints),
    ]
)


@dataclass(frozen=True)
class RowContext:
    """The columns every row of one output file shares."""

    generator: str
    model: str
    revision: str | None
    backend: str


def dialogue_row(key: str, url: str | None, dialogue: Dialogue, ctx: RowContext) -> dict[str, Any]:
    """The output row of an image the generator ran on."""
    return {
        **_common(key, url, ctx),
        "status": STATUS_SUCCESS,
        "error_message": None,
        "prompts": dialogue.prompts,
        "responses": dialogue.responses,
        "questions": dialogue.questions,
        "answers": dialogue.answers,
        "parse_status": dialogue.parse_status,
        "finish_reasons": dialogue.finish_reasons,
        "prompt_tokens": dialogue.prompt_tokens,
        "generated_tokens": dialogue.generated_tokens,
    }


def error_row(key: str, url: str | None, error: str, ctx: RowContext) -> dict[str, Any]:
    """The output row of an image whose bytes could not be decoded (kept, never dropped)."""
    row = dict.fromkeys(DIALOGUE_SCHEMA.names)
    row.update(_common(key, url, ctx))
    row.update({"status": STATUS_IMAGE_ERROR, "error_message": error})
    return row


def _common(key: str, url: str | None, ctx: RowContext) -> dict[str, Any]:
    return {
        "key": key,
        "url": url,
        "generator": ctx.generator,
        "model": ctx.model,
        "revision": ctx.revision,
        "backend": ctx.backend,
    }


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with every schema column) as a table of :data:`DIALOGUE_SCHEMA`."""
    return pa.Table.from_pylist(rows, schema=DIALOGUE_SCHEMA)
