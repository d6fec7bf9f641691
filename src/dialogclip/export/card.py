"""The dataset card of the exported dataset: ``README.md`` with the Hugging Face card header.

The header's ``configs`` entry points ``datasets.load_dataset(folder)`` at ``data/*.parquet``;
``dataset_info.features`` is the Parquet schema in the card's YAML form (a string column is
``dtype: string``, a list ``list: <type>``, a struct ``struct: [...]``), so that the loaded
dataset has exactly the shards' types, and ``splits`` gives the row count the library checks.
The body says what the rows hold and how they were made (each generator's science, once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa
import yaml

from dialogclip import __version__
from dialogclip.export.settings import DatasetExport

if TYPE_CHECKING:
    from dialogclip.export.dataset import DatasetSummary

CC3M_TERMS = "https://github.com/google-research-datasets/conceptual-captions"
# Hugging Face's size categories (the card's `size_categories`), by upper bound.
SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
)
COLUMNS = (
    ("key", "the CC3M row: its 0-based line in the TSV, 9 digits (line = key + 1)"),
    ("url", "the image URL as written in the CC3M TSV"),
    ("caption", "the CC3M caption (alt-text) as written in the TSV"),
    ("image_sha256", "hex SHA-256 of the bytes downloaded from `url` (to check a re-download)"),
)
GENERATOR_FIELDS = (
    ("status", "`success`, or `image_error` when the downloaded bytes were unusable"),
    ("error_message", "why the image was unusable (null on success)"),
    ("model", "hub id or local checkpoint of the generator"),
    ("revision", "the hub commit the model was pinned to (null for a local checkpoint)"),
    ("backend", "`vllm` or `transformers`: what generated the row"),
    ("prompts", "the exact prompt of each request, in order"),
    ("responses", "the raw reply to each request"),
    ("questions", "the dialogue's questions (BLIP-2: the configured ones; LLaVA: as parsed)"),
    ("answers", "the answers, one per question"),
    ("parse_status", "`ok`, `wrong_count`, `unparsed` or `empty_answer` (null on image error)"),
    ("finish_reasons", "per request: `stop` (end of sequence) or `length` (token limit)"),
)


def hf_feature(arrow_type: pa.DataType) -> dict[str, Any]:
    """One Arrow type as the card's feature entry (without its ``name``)."""
    if pa.types.is_struct(arrow_type):
        return {"struct": hf_features(pa.schema(list(arrow_type)))}
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        inner = hf_feature(arrow_type.value_type)
        return {"list": inner["dtype"] if set(inner) == {"dtype"} else inner}
    if pa.types.is_large_string(arrow_type):
        return {"dtype": "large_string"}
    if pa.types.is_string(arrow_type):
        return {"dtype": "string"}
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return {"dtype": str(arrow_type)}  # int32, int64, float, double ...
    if pa.types.is_boolean(arrow_type):
        return {"dtype": "bool"}
    raise ValueError(f"no dataset-card feature type for the Arrow type {arrow_type}")


def hf_features(schema: pa.Schema) -> list[dict[str, Any]]:
    """The card's ``dataset_info.features``: one entry per column of ``schema``."""
    return [{"name": column.name, **hf_feature(column.type)} for column in schema]


def size_category(n_rows: int) -> str:
    for bound, name in SIZE_CATEGORIES:
        if n_rows < bound:
            return name
    return "n>10M"


