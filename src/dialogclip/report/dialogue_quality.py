"""Dialogue-quality statistics of one generator: CLIPScore, parse success, finish reasons, lengths.

CLIPScore (Hessel, Holtzman, Forbes, Le Bras, Choi: "CLIPScore: A Reference-free Evaluation
Metric for Image Captioning", EMNLP 2021, arXiv:2104.08718) scores a text against an image as
``w * max(cos(E_text, E_image), 0)`` with ``w = 2.5``, the text prefixed with
``"A photo depicts"``; the corpus score is the mean over images. This module follows the
reference implementation, github.com/jmhessel/clipscore, ``clipscore.py`` at commit
1036465276513621f77f1c2208d742e4a430781f: the prefix and one space before the text, the
tokenizer truncating to the context, the model's own image preprocessing, unit-normalised
embeddings, ``w * clip(cos, 0, None)`` per image. Differences (choice): any OpenCLIP model
(``report.clip``; the paper's is OpenAI ViT-B/32, this config's default), and a seeded sample
of the images (``report.dialogue_quality.sample``) instead of all of them.

Two scores per sampled image, on the same images: the dialogue (the concatenated pairs in the
configured text form, ``text:``, fitted under ``text.long_texts`` as the third tower reads it)
and the CC3M caption. Counts cover every generated row: parse statuses, finish reasons per
request, CLIP token lengths of dialogues, single pairs and captions (start/end tokens included)
and the share of them beyond the text tower's context, and generated tokens per image.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dialogclip.core.images import ImageDecodeError, decode_rgb
from dialogclip.core.machine import torch_device
from dialogclip.core.text_forms import TextForms
from dialogclip.core.token_lengths import describe, length_stats, measure_dialogue
from dialogclip.models.openclip import token_count_function
from dialogclip.report.settings import DialogueQualitySettings, ReportClip

log = logging.getLogger(__name__)

CLIPSCORE_BINS = 25  # histogram bins over [0, w]
DIALOGUE_COLUMNS = [
    "key",
    "status",
    "parse_status",
    "questions",
    "answers",
    "finish_reasons",
    "generated_tokens",
]


def clipscore(image_emb: Any, text_emb: Any, weight: float = 2.5) -> Any:
    """Per-pair CLIPScore: ``weight * max(cos(image_i, text_i), 0)``.

    image_emb, text_emb: [N, D] tensors (any scale; normalised here) -> [N] float32.
    """
    import torch.nn.functional as F

    cos = (F.normalize(image_emb.float(), dim=-1) * F.normalize(text_emb.float(), dim=-1)).sum(-1)
    return weight * cos.clamp(min=0.0)


def in_sample(keys: Iterable[str], size: int | None, seed: int) -> set[str]:
    """The ``size`` keys with the smallest salted SHA-1 (all keys when ``size`` is None).

    Depends only on the keys and the seed: both generators and every rerun score the same
    images, whatever the shard order.
    """
    keys = list(keys)
    if size is None or size >= len(keys):
        return set(keys)
    rank = sorted(keys, key=lambda key: hashlib.sha1(f"{seed}:{key}".encode()).hexdigest())
    return set(rank[:size])


@dataclass(slots=True)
class Row:
    """One generated image of one shard (slots: millions of them at full scale)."""

    key: str
    shard: str
    parse_status: str | None
    n_pairs: int
    caption: str | None
    dialogue: str | None  # fitted under text.long_texts (None when there is no pair)
    dialogue_tokens: int | None  # of the full concatenated dialogue, before fitting
    pair_tokens: list[int] = field(default_factory=list)
    caption_tokens: int | None = None
    dropped_pairs: int = 0
    generated_tokens: int = 0
    clipscore_dialogue: float | None = None
    clipscore_caption: float | None = None


def shard_pairs(dialogue_shards: Sequence[Path], ingested_shards: Sequence[Path]) -> list[tuple]:
    """Match each dialogue shard with the ingested shard of the same name."""
    by_name = {Path(path).name: Path(path) for path in ingested_shards}
    pairs = []
    for path in dialogue_shards:
        ingested = by_name.get(Path(path).name)
        if ingested is None:
            raise FileNotFoundError(
                f"{path}: no ingested shard named {Path(path).name} among the inputs"
            )
        pairs.append((Path(path), ingested))
    return pairs


def read_rows(
    dialogue: Path,
    ingested: Path,
    text: TextForms,
    count: Callable[[str], int],
    context_length: int,
    finish_reasons: Counter[str],
    parse: Counter[str],
    statuses: Counter[str],
) -> list[Row]:
    """The generated rows of one shard with their texts and token counts (counters updated)."""
    captions = dict(
        zip(
            *pq.read_table(ingested, columns=["key", "caption"]).to_pydict().values(),
            strict=True,
        )
    )
    rows = []
    for record in pq.read_table(dialogue, columns=DIALOGUE_COLUMNS).to_pylist():
        statuses[record["status"]] += 1
        if record["status"] != "success":
            continue
        parse[record["parse_status"] or "none"] += 1
        finish_reasons.update(record["finish_reasons"] or [])
        questions, answers = record["questions"] or [], record["answers"] or []
        caption = captions.get(record["key"])
        row = Row(
            key=record["key"],
            shard=dialogue.stem,
            parse_status=record["parse_status"],
            n_pairs=len(questions),
            caption=caption,
            dialogue=None,
            dialogue_tokens=None,
            caption_tokens=None if caption is None else count(caption),
            generated_tokens=sum(record["generated_tokens"] or []),
        )
        if questions:
            row.pair_tokens = [count(pair) for pair in text.pairs(questions, answers)]
            measured = measure_dialogue(text, questions, answers, count, context_length)
            row.dialogue_tokens = measured.tokens
            row.dialogue, row.dropped_pairs = measured.fitted, measured.dropped_pairs
        rows.append(row)
    return rows


def load_images(ingested: Path, keys: set[str]) -> dict[str, bytes]:
    """The JPEG bytes of ``keys`` in one ingested shard."""
    if not keys:
        return {}
    table = pq.read_table(ingested, columns=["key", "jpg"], filters=[("key", "in", sorted(keys))])
    return dict(zip(table["key"].to_pylist(), table["jpg"].to_pylist(), strict=True))


def score_rows(
    rows: Sequence[Row],
    images: dict[str, bytes],
    loaded: Any,
    settings: DialogueQualitySettings,
    batch_size: int,
    device: Any,
) -> int:
    """Fill ``clipscore_dialogue`` / ``clipscore_caption`` of ``rows`` (all in ``images``);
    returns how many images could not be decoded (left unscored)."""
    import torch

    from dialogclip.models.text_encoders import autocast_for

    device = torch.device(device)
    model, preprocess, tokenizer = loaded.model, loaded.preprocess, loaded.tokenizer
    prefix = settings.prefix if settings.prefix.endswith(" ") else settings.prefix + " "
    failed = 0
    for start in range(0, len(rows), batch_size):
        batch, pixels = [], []
        for row in rows[start : start + batch_size]:
            try:
                pixels.append(preprocess(decode_rgb(images[row.key])))
                batch.append(row)
            except ImageDecodeError as err:
                log.warning("image %s (shard %s) cannot be decoded: %s", row.key, row.shard, err)
                failed += 1
        if not batch:
            continue
        with torch.inference_mode(), autocast_for(device):
            image_emb = model.encode_image(torch.stack(pixels).to(device))  # [B, D]
            dialogue_emb = model.encode_text(
                tokenizer([prefix + row.dialogue for row in batch]).to(device)
            )  # [B, D]
            caption_emb = model.encode_text(
                tokenizer([prefix + row.caption for row in batch]).to(device)
            )  # [B, D]
        for row, dialogue, caption in zip(
            batch,
            clipscore(image_emb, dialogue_emb, settings.weight).tolist(),
            clipscore(image_emb, caption_emb, settings.weight).tolist(),
            strict=True,
        ):
            row.clipscore_dialogue, row.clipscore_caption = dialogue, caption
    return failed


def histogram(values: Sequence[float], upper: float, bins: int) -> list[int]:
    """Counts of ``values`` in ``bins`` equal bins over [0, upper] (the last bin closed)."""
    counts = [0] * bins
    for value in values:
        counts[min(int(value / upper * bins), bins - 1)] += 1
    return counts


def dialogue_quality(
    generator: str,
    dialogue_shards: Sequence[Path],
    ingested_shards: Sequence[Path],
    clip: ReportClip,
    settings: DialogueQualitySettings,
    text: TextForms,
    batch_size: int = 64,
    device: str | None = None,
    weights_dir: Path | None = None,
) -> tuple[dict[str, Any], pa.Table]:
    """The statistics of one generator (summary JSON) and one row per generated image;
    ``weights_dir``: where a pretrained tag's fetched weights are (config ``weights_dir``)."""

    from dialogclip.models.openclip import load_clip

    device = torch_device(device or "auto")
    loaded = load_clip(clip.spec, device=device, weights_dir=weights_dir)
    context_length = int(
        getattr(loaded.tokenizer, "context_length", None) or loaded.model.context_length
    )
    count = token_count_function(loaded.tokenizer)
    finish_reasons: Counter[str] = Counter()
    parse: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    pairs = shard_pairs(dialogue_shards, ingested_shards)
    rows_by_shard = {
        dialogue: read_rows(
            dialogue, ingested, text, count, context_length, finish_reasons, parse, statuses
        )
        for dialogue, ingested in pairs
    }
    rows = [row for shard_rows in rows_by_shard.values() for row in shard_rows]
    eligible = [row.key for row in rows if row.dialogue and row.caption]
    sample = in_sample(eligible, settings.sample, settings.seed)
    log.info(
        "%s: %d generated rows, %d with dialogue and caption, scoring %d with %s (%s) on %s",
        generator, len(rows), len(eligible), len(sample), clip.architecture, clip.pretrained,
        device,
    )  # fmt: skip
    image_errors = 0
    for (dialogue, ingested), shard_rows in zip(pairs, rows_by_shard.values(), strict=True):
        chosen = [row for row in shard_rows if row.key in sample]
        images = load_images(ingested, {row.key for row in chosen})
        missing = sorted({row.key for row in chosen} - set(images))
        if missing:
            raise ValueError(f"{ingested}: no image for key(s) {missing[:5]} of {dialogue}")
        image_errors += score_rows(chosen, images, loaded, settings, batch_size, device)

    scored = [row for row in rows if row.clipscore_dialogue is not None]
    dialogue_scores = [row.clipscore_dialogue for row in scored]
    caption_scores = [row.clipscore_caption for row in scored]
    n_generated = len(rows)
    summary = {
        "generator": generator,
        "clip": {
            **asdict(clip),
            "quickgelu_used": loaded.quickgelu,
            "context_length": context_length,
        },
        "text": asdict(text),
        "rows": {
            "dialogue_rows": sum(statuses.values()),
            "status": dict(sorted(statuses.items())),
            "generated": n_generated,
            "with_dialogue": sum(1 for row in rows if row.dialogue),
        },
        "parse": dict(sorted(parse.items())),
        "parse_rate": parse.get("ok", 0) / n_generated if n_generated else None,
        "finish_reasons": dict(sorted(finish_reasons.items())),
        "finish_reason_shares": {
            reason: n / sum(finish_reasons.values()) for reason, n in sorted(finish_reasons.items())
        },
        "clipscore": {
            "reference": "Hessel et al. 2021, github.com/jmhessel/clipscore@1036465",
            "weight": settings.weight,
            "prefix": settings.prefix,
            "sample": settings.sample,
            "seed": settings.seed,
            "n_images": len(scored),
            "image_errors": image_errors,
            "dialogue": describe(dialogue_scores),
            "caption": describe(caption_scores),
            "dialogue_minus_caption": describe(
                [d - c for d, c in zip(dialogue_scores, caption_scores, strict=True)]
            ),
            "histogram": {
                "edges": [settings.weight * i / CLIPSCORE_BINS for i in range(CLIPSCORE_BINS + 1)],
                "dialogue": histogram(dialogue_scores, settings.weight, CLIPSCORE_BINS),
                "caption": histogram(caption_scores, settings.weight, CLIPSCORE_BINS),
            },
        },
        "tokens": {
            "context_length": context_length,
            "long_texts": text.long_texts,
            "dropped_pairs": sum(row.dropped_pairs for row in rows),
            "dialogue": length_stats(
                [row.dialogue_tokens for row in rows if row.dialogue_tokens is not None],
                context_length,
            ),
            "pair": length_stats([n for row in rows for n in row.pair_tokens], context_length),
            "caption": length_stats(
                [row.caption_tokens for row in rows if row.caption_tokens is not None],
                context_length,
            ),
            "generated_per_image": describe([row.generated_tokens for row in rows]),
        },
    }
    table = pa.Table.from_pylist(
        [
            {
                "key": row.key,
                "shard": row.shard,
                "parse_status": row.parse_status,
                "n_pairs": row.n_pairs,
                "dialogue_tokens": row.dialogue_tokens,
                "caption_tokens": row.caption_tokens,
                "max_pair_tokens": max(row.pair_tokens, default=None),
                "dropped_pairs": row.dropped_pairs,
                "generated_tokens": row.generated_tokens,
                "clipscore_dialogue": row.clipscore_dialogue,
                "clipscore_caption": row.clipscore_caption,
            }
            for row in rows
        ],
        schema=PER_IMAGE_SCHEMA,
    )
    return summary, table


PER_IMAGE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("parse_status", pa.string()),
        ("n_pairs", pa.int32()),
        ("dialogue_tokens", pa.int32()),
        ("caption_tokens", pa.int32()),
        ("max_pair_tokens", pa.int32()),
        ("dropped_pairs", pa.int32()),
        ("generated_tokens", pa.int32()),
        ("clipscore_dialogue", pa.float32()),
        ("clipscore_caption", pa.float32()),
    ]
)
