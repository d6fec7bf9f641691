"""Tiny random-initialised LLaVA-1.5 and BLIP-2 checkpoints, built offline.

Real checkpoints cannot be downloaded here, so the demo and the tests run the generation stage
on miniature models with the same architectures (``LlavaForConditionalGeneration`` with a CLIP
vision tower and a Llama text model; ``Blip2ForConditionalGeneration`` with a Q-Former and an OPT
text model). Each is saved in the on-disk layout of its published checkpoint
(``llava-hf/llava-1.5-7b-hf``, ``Salesforce/blip2-opt-2.7b``): ``config.json``,
``generation_config.json``, ``model.safetensors`` with the published tensor names, the processor
and tokenizer files, and for LLaVA the chat template, so that both the transformers and the vLLM
backend load them by local path exactly as they load the real ones.

The tokenizers are trained on a small built-in English corpus with the ``tokenizers`` library:
a Llama-style byte-fallback BPE for LLaVA and an OPT/GPT-2-style byte-level BPE for BLIP-2, both
containing the ``<image>`` token. Everything is seeded, so a rebuild gives identical files.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Words the tokenizers are trained on: the prompts of the stage plus everyday image vocabulary,
# so prompts tokenize into few tokens and generated text decodes to readable fragments.
CORPUS = """
What do you see in this image? What makes this image unique? Question: Answer:
USER: ASSISTANT: Generate three fundamental questions about the content of this image, each
followed by its answer. Use the format Q1: A1: Q2: A2: Q3: A3: question answer questions answers
Reply with a JSON list of three objects with the keys "question" and "answer". {"question": "",
"answer": ""} [ ] { } , : 1. 2. 3. Q: A:
The image shows a man, a woman, a child, a dog and a cat on a street in a city near the river.
There is a red car, a blue bus, a green tree, a white house, a black bicycle and a yellow sign.
The photo was taken outside during the day; the sky is clear and the sun is bright. People are
walking, sitting, standing, eating, playing, running and smiling. A group of friends enjoys food
at a table in a restaurant. The room has a window, a door, a chair, a bed, a lamp and a picture on
the wall. It is a close-up of a flower in a garden, a plate of food, a cup of coffee, a book, a
phone and a computer. The mountains are covered with snow, the beach has sand and the ocean has
waves. Where is this? Who is in the picture? What color is the car? How many people are there?
What is the man doing? Why is it unique? It is unique because of the colorful light, the old
building, the beautiful view and the unusual object. Yes. No. one two three four five many
"""

# The published llava-hf/llava-1.5 chat template (processor "chat_template"); our prompts use the
# plain `USER: <image>\n{question} ASSISTANT:` form it renders.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@dataclass(frozen=True)
class TinySizes:
    """Dimensions of the tiny models (small enough for a 2-core CPU, real architecture)."""

    image_size: int = 32  # pixels; 32 / patch 8 -> 16 patches
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_ffn: int = 128
    text_hidden: int = 128  # 4 heads of 32: a head size vLLM's CPU attention supports
    text_heads: int = 4
    text_layers: int = 2
    text_ffn: int = 256
    max_positions: int = 1024
    tokenizer_vocab: int = 600  # trained BPE vocabulary (before <image>/<pad>)
    blip2_query_tokens: int = 8
    qformer_hidden: int = 64
    qformer_layers: int = 2
    # Random LLaVA/BLIP-2 untie them: a tied 2-layer random OPT repeats its last token forever,
    # untied ones give varied, image-dependent text (both backends load either).
    tie_word_embeddings: bool = False


def _pad_vocab(n_tokens: int, multiple: int = 64) -> int:
    # Published checkpoints pad the embedding matrix (LLaVA: 32002 -> 32064); so do we.
    return -(-n_tokens // multiple) * multiple


def build_llama_tokenizer(vocab_size: int, pad_to: int | None = None, corpus: str = CORPUS) -> Any:
    """A Llama-style tokenizer (byte-fallback BPE over "▁"-marked words) with ``<image>``.

    Ids as in Llama/LLaVA: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, the 256 ``<0xNN>`` byte tokens,
    then the learned merges; ``<image>`` and ``<pad>`` are added tokens after the vocabulary.
    ``pad_to`` fills the base vocabulary with unused tokens up to that size, so that ``<image>``
    gets the published id (32000 for llava-1.5 with ``pad_to=32000``). ``corpus``: the text the
    merges are learned from (whitespace-normalised).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, LlamaTokenizer

    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer_model = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_model.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(byte_tokens),
        special_tokens=specials,
        show_progress=False,
    )
    trainer_model.train_from_iterator([" ".join(corpus.split())], trainer=trainer)
    learned = json.loads(trainer_model.to_str())["model"]
    vocab = {token: i for i, token in enumerate(specials + byte_tokens)}
    for token, _ in sorted(learned["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    _fill_vocab(vocab, pad_to)
    merges = [tuple(merge) for merge in learned["merges"]]
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, legacy=False)
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)])
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return tokenizer


