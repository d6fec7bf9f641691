"""The world's pretrained baseline: a tiny open_clip CLIP trained contrastively on alt-text.

Both towers start from open_clip's random initialisation and learn together, as CLIP does, on
pretraining scenes (split ``pretrain``, never shown to the pipeline) with their PARTIAL captions
(:func:`dialogclip.world.language.partial_caption`); every epoch draws a fresh caption per scene,
so over the epochs an image is described by each of its attributes in turn and the image tower
learns all of them, while the text tower only ever reads short, partial descriptions.

Training is seeded and runs on the CPU in float32: with the same seed and thread count it
gives the same weights. The checkpoint is a safetensors file in open_clip's state-dict layout
with the same metadata as ``make_tiny_clip`` (architecture, seed, ``quick_gelu``), so
``dialogclip.models.openclip.load_clip`` reads it as any other checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dialogclip.core.io import atomic_path
from dialogclip.models.openclip import QUICKGELU_METADATA_KEY, register_model_configs
from dialogclip.world import language
from dialogclip.world.scenes import Scene, draw_scenes, render, scene_rng

log = logging.getLogger(__name__)

PRETRAIN_SPLIT = "pretrain"


@dataclass(frozen=True)
class ClipPretraining:
    """How the baseline CLIP is pretrained (science: every field changes the weights)."""

    architecture: str = "world-clip"  # an open_clip model name (ours or open_clip's)
    n_scenes: int = 8000  # pretraining scenes (split "pretrain")
    epochs: int = 10  # each epoch draws a new partial caption per scene
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    seed: int = 0  # model initialisation and batch order; the scenes follow the world seed


VOCABULARY_SCENES = 500  # scenes whose texts make up the world's vocabulary (all words occur)
COMPACT_ROWS = "token_embedding.rows"  # the compact checkpoint's kept token ids
COMPACT_VALUES = "token_embedding.values"  # ... and their embedding rows


def world_vocabulary(tokenizer: Any, scenes: list[Scene]) -> torch.Tensor:
    """The token ids (sorted) of every text the world writes about ``scenes``, with the start
    and end tokens."""
    tokens = tokenizer(language.world_texts(scenes))  # [N, context]
    return torch.unique(tokens[tokens != 0])


def keep_vocabulary(model: Any, vocabulary: torch.Tensor) -> None:
    """Zero the token-embedding rows of every token outside ``vocabulary``.

    A row of a token no training text contains gets no gradient, and weight decay keeps a zero
    row at zero: the rows outside the world's vocabulary stay exactly zero through training, so
    the checkpoint can be stored without them (:func:`save_compact`) and expanded exactly.
    """
    outside = torch.ones(model.token_embedding.weight.shape[0], dtype=torch.bool)
    outside[vocabulary] = False
    with torch.no_grad():
        model.token_embedding.weight[outside] = 0.0


def save_compact(
    state: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict
) -> Path:
    """Write a CLIP state dict in float16 with only the non-zero token-embedding rows (a
    safetensors file a few hundred KB for world-clip; :func:`expand_compact` restores it)."""
    from safetensors.torch import save_file

    embedding = state["token_embedding.weight"]
    rows = torch.nonzero(embedding.abs().sum(dim=1)).flatten()
    compact = {
        name: tensor.to(torch.float16).contiguous()
        for name, tensor in state.items()
        if name != "token_embedding.weight"
    }
    compact[COMPACT_ROWS] = rows.to(torch.int32)
    compact[COMPACT_VALUES] = embedding[rows].to(torch.float16).contiguous()
    metadata = {**metadata, "vocab_size": str(embedding.shape[0])}
    with atomic_path(path) as tmp:
        save_file(compact, str(tmp), metadata=metadata)
    return Path(path)


def expand_compact(compact: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """The open_clip checkpoint (float32, every token row; zeros outside the vocabulary) of a
    compact one, with its metadata: what ``load_clip`` reads."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from dialogclip.models.openclip import check_checkpoint

    check_checkpoint(compact, "compact world CLIP")
    with safe_open(str(compact), "pt") as handle:
        metadata = dict(handle.metadata() or {})
        state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    rows = state.pop(COMPACT_ROWS).long()
    values = state.pop(COMPACT_VALUES)
    embedding = torch.zeros(int(metadata.pop("vocab_size")), values.shape[1])
    embedding[rows] = values.float()
    full = {name: tensor.float().contiguous() for name, tensor in state.items()}
    full["token_embedding.weight"] = embedding
    with atomic_path(output) as tmp:
        save_file(full, str(tmp), metadata=metadata)
    return Path(output)


