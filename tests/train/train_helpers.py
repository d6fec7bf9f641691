"""Helpers of the training-data tests: tiny HF-text CLIPs, ingested and dialogue shards written
with the stages' real schemas."""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_hf_clip(folder: Path, model_type: str, layers: int = 3, seed: int = 0):
    """A CustomTextCLIP whose text tower is a tiny random Hugging Face encoder (an
    ``HFTextEncoder``), built from a config saved in ``folder``: no hub access.

    ``model_type``: ``roberta`` (mean pooling, as open_clip's roberta-ViT-B-32) or ``bert``
    (the [CLS] pooler, which sits after the blocks).
    """
    import open_clip
    from transformers import BertConfig, RobertaConfig

    config_class, pooler = {
        "roberta": (RobertaConfig, "mean_pooler"),
        "bert": (BertConfig, "cls_pooler"),
    }[model_type]
    config = config_class(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=80,
        pad_token_id=1,
    )
    path = folder / f"tiny-{model_type}"
    config.save_pretrained(path)
    torch.manual_seed(seed)
    model = open_clip.model.CustomTextCLIP(
        embed_dim=16,
        vision_cfg={"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        text_cfg={
            "hf_model_name": str(path),
            "hf_tokenizer_name": str(path),
            "hf_pooler_type": pooler,
            "hf_proj_type": "linear",
            "hf_model_pretrained": False,
        },
    )
    return model.eval()


# --- ingested and dialogue shards, with the stages' own schemas ----------------------------


def jpeg_bytes(seed: int, size: tuple[int, int] = (40, 36)) -> bytes:
    """A seeded random RGB JPEG (width, height)."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3))
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype("uint8")).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def ingest_row(
    index: int, status: str = "success", caption: str | None = None, jpg: bytes | None = None
) -> dict:
    """One row of an ingested shard (dialogclip.ingest.shard.SHARD_SCHEMA)."""
    success = status == "success"
    return {
        "key": f"{index:09d}",
        "url": f"http://example.invalid/{index}.jpg",
        "caption": caption if caption is not None else f"caption of image {index}",
        "status": status,
        "error_kind": None if success else "http_404",
        "error_message": None if success else "HTTP Error 404",
        "width": 40 if success else None,
        "height": 36 if success else None,
        "original_width": 40 if success else None,
        "original_height": 36 if success else None,
        "sha256": f"{index:064x}" if success else None,
        "jpg": (jpg if jpg is not None else jpeg_bytes(index)) if success else None,
        "attempts": 1,
    }


def write_ingested(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dialogclip.ingest.shard import SHARD_SCHEMA

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), path)
    return path


def dialogue_row(
    index: int,
    questions: list[str],
    answers: list[str],
    generator: str = "llava",
    parse_status: str | None = "ok",
    finish_reasons: list[str] | None = None,
    status: str = "success",
) -> dict:
    """One row of a dialogue shard (dialogclip.generate.schema.DIALOGUE_SCHEMA)."""
    from dialogclip.generate.schema import DIALOGUE_SCHEMA

    row = dict.fromkeys(DIALOGUE_SCHEMA.names)
    n_requests = 2 if generator == "blip2" else 1
    row.update(
        key=f"{index:09d}",
        url=f"http://example.invalid/{index}.jpg",
        generator=generator,
        model=f"tiny/{generator}",
        backend="transformers",
        status=status,
    )
    if status != "success":
        row["error_message"] = "image too small"
        return row
    pairs = [f"Question: {q} Answer: {a}" for q, a in zip(questions, answers, strict=True)]
    row.update(
        prompts=["prompt"] * n_requests,
        responses=["reply"] * n_requests,
        questions=questions,
        answers=answers,
        dialogue=" ".join(pairs) if pairs else None,
        dialogue_pairs=pairs,
        parse_status=parse_status,
        finish_reasons=finish_reasons or ["stop"] * n_requests,
        prompt_tokens=[10] * n_requests,
        generated_tokens=[5] * n_requests,
    )
    return row


def write_dialogue(path: Path, rows: list[dict]) -> Path:
    import pyarrow.parquet as pq

    from dialogclip.generate.schema import rows_to_table

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows_to_table(rows), path)
    return path