def build_opt_tokenizer(vocab_size: int, pad_to: int | None = None, corpus: str = CORPUS) -> Any:
    """An OPT-style byte-level BPE tokenizer (GPT-2 pre-tokenisation) with ``<image>``.

    Ids as in OPT: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2 (also the BOS OPT prepends), ``<unk>`` 3.
    ``pad_to`` and ``corpus`` as for :func:`build_llama_tokenizer` (``pad_to=50265`` gives
    BLIP-2's ``<image>`` id).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, GPT2Tokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    trainer_model = Tokenizer(models.BPE())
    trainer_model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    trainer_model.train_from_iterator([" ".join(corpus.split())], trainer=trainer)
    learned = json.loads(trainer_model.to_str())["model"]
    vocab = dict(learned["vocab"])
    _fill_vocab(vocab, pad_to)
    merges = [tuple(merge) for merge in learned["merges"]]
    tokenizer = GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
    )
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)])
    return tokenizer


def _fill_vocab(vocab: dict[str, int], size: int | None) -> None:
    # Tokens no merge produces: they only give the vocabulary its published size.
    while size is not None and len(vocab) < size:
        vocab[f"<unused_{len(vocab)}>"] = len(vocab)


def llava_processor(tokenizer: Any, image_size: int, patch_size: int) -> Any:
    """The llava-1.5 processor: CLIP preprocessing (shortest edge, centre crop), ``<image>``
    expanded to (image_size / patch_size)^2 tokens, the published chat template."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    return LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            do_center_crop=True,
            do_convert_rgb=True,
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711],
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS position
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def blip2_processor(tokenizer: Any, image_size: int, num_query_tokens: int) -> Any:
    """The BLIP-2 processor: BLIP preprocessing (resize to a square, CLIP statistics) and the
    query-token placeholders before the prompt."""
    from transformers import Blip2Processor, BlipImageProcessor

    image_processor = BlipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True,
    )
    return Blip2Processor(
        image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=num_query_tokens
    )


