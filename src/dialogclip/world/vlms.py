"""The world's vision-language models: tiny BLIP-2 and LLaVA-1.5 trained to describe scenes.

Both are the real transformers classes (``Blip2ForConditionalGeneration`` with an OPT text
model, ``LlavaForConditionalGeneration`` with a Llama text model) built by
:mod:`dialogclip.world.tiny_models` around tokenizers learned from the world's own language, and
saved in the published layouts, so the generation stage loads them with either backend exactly
as it loads the real checkpoints. They are trained from scratch, every weight at once, on
scenes of their own split (``vlm``; never an image the pipeline sees) with teacher forcing on
the exact prompts the generation stage sends:

- BLIP-2, two samples per scene: ``Question: What do you see in this image? Answer:`` ->
  :func:`~dialogclip.world.language.blip2_answers` turn 1, then the turn-2 prompt with turn 1 in
  its LAVIS context (``Question: q1 Answer: a1. Question: q2 Answer:``) -> turn 2; each answer
  ends at a newline, the reply's end in BLIP-2 OPT (its generation config's EOS).
- LLaVA, one sample per scene: ``USER: <image>\\n{question} ASSISTANT:`` -> the three pairs in
  the ``Q1: ... A1: ...`` format the question asks for, then ``</s>``.

The prompts come from the caller (the workflow's ``generate`` section): the world never
hard-codes a prompt, so the models answer exactly what the configured generators ask.
Training is seeded and runs in float32 on the CPU (deterministic for a given thread count).
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from dialogclip.core.prompts import blip2_prompt, llava_prompt
from dialogclip.world import language
from dialogclip.world.clip import warmup_cosine
from dialogclip.world.scenes import (
    BACKGROUNDS,
    COLOURS,
    MAX_OBJECTS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    draw_scenes,
    render,
)
from dialogclip.world.tiny_models import (
    TinySizes,
    blip2_model,
    blip2_processor,
    build_llama_tokenizer,
    build_opt_tokenizer,
    llava_model,
    llava_processor,
    save_blip2,
    save_llava,
)

log = logging.getLogger(__name__)

VLM_SPLIT = "vlm"
JPEG_QUALITY = 90  # the models see images as the pipeline stores them: JPEG-encoded

# The world models see the 64 px scene at 48 px in 16 px patches: a 3 x 3 grid whose columns
# are the world's three positions, so each object lies in one patch column (9 image tokens for
# LLaVA). A 3-layer ViT (LLaVA reads its second layer, vision_feature_layer -2 as published), a
# 2-layer Llama / OPT of width 128 in heads of 32 (a head size vLLM's CPU attention supports),
# tied input and output embeddings.
WORLD_SIZES = TinySizes(
    image_size=48,
    patch_size=16,
    vision_hidden=64,
    vision_layers=3,
    vision_ffn=256,
    text_hidden=128,
    text_heads=4,
    text_layers=2,
    text_ffn=256,
    max_positions=512,
    tokenizer_vocab=600,
    blip2_query_tokens=8,
    qformer_hidden=64,
    qformer_layers=2,
    tie_word_embeddings=True,
)


@dataclass(frozen=True)
class VlmPrompts:
    """The generation stage's prompts (from the workflow's ``generate`` section)."""

    blip2_questions: tuple[str, ...] = language.BLIP2_QUESTIONS
    blip2_prompt_template: str = "Question: {question} Answer:"
    blip2_context_template: str = "Question: {question} Answer: {answer}."
    llava_question: str = ""
    llava_prompt_template: str = "USER: <image>\n{question} ASSISTANT:"

    def __post_init__(self) -> None:
        if tuple(self.blip2_questions) != language.BLIP2_QUESTIONS:
            raise ValueError(
                f"the world's BLIP-2 answers the thesis' questions {language.BLIP2_QUESTIONS}; "
                f"generate.blip2.questions is {tuple(self.blip2_questions)}"
            )
        if not self.llava_question:
            raise ValueError("the world's LLaVA needs the question (generate.llava.question)")


@dataclass(frozen=True)
class VlmTraining:
    """How a world VLM is trained (science: every field changes the weights).

    Two stages, as the published models were built: the vision tower first learns to see the
    world (a supervised probe of every object's attributes per column, the background and the
    count: the world's stand-in for a pretrained CLIP / EVA-CLIP), then it is frozen and the
    rest (LLaVA's projector and Llama; BLIP-2's Q-Former, projection and OPT) learns to answer
    the prompts.

    BLIP-2 only (``place_weight``, ``qformer_epochs``): its Q-Former attends over the patches
    as a set, so it can tell the objects apart only if each patch's feature says where the
    patch is, as a pretrained ViT's do; the probe, which reads each column where it lies, never
    asks for that (a linear probe read the column from the patch features of phase 1's BLIP-2
    42 % right, chance 33 %, and the object attributes from its Q-Former's outputs about half
    right while the patches held the colour 99-100 %: docs/world.md). So its stage 1 also
    teaches each patch feature its place in the grid, and then, the tower frozen, trains the
    Q-Former and its queries on the probe's targets read from the query outputs (BLIP-2's own
    first stage trains the Q-Former on a frozen image encoder). LLaVA's Llama sees the patches
    in order, so neither applies to it.
    """

    n_scenes: int = 4000  # training scenes (split "vlm")
    vision_epochs: int = 12  # stage 1
    epochs: int = 8  # stage 2
    batch_size: int = 32
    vision_batch_size: int = 64
    lr: float = 2e-3
    vision_lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    place_weight: float = 1.0  # BLIP-2 stage 1: weight of each patch's place in the loss
    qformer_epochs: int = 8  # BLIP-2 stage 1b: the Q-Former on the probe targets
    seed: int = 0


@dataclass(frozen=True)
class Sample:
    """One teacher-forced sample: the image of scene ``scene``, the prompt and the reply."""

    scene: int
    prompt: str
    target: str


def blip2_samples(scenes: Sequence[Scene], prompts: VlmPrompts) -> list[Sample]:
    """Two per scene (the two turns; the second with the first in its context)."""
    samples = []
    for index, scene in enumerate(scenes):
        answers = language.blip2_answers(scene)
        for turn, answer in enumerate(answers):
            prompt = blip2_prompt(
                prompts.blip2_prompt_template,
                prompts.blip2_context_template,
                prompts.blip2_questions,
                answers[:turn],
            )
            samples.append(Sample(index, prompt, f" {answer}\n"))
    return samples


def llava_samples(scenes: Sequence[Scene], prompts: VlmPrompts) -> list[Sample]:
    """One per scene: the three pairs in the requested format."""
    prompt = llava_prompt(prompts.llava_prompt_template, prompts.llava_question)
    return [
        Sample(index, prompt, " " + language.llava_reply(language.llava_pairs(scene)))
        for index, scene in enumerate(scenes)
    ]


def world_corpus(prompts: VlmPrompts, scenes: Sequence[Scene]) -> str:
    """The text the world tokenizers learn their merges from: the prompts and the replies."""
    texts = [
        prompts.llava_prompt_template.replace("<image>", " "),
        prompts.llava_question,
        prompts.blip2_context_template,
        *prompts.blip2_questions,
    ]
    for scene in scenes:
        texts += [*language.blip2_answers(scene), language.llava_reply(language.llava_pairs(scene))]
    return "\n".join(texts)


def as_stored(scene: Scene) -> Image.Image:
    """The scene as the pipeline hands it to a generator: rendered, JPEG-encoded, decoded."""
    buffer = io.BytesIO()
    render(scene).save(buffer, "JPEG", quality=JPEG_QUALITY)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def build_blip2(prompts: VlmPrompts, corpus_scenes: Sequence[Scene], seed: int) -> tuple[Any, Any]:
    """An untrained world BLIP-2 and its processor (tokenizer learned from the world corpus);
    replies end at the newline token, as BLIP-2 OPT's generation config says."""
    corpus = world_corpus(prompts, corpus_scenes)
    tokenizer = build_opt_tokenizer(WORLD_SIZES.tokenizer_vocab, corpus=corpus)
    model = blip2_model(tokenizer, WORLD_SIZES, seed)
    (newline,) = tokenizer("\n", add_special_tokens=False)["input_ids"]
    model.generation_config.eos_token_id = newline
    processor = blip2_processor(tokenizer, WORLD_SIZES.image_size, WORLD_SIZES.blip2_query_tokens)
    return model, processor


