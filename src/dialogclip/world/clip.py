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
from typing import Any

import torch
import torch.nn.functional as F

from dialogclip.core.io import atomic_path
from dialogclip.models.openclip import QUICKGELU_METADATA_KEY, register_model_configs
from dialogclip.world.language import partial_caption
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


def image_tensors(scenes: list[Scene], preprocess: Any) -> torch.Tensor:
    """The scenes rendered and preprocessed as the evaluation does: [N, 3, H, W]."""
    return torch.stack([preprocess(render(scene)) for scene in scenes])


def epoch_captions(scenes: list[Scene], epoch: int) -> list[str]:
    """One partial caption per scene for ``epoch`` (its own stream per scene and epoch)."""
    return [
        partial_caption(scene, scene_rng(scene.seed, scene.split, scene.index, f"caption{epoch}"))
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
    """Pretrain the baseline and save it to ``output`` (safetensors); returns a summary."""
    import open_clip
    from safetensors.torch import save_file

    register_model_configs()
    started = time.monotonic()
    torch.manual_seed(settings.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(settings.architecture)
    tokenizer = open_clip.get_tokenizer(settings.architecture)
    scenes = draw_scenes(world_seed, PRETRAIN_SPLIT, settings.n_scenes)
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
        for start in range(0, len(scenes), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = _lr(step, total_steps, settings)
            image = F.normalize(model.encode_image(images[batch]), dim=-1)
            text = F.normalize(encode_text(model, tokens[batch]), dim=-1)
            loss = clip_loss(image, text, model.logit_scale.exp().clamp(max=100))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        losses.append(float(loss))
        log.info("CLIP pretraining epoch %d/%d: loss %.3f", epoch + 1, settings.epochs, losses[-1])
    model.eval()
    summary = {
        "settings": asdict(settings),
        "world_seed": world_seed,
        "epoch_losses": losses,
        "logit_scale": float(model.logit_scale.exp()),
        "seconds": round(time.monotonic() - started, 1),
    }
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    metadata = {
        "architecture": settings.architecture,
        "seed": str(settings.seed),
        QUICKGELU_METADATA_KEY: json.dumps(False),
        "world_pretraining": json.dumps(summary),
    }
    with atomic_path(output) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    log.info("baseline CLIP written to %s in %.0f s", output, summary["seconds"])
    return summary


def _lr(step: int, total: int, settings: ClipPretraining) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, total - settings.warmup_steps)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * progress))
