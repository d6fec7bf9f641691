"""Building the world's three models in one go, and measuring what they do on held-out scenes.

:func:`build_models` trains the baseline CLIP (:mod:`.clip`) and the two VLMs (:mod:`.vlms`)
into one folder, stores them small (float16; the CLIP without its unused token rows, the VLMs
in shards under 1 MB) and writes ``build.json``: the settings, the prompts the VLMs were
trained on, the training times and losses, and the models' *behaviour* on held-out scenes
(:func:`behaviour`). The folder is what the repository commits (docs/world.md says why); a
rebuild reproduces the behaviour, not the bytes (CPU float arithmetic depends on the machine).

:func:`behaviour` is the yardstick of both the build and its tests: the VLMs' greedy replies to
the configured prompts on scenes of a split no model trained on, scored by the grounding
checker (and LLaVA's by the free-text reading of three pairs), and the CLIP's retrieval of those
scenes by their complete captions.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dialogclip.core.config import ConfigError, load_yaml, section_from_dict, validate_config
from dialogclip.core.io import write_json_atomic
from dialogclip.core.prompts import blip2_prompt, clean_blip2_answer, llava_prompt
from dialogclip.world import language
from dialogclip.world.clip import ClipPretraining, expand_compact, pretrain_clip
from dialogclip.world.grounding import Check, check_pairs, check_text
from dialogclip.world.scenes import Scene, draw_scenes, scene_rng
from dialogclip.world.vlms import VlmPrompts, VlmTraining, as_stored, train_world_vlm

log = logging.getLogger(__name__)

CLIP_FILE = "clip.safetensors"  # compact: dialogclip world expand-clip makes the checkpoint
BUILD_FILE = "build.json"
HELD_OUT_SPLIT = "heldout"  # scenes no model of the world trains on
MAX_SHARD_SIZE = "900KB"  # every committed file stays under 1 MB
# Reply budgets of the behaviour check: room beyond the longest reply the world writes (a
# three-object BLIP-2 description is ~30 tokens, LLaVA's three pairs ~40).
BLIP2_MAX_NEW_TOKENS = 48
LLAVA_MAX_NEW_TOKENS = 80


@dataclass(frozen=True)
class ModelsSettings:
    """The training settings of the three models (science: ``--params`` of build-models)."""

    clip: ClipPretraining = field(default_factory=ClipPretraining)
    blip2: VlmTraining = field(default_factory=VlmTraining)
    llava: VlmTraining = field(default_factory=VlmTraining)
    held_out: int = 200  # scenes of the behaviour check


def prompts_from_config(
    config: str | os.PathLike[str], schema: str | os.PathLike[str]
) -> VlmPrompts:
    """The generators' prompts of a workflow config (schema defaults filled in)."""
    data = validate_config(load_yaml(config) or {}, schema, source=str(config))
    blip2, llava = data["generate"]["blip2"], data["generate"]["llava"]
    if llava.get("structured_output"):
        raise ConfigError(
            f"{config}: the world's LLaVA answers in free text; set "
            "generate.llava.structured_output to false"
        )
    return VlmPrompts(
        blip2_questions=tuple(blip2["questions"]),
        blip2_prompt_template=blip2["prompt_template"],
        blip2_context_template=blip2["context_template"],
        llava_question=llava["question"],
        llava_prompt_template=llava["prompt_template"],
    )