def llava_model(tokenizer: Any, sizes: TinySizes, seed: int) -> Any:
    """A randomly initialised (seeded) ``LlavaForConditionalGeneration`` of ``sizes`` around
    ``tokenizer`` (CLIP vision tower, Llama text model), in eval mode."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    pad_token_id = tokenizer.pad_token_id
    n_patches = (sizes.image_size // sizes.patch_size) ** 2
    vision = CLIPVisionConfig(
        hidden_size=sizes.vision_hidden,
        intermediate_size=sizes.vision_ffn,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=2,
        image_size=sizes.image_size,
        patch_size=sizes.patch_size,
        projection_dim=sizes.vision_hidden,
    )
    text = LlamaConfig(
        hidden_size=sizes.text_hidden,
        intermediate_size=sizes.text_ffn,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        num_key_value_heads=sizes.text_heads,
        vocab_size=_pad_vocab(len(tokenizer)),
        max_position_embeddings=sizes.max_positions,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=sizes.tie_word_embeddings,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        pad_token_id=pad_token_id,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=n_patches,
        tie_word_embeddings=sizes.tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    _set_generation_config(model, tokenizer)
    return model


def save_llava(
    model: Any, processor: Any, out_dir: str | os.PathLike[str], max_shard_size: str | None = None
) -> Path:
    """Save in the llava-hf layout (published tensor names: see :func:`_rename_tensors`);
    ``max_shard_size`` (e.g. "900KB") splits the weights into shards with an index, as the
    published checkpoints are split."""
    out_dir = Path(out_dir)
    _save(model, out_dir, max_shard_size)
    processor.save_pretrained(out_dir)
    _rename_tensors(out_dir, {"vision_tower.": "vision_tower.vision_model."})
    return out_dir


def _save(model: Any, out_dir: Path, max_shard_size: str | None) -> None:
    if max_shard_size is None:
        model.save_pretrained(out_dir)
    else:
        model.save_pretrained(out_dir, max_shard_size=max_shard_size)


def build_tiny_llava(
    out_dir: str | os.PathLike[str], seed: int = 0, sizes: TinySizes = TinySizes()
) -> Path:
    """Save a tiny random LLaVA-1.5 (CLIP vision + Llama) in the llava-hf layout to ``out_dir``."""
    tokenizer = build_llama_tokenizer(sizes.tokenizer_vocab)
    model = llava_model(tokenizer, sizes, seed)
    _silence_unreadable_tokens(model, tokenizer)
    save_llava(model, llava_processor(tokenizer, sizes.image_size, sizes.patch_size), out_dir)
    log.info("tiny LLaVA-1.5 written to %s (vocab %d)", out_dir, len(tokenizer))
    return Path(out_dir)


def blip2_model(tokenizer: Any, sizes: TinySizes, seed: int) -> Any:
    """A randomly initialised (seeded) ``Blip2ForConditionalGeneration`` of ``sizes`` around
    ``tokenizer`` (ViT, Q-Former, OPT), in eval mode."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    config = Blip2Config(
        vision_config={
            "hidden_size": sizes.vision_hidden,
            "intermediate_size": sizes.vision_ffn,
            "num_hidden_layers": sizes.vision_layers,
            "num_attention_heads": 2,
            "image_size": sizes.image_size,
            "patch_size": sizes.patch_size,
            # The class default (1e-10) would make every image embed alike.
            "initializer_range": 0.02,
        },
        qformer_config={
            "hidden_size": sizes.qformer_hidden,
            "num_hidden_layers": sizes.qformer_layers,
            "num_attention_heads": 2,
            "intermediate_size": 2 * sizes.qformer_hidden,
            "encoder_hidden_size": sizes.vision_hidden,
            "cross_attention_frequency": 1,
        },
        text_config={
            "model_type": "opt",
            "hidden_size": sizes.text_hidden,
            "ffn_dim": sizes.text_ffn,
            "num_hidden_layers": sizes.text_layers,
            "num_attention_heads": sizes.text_heads,
            "vocab_size": _pad_vocab(len(tokenizer)),
            "max_position_embeddings": sizes.max_positions,
            "word_embed_proj_dim": sizes.text_hidden,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "tie_word_embeddings": sizes.tie_word_embeddings,
        },
        tie_word_embeddings=sizes.tie_word_embeddings,
        num_query_tokens=sizes.blip2_query_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    _set_generation_config(model, tokenizer)
    return model


def save_blip2(
    model: Any, processor: Any, out_dir: str | os.PathLike[str], max_shard_size: str | None = None
) -> Path:
    """Save in the Salesforce/blip2 layout (transformers' own names are the published ones);
    ``max_shard_size`` as for :func:`save_llava`."""
    out_dir = Path(out_dir)
    _save(model, out_dir, max_shard_size)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_blip2(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    sizes: TinySizes = TinySizes(),
    newline_eos: bool = False,
) -> Path:
    """Save a tiny random BLIP-2 (ViT + Q-Former + OPT) in the Salesforce layout to ``out_dir``.

    ``newline_eos``: end replies at the newline token as ``Salesforce/blip2-opt-2.7b`` does (its
    ``generation_config.json`` has ``eos_token_id`` 50118, "\\n", while the tokenizer's EOS is
    ``</s>``); see :func:`_end_replies_at_newline`.
    """
    tokenizer = build_opt_tokenizer(sizes.tokenizer_vocab)
    model = blip2_model(tokenizer, sizes, seed)
    _silence_unreadable_tokens(model, tokenizer)
    if newline_eos:
        _end_replies_at_newline(model, tokenizer)
    processor = blip2_processor(tokenizer, sizes.image_size, sizes.blip2_query_tokens)
    save_blip2(model, processor, out_dir)
    log.info("tiny BLIP-2 written to %s (vocab %d)", out_dir, len(tokenizer))
    return Path(out_dir)