def card_header(summary: DatasetSummary, schema: pa.Schema, pretty_name: str) -> dict[str, Any]:
    """The YAML header of the card (what the hub and ``datasets`` read)."""
    return {
        "pretty_name": pretty_name,
        "language": ["en"],
        # The rows inherit CC3M's terms and the generators' licences (the body's last section).
        "license": "other",
        "task_categories": ["image-to-text", "text-to-image"],
        "tags": ["cc3m", "conceptual-captions", "dialogue", "synthetic", "clip"],
        "size_categories": [size_category(summary.n_rows)],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": "data/*.parquet"}],
            }
        ],
        "dataset_info": {
            "features": hf_features(schema),
            "splits": [
                {"name": "train", "num_bytes": summary.arrow_bytes, "num_examples": summary.n_rows}
            ],
            "download_size": summary.n_bytes,
            "dataset_size": summary.arrow_bytes,
        },
    }


def _yaml_block(value: Any) -> list[str]:
    return ["```yaml", yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip(), "```"]


def _generator_section(name: str, record: Any) -> list[str]:
    science = record.science
    revision = science.get("revision") or "(local checkpoint)"
    generated = record.status.get("success", 0)
    ok = record.parse_status.get("ok", 0)
    rate = f"{100 * ok / generated:.1f} %" if generated else "n/a"
    lines = [
        f"### `{name}`",
        "",
        f"- model: `{science.get('model')}` at revision `{revision}`, dtype "
        f"`{science.get('dtype')}`, backend(s): {', '.join(sorted(record.backends)) or 'n/a'}",
        f"- rows: {sum(record.status.values())}; generated: {generated}; image errors: "
        f"{record.status.get('image_error', 0)}; parsed `ok`: {ok} ({rate})",
        "- parse status: "
        + (", ".join(f"{status} {n}" for status, n in sorted(record.parse_status.items())) or "-"),
        "",
        "Prompts and generation settings:",
        "",
        *_yaml_block(
            {
                "generator_settings": science.get("generator_settings"),
                "sampling": science.get("sampling"),
                "image_decoding": science.get("decode"),
            }
        ),
        "",
        "Software versions:",
        "",
        *_yaml_block(record.versions),
        "",
    ]
    return lines


def render_card(settings: DatasetExport, summary: DatasetSummary, schema: pa.Schema) -> str:
    """The whole ``README.md``: YAML header between ``---`` lines, then the Markdown body."""
    generators = list(summary.generators)
    header = yaml.safe_dump(
        card_header(summary, schema, settings.pretty_name), sort_keys=False, allow_unicode=True
    )
    example = generators[-1] if generators else None
    body = [
        f"# {settings.pretty_name}",
        "",
        "Image-text pairs of Conceptual Captions 3M (CC3M), each with a dialogue about the image "
        "written by vision-language models, made by the DialogCLIP pipeline "
        f"(dialogclip {__version__}). One row per image that could be downloaded from CC3M's "
        f"URLs: {summary.n_rows} rows in {len(summary.shards)} Parquet files (`data/`, one per "
        f"CC3M shard), generators: {', '.join(f'`{g}`' for g in generators) or 'none'}.",
        "",
        "## Columns",
        "",
        "| column | meaning |",
        "|---|---|",
        *(f"| `{column}` | {meaning} |" for column, meaning in COLUMNS),
        *(
            f"| `{generator}` | struct: the generator's dialogue (fields below) |"
            for generator in generators
        ),
        "",
        "Fields of each generator's struct:",
        "",
        "| field | meaning |",
        "|---|---|",
        *(f"| `{field}` | {meaning} |" for field, meaning in GENERATOR_FIELDS),
        "",
        "## How it was made",
        "",
        "The rows are the images the pipeline downloaded from the CC3M TSV (img2dataset); each "
        "generator answered its prompts about every image, greedily or as its sampling "
        "settings say; the dialogue was parsed into question/answer pairs.",
        "",
        *(
            line
            for name in generators
            for line in _generator_section(name, summary.generators[name])
        ),
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'rows = load_dataset("path/to/this/folder", split="train")',
        *([f'print(rows[0]["{example}"]["answers"])'] if example else []),
        "",
        "import pandas as pd",
        "",
        'frame = pd.read_parquet("path/to/this/folder/data")',
        "```",
        "",
        *(
            [
                "DuckDB reads the struct fields directly: "
                f"`SELECT key, caption, {example}.questions, {example}.answers "
                "FROM 'data/*.parquet'`.",
                "",
            ]
            if example
            else []
        ),
        "## Licence and use",
        "",
        "Images are not included: CC3M is distributed as URLs, and so is this dataset. The URLs "
        f"and captions come from Conceptual Captions and are subject to its terms ({CC3M_TERMS}). "
        "The generated text was written by the models named above: the licence of each, on its "
        "model card, applies to it.",
        *(["", settings.licence_note.strip()] if settings.licence_note.strip() else []),
        "",
    ]
    return f"---\n{header}---\n\n" + "\n".join(body)