def build_models(
    out_dir: str | os.PathLike[str],
    prompts: VlmPrompts,
    settings: ModelsSettings,
    world_seed: int,
) -> dict[str, Any]:
    """Train the three models into ``out_dir`` and write ``build.json`` (returned)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    summary: dict[str, Any] = {
        "world_seed": world_seed,
        "settings": asdict(settings),
        "prompts": asdict(prompts),
        "machine": {"threads": torch.get_num_threads(), "python": platform.python_version()},
        "versions": _versions(),
    }
    summary["clip"] = pretrain_clip(out_dir / CLIP_FILE, settings.clip, world_seed)
    for name in ("blip2", "llava"):
        summary[name] = train_world_vlm(
            name,
            out_dir / name,
            prompts,
            getattr(settings, name),
            world_seed,
            max_shard_size=MAX_SHARD_SIZE,
        )
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["behaviour"] = behaviour(out_dir, prompts, world_seed, settings.held_out)
    write_json_atomic(summary, out_dir / BUILD_FILE)
    return summary


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "open_clip_torch")}


# --- behaviour on held-out scenes ------------------------------------------------------------


def behaviour(
    models: str | os.PathLike[str], prompts: VlmPrompts, world_seed: int, n_scenes: int
) -> dict[str, Any]:
    """What the models in ``models`` do on ``n_scenes`` held-out scenes (module docstring)."""
    scenes = draw_scenes(world_seed, HELD_OUT_SPLIT, n_scenes)
    blip2 = blip2_replies(Path(models) / "blip2", prompts, scenes)
    llava = llava_replies(Path(models) / "llava", prompts, scenes)
    return {
        "scenes": n_scenes,
        "blip2": score_blip2(blip2, scenes),
        "llava": score_llava(llava, scenes),
        "clip": clip_retrieval(Path(models) / CLIP_FILE, scenes),
    }


def _load(name: str, model_dir: Path) -> tuple[Any, Any]:
    from transformers import (
        AutoProcessor,
        Blip2ForConditionalGeneration,
        LlavaForConditionalGeneration,
    )

    cls = Blip2ForConditionalGeneration if name == "blip2" else LlavaForConditionalGeneration
    model = cls.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    return model, processor


def _greedy(
    model: Any, processor: Any, images: Sequence[Any], prompts: Sequence[str], max_new: int
) -> list[str]:
    """Greedy replies (special tokens skipped), stopping at the tokenizer's or the generation
    config's end token, as the generation stage decodes."""
    tokenizer = processor.tokenizer
    stops = {tokenizer.eos_token_id}
    eos = model.generation_config.eos_token_id
    stops.update(eos if isinstance(eos, list) else [eos])
    replies = []
    for start in range(0, len(prompts), 16):
        inputs = processor(
            images=list(images[start : start + 16]),
            text=list(prompts[start : start + 16]),
            padding=True,
            return_tensors="pt",
        )
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=sorted(stops),
                pad_token_id=tokenizer.pad_token_id,
            )
        new = output[:, inputs["input_ids"].shape[1] :]
        replies += tokenizer.batch_decode(new, skip_special_tokens=True)
    return replies


def blip2_replies(model_dir: Path, prompts: VlmPrompts, scenes: Sequence[Scene]) -> list[list[str]]:
    """Each scene's BLIP-2 answers, turn by turn as the generation stage asks them."""
    model, processor = _load("blip2", model_dir)
    images = [as_stored(scene) for scene in scenes]
    answers: list[list[str]] = [[] for _ in scenes]
    for _ in prompts.blip2_questions:
        texts = [
            blip2_prompt(
                prompts.blip2_prompt_template,
                prompts.blip2_context_template,
                prompts.blip2_questions,
                done,
            )
            for done in answers
        ]
        for done, reply in zip(
            answers, _greedy(model, processor, images, texts, BLIP2_MAX_NEW_TOKENS), strict=True
        ):
            done.append(clean_blip2_answer(reply, prompts.blip2_prompt_template))
    return answers


def llava_replies(model_dir: Path, prompts: VlmPrompts, scenes: Sequence[Scene]) -> list[str]:
    """Each scene's raw LLaVA reply to the configured question."""
    model, processor = _load("llava", model_dir)
    prompt = llava_prompt(prompts.llava_prompt_template, prompts.llava_question)
    images = [as_stored(scene) for scene in scenes]
    return _greedy(model, processor, images, [prompt] * len(scenes), LLAVA_MAX_NEW_TOKENS)