def image_tensors(scenes: list[Scene], preprocess: Any) -> torch.Tensor:
    """The scenes rendered and preprocessed as the evaluation does: [N, 3, H, W]."""
    return torch.stack([preprocess(render(scene)) for scene in scenes])


def epoch_captions(scenes: list[Scene], epoch: int) -> list[str]:
    """One partial caption per scene for ``epoch`` (its own stream per scene and epoch)."""
    return [
        language.partial_caption(
            scene, scene_rng(scene.seed, scene.split, scene.index, f"caption{epoch}")
        )
        for scene in scenes
    ]


def trim_padding(tokens: torch.Tensor) -> torch.Tensor:
    """tokens [N, context] without the padding columns every row has: [N, longest].

    The text tower is causal and pools at the end-of-text token, so the columns after the
    longest text change nothing but cost time (alt-text is a fifth of the 77-token context).
    """
    return tokens[:, : int((tokens != 0).sum(dim=1).max())]


def encode_text(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)`` computed on the trimmed tokens: [N, D], not normalised.

    The same arithmetic as open_clip's ``CLIP.encode_text`` with the positional embedding and
    the causal mask cut to the trimmed length (its own forward adds all 77 positions).
    """
    from open_clip.transformer import text_global_pool

    tokens = trim_padding(tokens)
    n = tokens.shape[1]
    x = model.token_embedding(tokens) + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, getattr(model, "text_eos_id", None))
    return x @ model.text_projection


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric contrastive loss over unit features image, text [N, D]."""
    logits = logit_scale * image @ text.T  # [N images, N texts]
    labels = torch.arange(len(image))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def pretrain_clip(
    output: str | os.PathLike[str], settings: ClipPretraining, world_seed: int
) -> dict[str, Any]:
    """Pretrain the baseline and save it to ``output`` in the compact form (:func:`save_compact`;
    :func:`expand_compact` makes the open_clip checkpoint of it); returns a summary."""
    import open_clip

    register_model_configs()
    started = time.monotonic()
    torch.manual_seed(settings.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(settings.architecture)
    tokenizer = open_clip.get_tokenizer(settings.architecture)
    scenes = draw_scenes(world_seed, PRETRAIN_SPLIT, settings.n_scenes)
    vocabulary = world_vocabulary(tokenizer, scenes[:VOCABULARY_SCENES])
    keep_vocabulary(model, vocabulary)
    images = image_tensors(scenes, preprocess)
    steps_per_epoch = math.ceil(len(scenes) / settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    generator = torch.Generator().manual_seed(settings.seed)
    model.train()
    step, losses = 0, []
    for epoch in range(settings.epochs):
        tokens = tokenizer(epoch_captions(scenes, epoch))  # [N, context]
        order = torch.randperm(len(scenes), generator=generator)
        running, batches = 0.0, 0
        for start in range(0, len(scenes), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(step, total_steps, settings.lr, settings.warmup_steps)
            image = F.normalize(model.encode_image(images[batch]), dim=-1)
            text = F.normalize(encode_text(model, tokens[batch]), dim=-1)
            loss = clip_loss(image, text, model.logit_scale.exp().clamp(max=100))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            running += float(loss.detach())
            batches += 1
        losses.append(running / batches)
        log.info("CLIP pretraining epoch %d/%d: loss %.3f", epoch + 1, settings.epochs, losses[-1])
    model.eval()
    summary = {
        "settings": asdict(settings),
        "world_seed": world_seed,
        "epoch_losses": losses,
        "logit_scale": float(model.logit_scale.detach().exp()),
    }
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    metadata = {
        "architecture": settings.architecture,
        "seed": str(settings.seed),
        QUICKGELU_METADATA_KEY: json.dumps(False),
        "world_pretraining": json.dumps(summary),  # what made the weights (no timings)
    }
    save_compact(state, output, metadata)
    summary["seconds"] = round(time.monotonic() - started, 1)
    log.info("baseline CLIP written to %s in %.0f s", output, summary["seconds"])
    return summary


def warmup_cosine(step: int, total: int, peak: float, warmup: int) -> float:
    """The learning rate of ``step`` of ``total``: linear warm-up to ``peak`` over ``warmup``
    steps, then cosine decay to zero (every trainer of the world uses it)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))