def build_llava(prompts: VlmPrompts, corpus_scenes: Sequence[Scene], seed: int) -> tuple[Any, Any]:
    """An untrained world LLaVA-1.5 and its processor."""
    corpus = world_corpus(prompts, corpus_scenes)
    tokenizer = build_llama_tokenizer(WORLD_SIZES.tokenizer_vocab, corpus=corpus)
    model = llava_model(tokenizer, WORLD_SIZES, seed)
    processor = llava_processor(tokenizer, WORLD_SIZES.image_size, WORLD_SIZES.patch_size)
    return model, processor


@dataclass
class _Encoded:
    input_ids: list[int]
    n_prompt: int  # tokens of the prompt (image placeholders included): no loss on them


def _encode(processor: Any, image: Image.Image, sample: Sample, eos: int | None) -> _Encoded:
    """Token ids of prompt + reply as the processor makes them for the generation stage."""
    prompt_ids = processor(images=[image], text=[sample.prompt])["input_ids"][0]
    full = processor(images=[image], text=[sample.prompt + sample.target])["input_ids"][0]
    full = [int(i) for i in full]
    if full[: len(prompt_ids)] != [int(i) for i in prompt_ids]:
        raise ValueError(f"the reply changes the prompt's tokens: {sample.prompt!r}")
    if eos is not None:
        full.append(eos)
    return _Encoded(full, len(prompt_ids))