def score_blip2(answers: Sequence[Sequence[str]], scenes: Sequence[Scene]) -> dict[str, Any]:
    """Grounding of BLIP-2 answers, over both turns and per turn."""
    turns = [Check() for _ in range(max(len(a) for a in answers))]
    for scene_answers, scene in zip(answers, scenes, strict=True):
        for turn, answer in enumerate(scene_answers):
            turns[turn] += check_text(answer, scene)
    total = Check()
    for turn in turns:
        total += turn
    return {"grounding": total.as_dict(), "per_turn": [turn.as_dict() for turn in turns]}


# The free-text reading the world's LLaVA writes for: "Q1: ... A1: ..." lines. The generation
# stage's parser (dialogclip.generate.parsing) reads more shapes; a test holds that it reads
# these replies the same way.
_PAIR = re.compile(r"Q(\d):\s*(?P<q>[^\n]*?)\s*\n\s*A\1:\s*(?P<a>[^\n]*)")


def read_pairs(reply: str) -> list[tuple[str, str]]:
    """The ``Qn: ... An: ...`` pairs of a reply, in order."""
    return [(m.group("q").strip(), m.group("a").strip()) for m in _PAIR.finditer(reply)]


def score_llava(replies: Sequence[str], scenes: Sequence[Scene]) -> dict[str, Any]:
    """Grounding of the LLaVA pairs and the share of replies with exactly three pairs."""
    total = Check()
    three = 0
    for reply, scene in zip(replies, scenes, strict=True):
        pairs = read_pairs(reply)
        three += len(pairs) == language.LLAVA_PAIRS
        if pairs:
            questions, answers = zip(*pairs, strict=True)
            total += check_pairs(questions, answers, scene)
        else:
            total += Check(0, 0, 1, 1)
    return {"grounding": total.as_dict(), "three_pairs_rate": round(three / len(replies), 4)}


def clip_retrieval(compact: Path, scenes: Sequence[Scene]) -> dict[str, float]:
    """Text-to-image R@1 of the CLIP over ``scenes``: by their first complete caption, and by
    one partial caption each."""
    import tempfile

    import torch.nn.functional as F

    from dialogclip.models.openclip import ClipSpec, load_clip
    from dialogclip.world.clip import image_tensors

    with tempfile.TemporaryDirectory() as tmp:
        full = expand_compact(compact, Path(tmp) / "clip.safetensors")
        architecture = json.loads(_metadata(full))["architecture"]
        clip = load_clip(ClipSpec(architecture, str(full)))
    captions = {
        "complete": [language.complete_captions(scene)[0] for scene in scenes],
        "partial": [
            language.partial_caption(scene, scene_rng(scene.seed, scene.split, scene.index, "b"))
            for scene in scenes
        ],
    }
    result = {}
    with torch.inference_mode():
        images = F.normalize(clip.model.encode_image(image_tensors(list(scenes), clip.preprocess)))
        for kind, texts in captions.items():
            text = F.normalize(clip.model.encode_text(clip.tokenizer(texts)))
            hits = (text @ images.T).argmax(dim=1) == torch.arange(len(scenes))
            result[f"r1_{kind}"] = round(float(hits.float().mean()), 4)
    return result


def _metadata(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return json.dumps(handle.metadata() or {})


def compare_behaviour(
    committed: Mapping[str, Any], rebuilt: Mapping[str, Any], tolerance: float
) -> list[str]:
    """The rates of ``rebuilt`` that differ from ``committed`` by more than ``tolerance``."""
    pairs = [
        ("blip2 grounding", ("blip2", "grounding", "rate")),
        ("llava grounding", ("llava", "grounding", "rate")),
        ("llava three pairs", ("llava", "three_pairs_rate")),
        ("clip complete R@1", ("clip", "r1_complete")),
        ("clip partial R@1", ("clip", "r1_partial")),
    ]
    problems = []
    for name, path in pairs:
        a, b = committed, rebuilt
        for key in path:
            a, b = a[key], b[key]
        if abs(a - b) > tolerance:
            problems.append(f"{name}: committed {a}, rebuilt {b}")
    return problems


def settings_from_params(params: Mapping[str, Any]) -> ModelsSettings:
    return section_from_dict(ModelsSettings, params, "models")
