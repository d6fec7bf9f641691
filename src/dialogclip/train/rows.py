"""Training rows: ingested shards joined on ``key`` with one generator's dialogue shards.

A rows file covers a block of consecutive shards (``core.shards``; one or more): each ingested
shard is joined with the dialogue shard of the same name, and the block's rows are its shards'
rows, shard after shard.

An image of the ingested shard becomes training rows only if its download succeeded, the
generator ran on it and its reply parsed (``parse_status == "ok"``); with
``include_truncated: false`` (the default) a reply that any request ended at the token limit
(``finish_reasons`` contains ``length``) is left out too, since its last answer may stop
mid-sentence. Every other image is counted under the first reason that applies, in this order:

- the ingest status when it is not ``success``: ``failed_to_download``, ``failed_to_resize``,
  ``disallowed_url``, ``malformed_row`` (``docs/architecture.md``, Ingestion);
- ``missing_dialogue``: no row for the key in the dialogue shard;
- ``image_error``: the generator could not use the image bytes (``dialogue_<status>`` for any
  other non-success generator status);
- ``parse_<parse_status>``: ``parse_wrong_count``, ``parse_unparsed`` (LLaVA),
  ``parse_empty_answer`` (BLIP-2);
- ``truncated_reply``: a request stopped at ``max_new_tokens`` (only when not included);
- ``missing_caption``: a success row without a caption (ingestion never writes one).

The dialogue text comes from the raw pairs (``questions``, ``answers``) through
``core.text_forms.TextForms`` (the config's ``text`` section), never from the generator's own
``dialogue`` column, so training and the VQA candidates share one form:

- ``concatenated``: one row per image, the pairs joined (the third tower's input; BLIP-2's two
  turns or LLaVA's three pairs), fitted to the context under ``text.long_texts``;
- ``pairs``: one row per pair, the caption repeated (DRAFT's samples: 3 per LLaVA image).

Texts and captions are tokenised once here, with the open_clip tokenizer of the architecture
(context 77 for CLIP; a longer text is cut by the tokenizer, as open_clip does, and counted).
The rows go to an uncompressed Arrow IPC file (``arrow_files``: memory-mapped by the training
datasets), in key order (the block's shards in order), then sample order:

| column | type | meaning |
|---|---|---|
| ``key`` | string | the image key (joins the embedding caches) |
| ``sample`` | int32 | pair index (``pairs``), 0 (``concatenated``) |
| ``text`` | string | the dialogue sample as text |
| ``caption`` | string | the CC3M caption |
| ``tokens`` | fixed_size_list<int32, L> | ``text`` tokenised |
| ``caption_tokens`` | fixed_size_list<int32, L> | ``caption`` tokenised |
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dialogclip.core.config import ConfigError, section_from_dict
from dialogclip.core.io import write_json_atomic
from dialogclip.core.shards import ShardPaths, shard_paths
from dialogclip.core.text_forms import TextForms
from dialogclip.core.versions import package_versions
from dialogclip.models.openclip import token_count_function
from dialogclip.train.arrow_files import (
    arrow_metadata,
    column_array,
    matrix,
    read_arrow,
    write_arrow_atomic,
)

log = logging.getLogger(__name__)

SAMPLE_FORMS = ("concatenated", "pairs")
SUCCESS = "success"  # ingest status of a usable image; dialogue status of a generated one
IMAGE_ERROR = "image_error"  # dialogue status: the generator could not use the bytes
PARSE_OK = "ok"
FINISH_LENGTH = "length"  # finish reason of a request cut at max_new_tokens
INGEST_COLUMNS = ("key", "caption", "status")
DIALOGUE_COLUMNS = (
    "key",
    "generator",
    "status",
    "questions",
    "answers",
    "parse_status",
    "finish_reasons",
)
METADATA_NAME = "train_rows"
MADE_BY = "train-rows"
TOKENIZE_CHUNK = 4096


@dataclass(frozen=True)
class RowsSettings:
    """What a rows file depends on (the ``train-rows`` command's ``--params``)."""

    architecture: str  # open_clip architecture: its tokenizer and context length
    sample_form: str = "pairs"  # "concatenated" (one row per image) or "pairs" (one per pair)
    include_truncated: bool = False  # keep replies cut at the generator's token limit
    text: TextForms = field(default_factory=TextForms)  # the config's `text` section

    def __post_init__(self) -> None:
        if self.sample_form not in SAMPLE_FORMS:
            raise ConfigError(
                f"sample_form must be one of {SAMPLE_FORMS}, got {self.sample_form!r}"
            )


def rows_settings_from_params(params: dict[str, Any]) -> RowsSettings:
    """Build the settings from the ``--params`` JSON a rule passes."""
    return section_from_dict(RowsSettings, params, "train rows")


# --- tokenizer ------------------------------------------------------------------------------


def load_tokenizer(architecture: str) -> Any:
    """open_clip's tokenizer for ``architecture`` (our ``tiny-clip`` included)."""
    import open_clip

    from dialogclip.models.openclip import register_model_configs

    register_model_configs()
    return open_clip.get_tokenizer(architecture)


def tokenize(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """texts (N) -> [N, context] int32."""
    context = int(tokenizer.context_length)
    if not texts:
        return np.zeros((0, context), dtype=np.int32)
    chunks = [
        tokenizer(list(texts[start : start + TOKENIZE_CHUNK])).numpy().astype(np.int32)
        for start in range(0, len(texts), TOKENIZE_CHUNK)
    ]
    return np.concatenate(chunks)


# --- joining and selecting ------------------------------------------------------------------


def _read_columns(path: Path, columns: Sequence[str], what: str) -> dict[str, list[Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    names = pq.read_schema(path).names
    missing = [name for name in columns if name not in names]
    if missing:
        raise ValueError(f"{path}: not a {what} (missing columns {missing})")
    return pq.read_table(path, columns=list(columns)).to_pydict()


def exclusion_reason(
    ingest_status: str, dialogue: dict[str, Any] | None, include_truncated: bool
) -> str | None:
    """Why an image gives no training row (None: it does); see the module docstring."""
    if ingest_status != SUCCESS:
        return ingest_status
    if dialogue is None:
        return "missing_dialogue"
    if dialogue["status"] != SUCCESS:
        return (
            IMAGE_ERROR if dialogue["status"] == IMAGE_ERROR else f"dialogue_{dialogue['status']}"
        )
    if dialogue["parse_status"] != PARSE_OK:
        return f"parse_{dialogue['parse_status']}"
    if not include_truncated and FINISH_LENGTH in (dialogue["finish_reasons"] or []):
        return "truncated_reply"
    return None


@dataclass
class RowsResult:
    """The rows of one shard and the counts of what was left out."""

    table: pa.Table
    stats: dict[str, Any]


def build_rows(
    ingested: ShardPaths,
    dialogue: ShardPaths,
    settings: RowsSettings,
    tokenizer: Any | None = None,
) -> RowsResult:
    """Join, select, form and tokenise the rows of one shard or a block of them (see the module
    docstring): ``ingested`` and ``dialogue`` are paths, or sequences of paths paired by
    position."""
    ingested, dialogue = shard_paths(ingested), shard_paths(dialogue)
    if len(ingested) != len(dialogue):
        # A dialogue shard of another shard fails below too (its keys are not the shard's).
        raise ValueError(
            f"{len(ingested)} ingested shards but {len(dialogue)} dialogue shards: one each"
        )
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(settings.architecture)
    context = int(tokenizer.context_length)
    n_tokens = token_count_function(tokenizer)

    excluded: Counter[str] = Counter()
    keys: list[str] = []
    samples: list[int] = []
    texts: list[str] = []
    captions: list[str] = []
    image_captions: list[str] = []  # one per kept image
    generators: set[str] = set()
    n_images = 0
    pairs_dropped = 0
    for ingested_shard, dialogue_shard in zip(ingested, dialogue, strict=True):
        images = _read_columns(ingested_shard, INGEST_COLUMNS, "ingested shard")
        generated = _read_columns(dialogue_shard, DIALOGUE_COLUMNS, "dialogue shard")
        by_key = _dialogue_by_key(generated, ingested_shard, dialogue_shard)
        generators.update(generated["generator"])
        n_images += len(images["key"])
        for key, caption, status in zip(
            images["key"], images["caption"], images["status"], strict=True
        ):
            row = by_key.get(key)
            reason = exclusion_reason(status, row, settings.include_truncated)
            if reason is None and not caption:
                reason = "missing_caption"  # cannot happen for a success row; counted if it does
            if reason is not None:
                excluded[reason] += 1
                continue
            if settings.sample_form == "concatenated":
                text, dropped = settings.text.fitted_dialogue(
                    row["questions"], row["answers"], n_tokens, context
                )
                pairs_dropped += dropped
                forms = [text]
            else:
                forms = settings.text.pairs(row["questions"], row["answers"])
            image_captions.append(caption)
            for sample, text in enumerate(forms):
                keys.append(key)
                samples.append(sample)
                texts.append(text)
                captions.append(caption)

    tokens, caption_tokens = tokenize(tokenizer, texts), tokenize(tokenizer, captions)
    n_kept = len(image_captions)
    stats = {
        "shards": [path.stem for path in ingested],
        "generator": generators.pop() if len(generators) == 1 else sorted(generators),
        "architecture": settings.architecture,
        "sample_form": settings.sample_form,
        "include_truncated": settings.include_truncated,
        "text": asdict(settings.text),
        "context_length": context,
        "images": {
            "input": n_images,
            "kept": n_kept,
            "excluded": dict(sorted(excluded.items())),
            "n_excluded": sum(excluded.values()),
        },
        "rows": len(keys),
        "rows_per_image": round(len(keys) / n_kept, 4) if n_kept else None,
        # Longer than the context, so cut by the tokenizer (after drop_pairs, if chosen):
        # rows whose text is, kept images whose caption is.
        "truncated": {
            "texts": sum(n_tokens(text) > context for text in texts),
            "captions": sum(n_tokens(caption) > context for caption in image_captions),
        },
        "pairs_dropped": pairs_dropped,
        "inputs": [
            {"ingested": str(shard), "dialogue": str(generated_shard)}
            for shard, generated_shard in zip(ingested, dialogue, strict=True)
        ],
    }
    table = pa.Table.from_arrays(
        [
            pa.array(keys, pa.string()),
            pa.array(samples, pa.int32()),
            pa.array(texts, pa.string()),
            pa.array(captions, pa.string()),
            _fixed_size(tokens),
            _fixed_size(caption_tokens),
        ],
        schema=rows_schema(context),
    )
    return RowsResult(table, stats)


def _dialogue_by_key(
    generated: dict[str, list[Any]], ingested: Path, dialogue: Path
) -> dict[str, dict[str, Any]]:
    rows = [
        dict(zip(generated, values, strict=True))
        for values in zip(*generated.values(), strict=True)
    ]
    by_key = {row["key"]: row for row in rows}
    if len(by_key) != len(rows):
        raise ValueError(f"{dialogue}: a key appears more than once; regenerate the shard")
    ingested_keys = set(pq.read_table(ingested, columns=["key"]).column("key").to_pylist())
    foreign = sorted(set(by_key) - ingested_keys)
    if foreign:
        raise ValueError(
            f"{dialogue}: {len(foreign)} keys (e.g. {foreign[0]}) are not in {ingested}: the "
            "dialogue was generated from another shard; regenerate it"
        )
    return by_key


def rows_schema(context: int) -> pa.Schema:
    tokens = pa.list_(pa.int32(), context)
    return pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("sample", pa.int32(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("caption", pa.string(), nullable=False),
            pa.field("tokens", tokens, nullable=False),
            pa.field("caption_tokens", tokens, nullable=False),
        ]
    )


def _fixed_size(tokens: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(tokens).reshape(-1), pa.int32()), tokens.shape[1]
    )


def write_rows(result: RowsResult, output: str | Path, stats_path: str | Path) -> None:
    """Write the rows file (metadata: the stats and package versions) and the stats JSON."""
    versions = package_versions(("dialogclip", "open_clip_torch", "pyarrow"))
    write_arrow_atomic(
        result.table, output, {METADATA_NAME: {**result.stats, "versions": versions}}
    )
    write_json_atomic(result.stats, stats_path)
    images = result.stats["images"]
    log.info(
        "%s: %d rows from %d of %d images; excluded %s",
        output,
        result.stats["rows"],
        images["kept"],
        images["input"],
        images["excluded"] or "none",
    )


# --- reading --------------------------------------------------------------------------------


@dataclass
class TrainingRows:
    """A rows file as read: keys (Arrow strings) and read-only [N, L] int32 token views of the
    memory-mapped file."""

    path: Path
    keys: pa.Array  # (N) string
    sample: np.ndarray  # (N,) int32
    tokens: np.ndarray  # [N, L] int32
    caption_tokens: np.ndarray  # [N, L] int32
    metadata: dict[str, Any]

    def __len__(self) -> int:
        return len(self.keys)


def read_rows(path: str | Path) -> TrainingRows:
    """Map the rows file ``path``."""
    path = Path(path)
    table = read_arrow(path, MADE_BY)
    metadata = arrow_metadata(table).get(METADATA_NAME)
    expected = rows_schema(1).names
    if metadata is None or table.schema.names != expected:
        raise ValueError(f"{path}: not a training rows file (columns {table.schema.names})")
    sample = column_array(table.column("sample")).to_numpy(zero_copy_only=False)
    return TrainingRows(
        path,
        column_array(table.column("key")),
        sample,
        matrix(table.column("tokens")),
        matrix(table.column("caption_tokens")),
        metadata,
    )
