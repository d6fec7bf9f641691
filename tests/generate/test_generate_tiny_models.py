"""Tiny checkpoints: published on-disk layout, offline tokenizers with <image>, reproducible."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors import safe_open

from dialogclip.world.tiny_models import build_tiny_blip2


def _tensor_names(model_dir: Path) -> list[str]:
    with safe_open(model_dir / "model.safetensors", "pt") as handle:
        return list(handle.keys())


def test_llava_layout_matches_llava_hf(tiny_models: dict[str, Path]) -> None:
    model_dir = tiny_models["llava"]
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
    ):
        assert (model_dir / name).is_file(), name
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["text_config"]["model_type"] == "llama"
    assert config["vision_config"]["model_type"] == "clip_vision_model"
    assert config["vision_feature_layer"] == -2
    prefixes = {name.split(".")[0] + "." + name.split(".")[1] for name in _tensor_names(model_dir)}
    # llava-hf/llava-1.5-7b-hf tensor names (what vLLM's loader expects).
    assert prefixes == {
        "vision_tower.vision_model",
        "multi_modal_projector.linear_1",
        "multi_modal_projector.linear_2",
        "language_model.model",
        "language_model.lm_head",
    }


def test_blip2_layout_matches_salesforce(tiny_models: dict[str, Path]) -> None:
    model_dir = tiny_models["blip2"]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["Blip2ForConditionalGeneration"]
    assert config["text_config"]["model_type"] == "opt"
    roots = {name.split(".")[0] for name in _tensor_names(model_dir)}
    assert roots == {
        "vision_model",
        "qformer",
        "query_tokens",
        "language_projection",
        "language_model",
    }


def test_tokenizers_contain_image_and_round_trip(tiny_models: dict[str, Path]) -> None:
    from transformers import AutoProcessor

    for name, model_dir in tiny_models.items():
        processor = AutoProcessor.from_pretrained(model_dir)
        tokenizer = processor.tokenizer
        image_id = tokenizer.convert_tokens_to_ids("<image>")
        assert image_id != tokenizer.unk_token_id, name
        assert tokenizer.encode("<image>", add_special_tokens=False) == [image_id]
        text = "What do you see in this image?"
        ids = tokenizer.encode(text)
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        assert len(ids) < 15, name  # the prompts' words are in the vocabulary


def test_models_load_in_transformers_without_missing_weights(tiny_models: dict[str, Path]) -> None:
    from transformers import Blip2ForConditionalGeneration, LlavaForConditionalGeneration

    for cls, name in (
        (LlavaForConditionalGeneration, "llava"),
        (Blip2ForConditionalGeneration, "blip2"),
    ):
        _, info = cls.from_pretrained(tiny_models[name], output_loading_info=True)
        assert not info["missing_keys"], (name, info["missing_keys"])
        assert not info["unexpected_keys"], (name, info["unexpected_keys"])


def test_rebuild_is_byte_identical(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    build_tiny_blip2(tmp_path / "blip2", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        digests = {
            hashlib.sha256((root / name).read_bytes()).hexdigest()
            for root in (tiny_models["blip2"], tmp_path / "blip2")
        }
        assert len(digests) == 1, name
