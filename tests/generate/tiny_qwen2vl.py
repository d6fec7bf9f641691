"""A tiny random-initialised Qwen2-VL in the published Qwen/Qwen2-VL-*-Instruct layout (test only).

A second model family for the generators configured by data (generate.vlms): a chat VLM whose
prompt comes from its own chat template, which both vLLM (CPU) and transformers load. Written
like :mod:`dialogclip.world.tiny_models`: a byte-level BPE tokenizer learned offline from the
same corpus with Qwen2's special tokens, the Qwen2-VL processor (14 px patches merged 2x2, so an
image of up to 56 x 56 px becomes 1-4 ``<|image_pad|>`` tokens) with a Qwen-style chat
template, and a seeded random model (2-layer vision tower, 2-layer Qwen2 text model with
multimodal rotary positions) saved with ``save_pretrained``, whose tensor names
(``visual.*``, ``model.layers.*``, ``lm_head``) are the published ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dialogclip.world.tiny_models import CORPUS

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2-VL-Instruct's template in short: a default system turn, each image as
# <|vision_start|><|image_pad|><|vision_end|> before the text of its message.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen2_tokenizer(vocab_size: int = 600) -> Any:
    """A Qwen2-style byte-level BPE tokenizer (merges learned from CORPUS) with the special
    tokens of Qwen2-VL after the vocabulary; EOS ``<|im_end|>``, pad ``<|endoftext|>``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([" ".join(CORPUS.split())], trainer=trainer)
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return Qwen2TokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
    )


def build_tiny_qwen2vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny random Qwen2-VL (tokenizer, processor, model) to ``out_dir``."""
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokenizer = qwen2_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14, merge_size=2
        ),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    text = {
        "hidden_size": 128,  # 4 heads of 32: a head size vLLM's CPU attention supports
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": -(-len(tokenizer) // 64) * 64,  # padded, as published checkpoints are
        "max_position_embeddings": 1024,
        # Multimodal rotary positions: (time, height, width) sections of half the head size.
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},
        "tie_word_embeddings": False,
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision = {
        "depth": 2,
        "embed_dim": 64,
        "hidden_size": 128,  # the merger's output: the text model's width
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