def build_tiny_models(out_dir: str | os.PathLike[str], seed: int = 0) -> dict[str, Path]:
    """Build both tiny checkpoints under ``out_dir``/{llava,blip2}; returns their paths."""
    out_dir = Path(out_dir)
    return {
        "llava": build_tiny_llava(out_dir / "llava", seed=seed),
        "blip2": build_tiny_blip2(out_dir / "blip2", seed=seed),
    }


def _silence_unreadable_tokens(model: Any, tokenizer: Any) -> None:
    """Zero the output-embedding rows of tokens that decode to nothing readable.

    A random model would otherwise mostly emit lone UTF-8 bytes (decoded as U+FFFD), special
    tokens or the padding rows past the tokenizer; with their logits pinned at 0 it picks among
    words instead (the EOS token stays possible), so tiny outputs are legible word salad.
    """
    import torch

    keep = {tokenizer.eos_token_id}
    silenced = []
    weight = model.get_output_embeddings().weight  # (vocab, hidden)
    for token_id in range(weight.shape[0]):
        if token_id in keep:
            continue
        if token_id >= len(tokenizer) or token_id in tokenizer.all_special_ids:
            silenced.append(token_id)
            continue
        text = tokenizer.decode([token_id])
        if not text.strip() or any(ch == "\ufffd" or not ch.isprintable() for ch in text):
            silenced.append(token_id)
    with torch.no_grad():
        weight[silenced] = 0.0


def _set_generation_config(model: Any, tokenizer: Any) -> None:
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id


# A word the seed-0 tiny BLIP-2 often generates; the newline token shadows it (newline_eos).
NEWLINE_SHADOWS = " day"


def _end_replies_at_newline(model: Any, tokenizer: Any) -> None:
    """Make "\n" the generation config's EOS, as in BLIP-2 OPT, and make the model emit it.

    A random model would hardly ever pick the newline, so its output-embedding row becomes
    1.01 x the row of :data:`NEWLINE_SHADOWS`: wherever that word would win with a positive
    logit, the newline wins instead and the reply stops there (other replies run to the token
    limit). The tokenizer's own EOS stays ``</s>``.
    """
    import torch

    (newline,) = tokenizer("\n", add_special_tokens=False)["input_ids"]
    (shadowed,) = tokenizer(NEWLINE_SHADOWS, add_special_tokens=False)["input_ids"]
    weight = model.get_output_embeddings().weight  # (vocab, hidden)
    with torch.no_grad():
        weight[newline] = 1.01 * weight[shadowed]
    model.generation_config.eos_token_id = newline


def _rename_tensors(out_dir: Path, prefixes: dict[str, str]) -> None:
    """Rewrite the checkpoint in ``out_dir`` (one file or shards with their index) with
    tensor-name prefixes replaced (old -> new).

    transformers 5 saves the LLaVA vision tower as ``vision_tower.embeddings...``; the published
    llava-hf checkpoints (and vLLM's loader) use ``vision_tower.vision_model.embeddings...``.
    transformers reads both, so writing the published names keeps every loader happy.
    """
    import json

    from safetensors.torch import load_file, save_file

    from dialogclip.core.io import atomic_path, write_json_atomic

    def renamed(name: str) -> str:
        for old, new in prefixes.items():
            if name.startswith(old) and not name.startswith(new):
                return new + name[len(old) :]
        return name

    for path in sorted(out_dir.glob("model*.safetensors")):
        tensors = {renamed(name): tensor for name, tensor in load_file(path).items()}
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata={"format": "pt"})
    index = out_dir / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {renamed(k): v for k, v in data["weight_map"].items()}
        write_json_atomic(data, index)