def column_bands(grid: int) -> list[tuple[int, int]]:
    """The patch columns (start, stop) of each position (left, middle, right) in a grid of
    ``grid`` x ``grid`` patches: a patch column belongs to the position its centre is in."""
    bands = []
    for band in range(len(POSITIONS)):
        columns = [c for c in range(grid) if int((c + 0.5) * len(POSITIONS) / grid) == band]
        bands.append((columns[0], columns[-1] + 1))
    return bands


_OBJECT_CLASSES = (1 + len(SHAPES), 1 + len(COLOURS), 1 + len(SIZES))  # each with "none"
_SCENE_CLASSES = (len(BACKGROUNDS), MAX_OBJECTS)


class VisionProbe(torch.nn.Module):
    """Reads each object's shape, colour and size from the patch features of its column, and
    the background and count from all of them: patches [B, P, H], P = grid^2."""

    def __init__(self, hidden: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.bands = column_bands(grid)
        self.object_head = torch.nn.Linear(hidden, sum(_OBJECT_CLASSES))
        self.scene_head = torch.nn.Linear(hidden, sum(_SCENE_CLASSES))

    def forward(self, patches: torch.Tensor) -> list[torch.Tensor]:
        """The 11 classification logits [B, n_classes] in :func:`_probe_targets` order."""
        grid = patches.unflatten(1, (self.grid, self.grid))  # [B, rows, cols, H]
        logits = []
        for start, stop in self.bands:
            column = self.object_head(grid[:, :, start:stop].mean(dim=(1, 2)))
            logits += list(column.split(_OBJECT_CLASSES, dim=1))
        scene = self.scene_head(patches.mean(dim=1))
        return logits + list(scene.split(_SCENE_CLASSES, dim=1))


class QueryProbe(torch.nn.Module):
    """Reads every column's object attributes, the background and the count from all of
    BLIP-2's query outputs at once: queries [B, Q, H] (flattened, so each query may carry any
    part of the scene)."""

    def __init__(self, n_queries: int, hidden: int) -> None:
        super().__init__()
        self.object_head = torch.nn.Linear(
            n_queries * hidden, len(POSITIONS) * sum(_OBJECT_CLASSES)
        )
        self.scene_head = torch.nn.Linear(n_queries * hidden, sum(_SCENE_CLASSES))

    def forward(self, queries: torch.Tensor) -> list[torch.Tensor]:
        """The 11 classification logits [B, n_classes] in :func:`_probe_targets` order."""
        flat = queries.flatten(1)
        logits = []
        for column in self.object_head(flat).chunk(len(POSITIONS), dim=1):
            logits += list(column.split(_OBJECT_CLASSES, dim=1))
        return logits + list(self.scene_head(flat).split(_SCENE_CLASSES, dim=1))


def _probe_targets(scenes: Sequence[Scene]) -> torch.Tensor:
    """[S, 3 columns x (shape, colour, size) + background + count] class indices (0 = none)."""
    rows = []
    for scene in scenes:
        by_column = {obj.position: obj for obj in scene.objects}
        row = []
        for position in POSITIONS:
            obj = by_column.get(position)
            row += [
                0 if obj is None else 1 + SHAPES.index(obj.shape),
                0 if obj is None else 1 + sorted(COLOURS).index(obj.colour),
                0 if obj is None else 1 + SIZES.index(obj.size),
            ]
        row += [sorted(BACKGROUNDS).index(scene.background), scene.count - 1]
        rows.append(row)
    return torch.tensor(rows)


def _probe_loss(
    probe: torch.nn.Module, features: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    logits = probe(features)
    return sum(F.cross_entropy(part, targets[:, k]) for k, part in enumerate(logits))


def _place_loss(head: torch.nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each patch's index in the grid read from its feature: patches [B, P, H]."""
    places = torch.arange(patches.shape[1]).repeat(patches.shape[0])  # [B * P]
    return F.cross_entropy(head(patches).flatten(0, 1), places)


def vision_patches(name: str, model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """The patch features a VLM's language side reads: [B, P, H] (no CLS).

    LLaVA: the vision tower's hidden state at ``vision_feature_layer``; BLIP-2: the ViT's
    output, which its Q-Former attends to.
    """
    if name == "llava":
        layer = model.config.vision_feature_layer
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[layer]
        return hidden[:, 1:]
    return model.vision_model(pixels).last_hidden_state[:, 1:]


def query_outputs(model: Any, image_embeds: torch.Tensor) -> torch.Tensor:
    """BLIP-2's Q-Former outputs [B, Q, H_qformer] for ViT outputs [B, 1 + P, H] (CLS first),
    as :meth:`Blip2ForConditionalGeneration.get_image_features` computes them."""
    mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
    queries = model.query_tokens.expand(image_embeds.shape[0], -1, -1)
    return model.qformer(
        query_embeds=queries, encoder_hidden_states=image_embeds, encoder_attention_mask=mask
    ).last_hidden_state


def vision_module(name: str, model: Any) -> torch.nn.Module:
    return model.model.vision_tower if name == "llava" else model.vision_model


def _fit(
    parameters: Sequence[torch.nn.Parameter],
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    n_items: int,
    epochs: int,
    settings: VlmTraining,
    label: str,
) -> list[float]:
    """AdamW on ``loss_of(batch indices)`` over ``epochs`` shuffled passes (stage-1 steps);
    returns the epoch losses."""
    optimizer = torch.optim.AdamW(parameters, lr=settings.vision_lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(settings.seed)
    total = epochs * math.ceil(n_items / settings.vision_batch_size)
    step, losses = 0, []
    for epoch in range(epochs):
        running, batches = 0.0, 0
        order = torch.randperm(n_items, generator=generator)
        for batch in order.split(settings.vision_batch_size):
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(step, total, settings.vision_lr, settings.warmup_steps)
            loss = loss_of(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            running += float(loss.detach())
            batches += 1
        losses.append(running / batches)
        log.info("%s epoch %d/%d: loss %.4f", label, epoch + 1, epochs, losses[-1])
    return losses


def pretrain_vision(
    name: str, model: Any, pixels: torch.Tensor, scenes: Sequence[Scene], settings: VlmTraining
) -> list[float]:
    """Stage 1: the vision tower and a probe (discarded afterwards) learn the scene records;
    for BLIP-2 each patch feature also learns its place (``settings.place_weight``)."""
    torch.manual_seed(settings.seed)
    grid = WORLD_SIZES.image_size // WORLD_SIZES.patch_size
    probe = VisionProbe(WORLD_SIZES.vision_hidden, grid)
    place_weight = settings.place_weight if name == "blip2" else 0.0
    place = torch.nn.Linear(WORLD_SIZES.vision_hidden, grid * grid) if place_weight else None
    tower = vision_module(name, model)
    targets = _probe_targets(scenes)

    def loss_of(batch: torch.Tensor) -> torch.Tensor:
        patches = vision_patches(name, model, pixels[batch])
        loss = _probe_loss(probe, patches, targets[batch])
        if place is not None:
            loss = loss + place_weight * _place_loss(place, patches)
        return loss

    parameters = [*tower.parameters(), *probe.parameters()]
    if place is not None:
        parameters += list(place.parameters())
    tower.train()
    losses = _fit(parameters, loss_of, len(scenes), settings.vision_epochs, settings, "vision")
    tower.eval()
    return losses


def pretrain_qformer(
    model: Any, pixels: torch.Tensor, scenes: Sequence[Scene], settings: VlmTraining
) -> list[float]:
    """BLIP-2 stage 1b: the tower frozen, the Q-Former and its query tokens learn the probe's
    targets from the query outputs (:class:`QueryProbe`, discarded afterwards)."""
    torch.manual_seed(settings.seed)
    with torch.no_grad():
        image_embeds = model.vision_model(pixels).last_hidden_state  # [S, 1 + P, H]
    probe = QueryProbe(WORLD_SIZES.blip2_query_tokens, WORLD_SIZES.qformer_hidden)
    targets = _probe_targets(scenes)

    def loss_of(batch: torch.Tensor) -> torch.Tensor:
        return _probe_loss(probe, query_outputs(model, image_embeds[batch]), targets[batch])

    parameters = [*model.qformer.parameters(), model.query_tokens, *probe.parameters()]
    model.qformer.train()
    losses = _fit(parameters, loss_of, len(scenes), settings.qformer_epochs, settings, "Q-Former")
    model.qformer.eval()
    return losses


def train_vlm(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    pixels: torch.Tensor,
    samples: Sequence[Sample],
    settings: VlmTraining,
    append_eos: bool,
    frozen: torch.nn.Module | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> list[float]:
    """Stage 2: teacher-forced training on ``samples`` of every weight outside ``frozen``;
    returns the epoch losses. ``pixels`` [S, 3, H, W]: the processor's view of ``images``.

    The loss is the cross-entropy of each reply token given the image, the prompt and the reply
    so far (the prompt's own tokens carry no loss). ``on_epoch(epoch)`` runs after each epoch
    (the model in eval mode), e.g. to measure the replies as training goes.
    """
    torch.manual_seed(settings.seed)
    tokenizer = processor.tokenizer
    eos = tokenizer.eos_token_id if append_eos else None
    if frozen is not None:
        frozen.requires_grad_(False)
    encoded = [_encode(processor, images[s.scene], s, eos) for s in samples]
    pad = tokenizer.pad_token_id
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trained, lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.98)
    )
    total_steps = settings.epochs * math.ceil(len(samples) / settings.batch_size)
    generator = torch.Generator().manual_seed(settings.seed)
    model.train()
    step, losses = 0, []
    for epoch in range(settings.epochs):
        started, running, batches = time.monotonic(), 0.0, 0
        for batch in torch.randperm(len(samples), generator=generator).split(settings.batch_size):
            rows = [encoded[int(i)] for i in batch]
            length = max(len(row.input_ids) for row in rows)
            ids = torch.full((len(rows), length), pad, dtype=torch.long)  # [B, L], right padding
            labels = torch.full_like(ids, -100)
            mask = torch.zeros_like(ids)
            for r, row in enumerate(rows):
                n = len(row.input_ids)
                ids[r, :n] = torch.tensor(row.input_ids)
                labels[r, row.n_prompt : n] = ids[r, row.n_prompt : n]
                mask[r, :n] = 1
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(step, total_steps, settings.lr, settings.warmup_steps)
            logits = model(
                input_ids=ids,
                attention_mask=mask,
                pixel_values=pixels[[samples[int(i)].scene for i in batch]],
            ).logits  # [B, L, V]
            # Position t predicts token t + 1.
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            step += 1
            running += float(loss.detach())
            batches += 1
        losses.append(running / batches)
        log.info(
            "epoch %d/%d: loss %.4f (%.0f s)",
            epoch + 1,
            settings.epochs,
            losses[-1],
            time.monotonic() - started,
        )
        if on_epoch is not None:
            model.eval()
            with torch.no_grad():
                on_epoch(epoch)
            model.train()
            if frozen is not None:
                frozen.eval()
    model.eval()
    if frozen is not None:
        frozen.eval()
    return losses


def train_world_vlm(
    name: str,
    out_dir: str | os.PathLike[str],
    prompts: VlmPrompts,
    settings: VlmTraining,
    world_seed: int,
    max_shard_size: str | None = None,
) -> dict[str, Any]:
    """Build, train and save the world's ``blip2`` or ``llava`` to ``out_dir`` (weights in
    float16, as published checkpoints store them; the generation stage runs them in its own
    dtype, float32 on a CPU); returns a summary."""
    started = time.monotonic()
    scenes = draw_scenes(world_seed, VLM_SPLIT, settings.n_scenes)
    if name == "blip2":
        model, processor = build_blip2(prompts, scenes, settings.seed)
        samples, append_eos, save = blip2_samples(scenes, prompts), False, save_blip2
    elif name == "llava":
        model, processor = build_llava(prompts, scenes, settings.seed)
        samples, append_eos, save = llava_samples(scenes, prompts), True, save_llava
    else:
        raise ValueError(f"unknown world model {name!r} (blip2 or llava)")
    images = [as_stored(scene) for scene in scenes]
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    vision_losses = pretrain_vision(name, model, pixels, scenes, settings)
    qformer_losses = pretrain_qformer(model, pixels, scenes, settings) if name == "blip2" else []
    losses = train_vlm(
        model,
        processor,
        images,
        pixels,
        samples,
        settings,
        append_eos,
        frozen=vision_module(name, model),
    )
    save(model.to(torch.float16), processor, out_dir, max_shard_size)
    summary = {
        "model": name,
        "settings": asdict(settings),
        "world_seed": world_seed,
        "vision_epoch_losses": vision_losses,
        "qformer_epoch_losses": qformer_losses,
        "epoch_losses": losses,
        "seconds": round(time.monotonic() - started, 1),
    }
    log.info("world %s written to %s in %.0f s", name, out_dir, summary["seconds"])
    return summary
