"""Feasibility of the thesis' two effects in the miniature world (issue 17, phase 1).

On a fixed baseline CLIP (pretrained on the world's partial captions: ``dialogclip world
pretrain-clip`` or ``build-models``), for each training seed:

- ``third``: a third text tower G, a copy of the baseline's text tower, trained with
  :func:`dialogclip.train.losses.third_tower_loss` on (dialogue, frozen image, frozen caption)
  of the world's CC3M scenes; scored by text-to-image R@1 on the world's COCO retrieval set
  (five complete captions per image), blended with the baseline by embeddings at each beta;
- ``third_shuffled``: the same with the dialogues shuffled across images (the sabotage arm: the
  gain must vanish);
- ``draft``: DRAFT, the baseline's text tower trained with
  :func:`dialogclip.train.losses.draft_loss` (text as query over the batch's images, scalar
  MMD norm) on (image, caption, one LLaVA pair) with the image tower frozen; scored by VQA v1
  multiple-choice accuracy (the official soft accuracy over ten annotators) on the world's
  real-format VQA set, blended by embeddings and by weights.

The dialogue is either the *oracle* dialogue (``--dialogue oracle``: what the world's VLMs
are trained to say, ``dialogclip.world.language``; whether the effects can exist at all) or
the dialogue the committed world models generate (``--dialogue generated --models DIR``):
the generation stage's own generators (:class:`~dialogclip.generate.generators.Blip2Generator`,
:class:`~dialogclip.generate.generators.LlavaGenerator`: their prompt building, BLIP-2's answer
cleaning, LLaVA's parsing by :func:`~dialogclip.generate.parsing.parse_qa_pairs`) on the
transformers backend, greedy, with the prompts the models were trained on (``build.json``).
As the training rows do, an image whose dialogue did not parse is left out, and the texts are
built by :class:`~dialogclip.core.text_forms.TextForms` (the ``text`` section's defaults).
The generated dialogue and its time per image go to ``--dialogue-cache`` (read back when it
exists, so the seeds of separate processes share one generation).
The figures go to a JSON file (``--output``) with the machine record; nothing is asserted.

    nice -n 10 .venv/bin/python bench/bench_world_effects.py --baseline CLIP --seeds 0 1 2 \
        --output benchmarks/world_effects.json

or one process per seed (``--seeds 0 --output .../seed0.json``, ...) and then
``--combine .../seed*.json --output benchmarks/world_effects.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from benchlib import machine_record

from dialogclip.core.logging import setup_logging
from dialogclip.core.text_forms import TextForms
from dialogclip.evaluate.vqa_accuracy import question_accuracy
from dialogclip.models.openclip import ClipSpec, load_clip
from dialogclip.models.text_encoders import blend_weights
from dialogclip.train.losses import draft_loss, third_tower_loss
from dialogclip.world import language
from dialogclip.world.build import BLIP2_MAX_NEW_TOKENS, BUILD_FILE, LLAVA_MAX_NEW_TOKENS
from dialogclip.world.clip import encode_text, epoch_captions, expand_compact, image_tensors
from dialogclip.world.scenes import Scene, draw_scenes, scene_rng
from dialogclip.world.vlms import as_stored

log = logging.getLogger("bench_world_effects")

BETAS = (1.0, 0.9, 0.8, 0.5, 0.0)  # 1.0 is the baseline itself
TEXT = TextForms()  # the text section's defaults: "{question} {answer}", pairs joined by " "
QA_TEMPLATE = TEXT.qa_template
GENERATION_BATCH = 16  # images per generate call (a machine setting: the replies are greedy)

# One scene's dialogue: (questions, answers), or None where the generator's reply did not parse.
Pairs = tuple[list[str], list[str]] | None


def _read_clip(path: Path, tmp: Path) -> Any:
    """The baseline, from a compact world checkpoint or an open_clip one."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        compact = "token_embedding.rows" in handle.keys()  # noqa: SIM118
    if compact:
        path = expand_compact(path, tmp / "baseline.safetensors")
    return load_clip(ClipSpec("world-clip", str(path)))


def _texts(model: Any, tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """Unit text embeddings [N, D]."""
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), 512):
            out.append(F.normalize(encode_text(model, tokenizer(texts[start : start + 512]))))
    return torch.cat(out)


def _images(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(model.encode_image(pixels))


Encoder = Callable[[Sequence[str]], torch.Tensor]


def _blend(base: Encoder, other: Encoder, beta: float) -> Encoder:
    """normalize(beta * T(x) + (1 - beta) * G(x)), the evaluation's embedding blend."""
    return lambda texts: F.normalize(beta * base(texts) + (1 - beta) * other(texts))


class Evaluation:
    """The world's retrieval set and real-format VQA set, as ``dialogclip world write`` builds
    them (same splits, streams and candidate construction)."""

    def __init__(self, world_seed: int, preprocess: Any, n_coco: int, n_vqa: int) -> None:
        coco = draw_scenes(world_seed, "coco", n_coco)
        self.captions: list[str] = []
        owners: list[int] = []
        for i, scene in enumerate(coco):
            captions = language.complete_captions(scene)
            self.captions += captions
            owners += [i] * len(captions)
        self.owners = torch.tensor(owners)
        self.coco_pixels = image_tensors(coco, preprocess)
        vqa = draw_scenes(world_seed, "vqa_real", n_vqa)
        asked = []
        for i, scene in enumerate(vqa):
            rng = scene_rng(scene.seed, scene.split, scene.index, "vqa")
            for question in language.vqa_questions(scene, rng):
                asked.append((i, question, language.human_answers(question, rng), rng))
        popular = language.popular_answers([humans for _, _, humans, _ in asked])
        truths = [question.answer for _, question, _, _ in asked]
        self.questions = [
            (i, q, humans, language.multiple_choices(q, rng, humans, popular, truths))
            for i, q, humans, rng in asked
        ]
        self.vqa_pixels = image_tensors(vqa, preprocess)

    def r_at_1(self, images: torch.Tensor, encode: Encoder) -> float:
        """Text-to-image R@1 over every complete caption (%)."""
        hits = (encode(self.captions) @ images.T).argmax(dim=1) == self.owners
        return round(100 * float(hits.float().mean()), 2)

    def vqa(self, images: torch.Tensor, encode: Encoder) -> dict[str, float]:
        """Official soft multiple-choice accuracy (%), overall and per question kind."""
        texts = sorted(
            {
                QA_TEMPLATE.format(question=q.question, answer=c)
                for _, q, _, cs in self.questions
                for c in cs
            }
        )
        row = {text: k for k, text in enumerate(texts)}
        embedded = encode(texts)
        by_kind: dict[str, list[float]] = {}
        for i, q, humans, choices in self.questions:
            rows = [row[QA_TEMPLATE.format(question=q.question, answer=c)] for c in choices]
            pick = choices[int((embedded[rows] @ images[i]).argmax())]
            by_kind.setdefault(q.kind, []).append(question_accuracy(pick, humans))
        scores = [s for kind in by_kind.values() for s in kind]
        result = {"all": round(100 * statistics.fmean(scores), 2)}
        result.update({k: round(100 * statistics.fmean(v), 2) for k, v in sorted(by_kind.items())})
        return result


def _text_params(model: Any) -> list[torch.nn.Parameter]:
    return [
        p for n, p in model.named_parameters() if not n.startswith("visual") and n != "logit_scale"
    ]


def _cosine(lr: float, step: int, total: int) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * step / total))


def train_third(
    base: Any,
    tokenizer: Any,
    images: torch.Tensor,
    captions: torch.Tensor,
    dialogues: list[str],
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
) -> tuple[Any, int]:
    """G: a copy of the baseline trained on (dialogue -> frozen image / frozen caption)."""
    torch.manual_seed(seed)
    tower = copy.deepcopy(base).train()
    tokens = tokenizer(dialogues)
    optimizer = torch.optim.AdamW(_text_params(tower), lr=lr, weight_decay=0.1)
    scale = float(base.logit_scale.detach().exp())
    generator = torch.Generator().manual_seed(seed)
    total, step = epochs * math.ceil(len(dialogues) / batch_size), 0
    for epoch in range(epochs):
        order = torch.randperm(len(dialogues), generator=generator)
        running = []
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            for group in optimizer.param_groups:
                group["lr"] = _cosine(lr, step, total)
            dialogue = F.normalize(encode_text(tower, tokens[batch]))
            loss = third_tower_loss(dialogue, images[batch], captions[batch], scale)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            running.append(float(loss.detach()))
        log.info("third tower epoch %d: loss %.3f", epoch + 1, statistics.fmean(running))
    return tower.eval(), step


def train_draft(
    base: Any,
    tokenizer: Any,
    images: torch.Tensor,
    captions: list[str],
    pairs: list[list[str]],
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    mmd_weight: float,
) -> tuple[Any, int]:
    """DRAFT: the baseline's text tower trained on (image, caption, one pair) samples, each
    batch holding an image at most once (the loss's denominators run over the batch's images)."""
    torch.manual_seed(seed)
    tower = copy.deepcopy(base).train()
    samples = [(i, k) for i, image_pairs in enumerate(pairs) for k in range(len(image_pairs))]
    caption_tokens = tokenizer(captions)
    pair_tokens = {(i, k): tokenizer([pairs[i][k]])[0] for i, k in samples}
    optimizer = torch.optim.AdamW(_text_params(tower), lr=lr, weight_decay=0.1)
    scale = float(base.logit_scale.detach().exp())
    rng = random.Random(seed)
    most = max(len(p) for p in pairs)
    total, step = epochs * math.ceil(len(samples) / batch_size), 0
    for epoch in range(epochs):
        # Round r takes each image's r-th pair (in a fresh order), so a batch of one round
        # never holds an image twice.
        order = []
        ks = {i: rng.sample(range(len(p)), len(p)) for i, p in enumerate(pairs)}
        for r in range(most):
            round_ = [(i, ks[i][r]) for i in range(len(pairs)) if r < len(ks[i])]
            rng.shuffle(round_)
            order += [round_[s : s + batch_size] for s in range(0, len(round_), batch_size)]
        running = []
        for batch in order:
            if len(batch) < 8:
                continue
            for group in optimizer.param_groups:
                group["lr"] = _cosine(lr, step, total)
            index = torch.tensor([i for i, _ in batch])
            caption = F.normalize(encode_text(tower, caption_tokens[index]))
            dialogue = F.normalize(encode_text(tower, torch.stack([pair_tokens[s] for s in batch])))
            loss, _ = draft_loss(images[index], caption, dialogue, scale, mmd_weight=mmd_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            running.append(float(loss.detach()))
        log.info(
            "DRAFT (mmd %.1f) epoch %d: loss %.3f", mmd_weight, epoch + 1, statistics.fmean(running)
        )
    return tower.eval(), step


def oracle_dialogue(scenes: Sequence[Scene]) -> dict[str, list[Pairs]]:
    """What the world's VLMs are trained to say about each scene."""
    questions = list(language.BLIP2_QUESTIONS)
    llava = [tuple(map(list, zip(*language.llava_pairs(scene), strict=True))) for scene in scenes]
    return {
        "blip2": [(questions, list(language.blip2_answers(scene))) for scene in scenes],
        "llava": llava,  # type: ignore[dict-item]
    }


def generated_dialogue(models: Path, scenes: Sequence[Scene]) -> dict[str, Any]:
    """The committed world models' dialogue about each scene, through the generation stage's
    generators on the transformers backend (module docstring), and the seconds per image."""
    from dialogclip.generate.config import (
        Blip2Settings,
        LlavaSettings,
        SamplingSettings,
        TransformersSettings,
    )
    from dialogclip.generate.generators import Blip2Generator, LlavaGenerator
    from dialogclip.generate.hf_backend import TransformersBackend
    from dialogclip.generate.parsing import PARSE_OK

    prompts = json.loads((models / BUILD_FILE).read_text())["prompts"]
    generators = {
        "blip2": Blip2Generator(
            Blip2Settings(
                model=str(models / "blip2"),
                questions=list(prompts["blip2_questions"]),
                prompt_template=prompts["blip2_prompt_template"],
                context_template=prompts["blip2_context_template"],
                max_new_tokens=BLIP2_MAX_NEW_TOKENS,
            )
        ),
        "llava": LlavaGenerator(
            LlavaSettings(
                model=str(models / "llava"),
                question=prompts["llava_question"],
                prompt_template=prompts["llava_prompt_template"],
                max_new_tokens=LLAVA_MAX_NEW_TOKENS,
                structured_output=False,
            )
        ),
    }
    images = [as_stored(scene) for scene in scenes]
    keys = [f"{scene.index:09d}" for scene in scenes]
    out: dict[str, Any] = {"scenes": len(scenes), "seconds_per_image": {}, "parse_ok": {}}
    for name, generator in generators.items():
        started = time.monotonic()
        backend = TransformersBackend(
            name,
            generator.settings.model,
            None,
            TransformersSettings(batch_size=GENERATION_BATCH, device="cpu"),
            SamplingSettings(),
        )
        loaded = time.monotonic()
        dialogues = generator.run(backend, images, keys)
        done = time.monotonic()
        out[name] = [
            (d.questions, d.answers) if d.parse_status == PARSE_OK else None for d in dialogues
        ]
        out[f"{name}_responses"] = [d.responses for d in dialogues[:20]]  # a sample to read
        out["seconds_per_image"][name] = round((done - loaded) / len(scenes), 4)
        out[f"{name}_load_seconds"] = round(loaded - started, 2)
        out["parse_ok"][name] = round(sum(d is not None for d in out[name]) / len(scenes), 4)
        log.info(
            "generated %s for %d scenes: %.3f s per image, %.1f %% parsed",
            name,
            len(scenes),
            out["seconds_per_image"][name],
            100 * out["parse_ok"][name],
        )
    return out


def load_dialogue(
    args: argparse.Namespace, scenes: Sequence[Scene]
) -> tuple[dict[str, list[Pairs]], dict[str, Any]]:
    """The training dialogue of ``--dialogue`` (generated once per ``--dialogue-cache``), and
    its record (for generated dialogue: the generation's time per image and parse rates)."""
    if args.dialogue == "oracle":
        return oracle_dialogue(scenes), {"source": "oracle"}
    cache = args.dialogue_cache
    if cache is not None and cache.exists():
        record = json.loads(cache.read_text())
        # Scene i does not depend on how many are drawn: a larger cache serves its first ones.
        if record["scenes"] < len(scenes) or record["models"] != str(args.models):
            raise SystemExit(
                f"{cache}: generated for {record['scenes']} scenes by {record['models']}, not "
                f"{len(scenes)} by {args.models}; remove it or name another --dialogue-cache"
            )
    else:
        record = {"models": str(args.models), **generated_dialogue(args.models, scenes)}
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(record) + "\n")
    dialogue = {name: record[name][: len(scenes)] for name in ("blip2", "llava")}
    keys = ("models", "scenes", "seconds_per_image", "parse_ok")
    summary = {key: record[key] for key in keys} | {
        f"{name}_load_seconds": record[f"{name}_load_seconds"] for name in ("blip2", "llava")
    }
    return dialogue, {"source": "generated", **summary}


def _per_step(seconds: float, steps: int) -> float:
    return round(seconds / max(steps, 1), 4)


def run_seed(
    clip: Any,
    evaluation: Evaluation,
    train_scenes: list[Scene],
    dialogue: dict[str, list[Pairs]],
    seed: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Every arm for one training seed."""
    model, tokenizer = clip.model, clip.tokenizer
    base: Encoder = lambda texts: _texts(model, tokenizer, texts)  # noqa: E731
    coco_images = _images(model, evaluation.coco_pixels)
    vqa_images = _images(model, evaluation.vqa_pixels)
    pixels = image_tensors(train_scenes, clip.preprocess)
    images = _images(model, pixels)
    captions = epoch_captions(train_scenes, 0)
    caption_embeddings = base(captions)
    result: dict[str, Any] = {"seed": seed}
    # As the training rows do, an image whose dialogue did not parse is left out.
    third_kept = torch.tensor([i for i, d in enumerate(dialogue["blip2"]) if d is not None])
    dialogues = [TEXT.dialogue(*d) for d in dialogue["blip2"] if d is not None]
    arms: dict[str, list[str]] = {} if args.skip_third else {"third": dialogues}
    if not (args.skip_third or args.skip_sabotage):
        shuffled = list(dialogues)
        random.Random(seed).shuffle(shuffled)
        arms["third_shuffled"] = shuffled
    for arm, texts in arms.items():
        started = time.monotonic()
        tower, steps = train_third(
            model,
            tokenizer,
            images[third_kept],
            caption_embeddings[third_kept],
            texts,
            seed,
            args.third_epochs,
            args.batch_size,
            args.lr,
        )
        seconds = time.monotonic() - started
        other: Encoder = lambda texts, t=tower: _texts(t, tokenizer, texts)  # noqa: E731
        result[arm] = {
            "seconds": round(seconds, 1),
            "images": len(texts),
            "steps": steps,
            "seconds_per_step": _per_step(seconds, steps),
            "r1": {str(b): evaluation.r_at_1(coco_images, _blend(base, other, b)) for b in BETAS},
        }
        log.info("seed %d %s: %s", seed, arm, result[arm])
    draft_kept = [i for i, d in enumerate(dialogue["llava"]) if d is not None]
    pairs = [TEXT.pairs(*dialogue["llava"][i]) for i in draft_kept]  # type: ignore[misc]
    mmd_arms = (("draft", 1.0), ("draft_nommd", 0.0))[: 1 if args.skip_nommd else 2]
    for arm, mmd_weight in () if args.skip_draft else mmd_arms:
        started = time.monotonic()
        tower, steps = train_draft(
            model,
            tokenizer,
            images[torch.tensor(draft_kept)],
            [captions[i] for i in draft_kept],
            pairs,
            seed,
            args.draft_epochs,
            args.draft_batch_size or args.batch_size,
            args.draft_lr if args.draft_lr is not None else args.lr,
            mmd_weight,
        )
        seconds = time.monotonic() - started
        other = lambda texts, t=tower: _texts(t, tokenizer, texts)  # noqa: E731
        weights = {b: blend_weights(model, tower.state_dict(), b) for b in (0.9, 0.5)}
        result[arm] = {
            "seconds": round(seconds, 1),
            "images": len(pairs),
            "steps": steps,
            "seconds_per_step": _per_step(seconds, steps),
            "vqa_embedding_blend": {
                str(b): evaluation.vqa(vqa_images, _blend(base, other, b)) for b in BETAS
            },
            "vqa_weight_blend": {
                str(b): evaluation.vqa(vqa_images, lambda x, m=m: _texts(m, tokenizer, x))
                for b, m in weights.items()
            },
            "r1_embedding_blend_0.9": evaluation.r_at_1(coco_images, _blend(base, other, 0.9)),
        }
        log.info("seed %d %s: %s", seed, arm, result[arm])
    return result


def spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(values), 2),
        "sd": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def effects(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each effect's gain over the baseline (percentage points) across seeds."""
    out: dict[str, Any] = {}
    for arm in ("third", "third_shuffled"):
        if all(arm in r for r in runs):
            gains = [r[arm]["r1"]["0.9"] - r[arm]["r1"]["1.0"] for r in runs]
            out[f"{arm}_r1_gain_beta0.9"] = spread(gains)
    for arm in ("draft", "draft_nommd"):
        if all(arm in r for r in runs):
            for blend in ("vqa_embedding_blend", "vqa_weight_blend"):
                base = [r[arm]["vqa_embedding_blend"]["1.0"]["all"] for r in runs]
                blended = [r[arm][blend]["0.9"]["all"] for r in runs]
                gains = [b - a for a, b in zip(base, blended, strict=True)]
                out[f"{arm}_{blend}_gain_beta0.9"] = spread(gains)
    return out


def combine(outputs: Sequence[Path], output: Path) -> int:
    """Write the effects over every run of ``outputs`` (each a file this script wrote)."""
    records = [json.loads(path.read_text()) for path in outputs]
    runs = [run for record in records for run in record["runs"]]
    combined = {
        "combined": [str(path) for path in outputs],
        "seconds": [record["seconds"] for record in records],
        "machines": [record["machine"] for record in records],
        "runs": runs,
        "effects": effects(runs),
    }
    output.write_text(json.dumps(combined, indent=2) + "\n")
    log.info("effects over %d runs: %s", len(runs), json.dumps(combined["effects"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="world CLIP (compact or not)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=3000, help="CC3M scenes trained on")
    parser.add_argument("--n-coco", type=int, default=300)
    parser.add_argument("--n-vqa", type=int, default=300)
    parser.add_argument("--third-epochs", type=int, default=6)
    parser.add_argument("--draft-epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--draft-lr", type=float, help="DRAFT's learning rate (default --lr)")
    parser.add_argument("--draft-batch-size", type=int, help="DRAFT's batch (default --batch-size)")
    parser.add_argument("--dialogue", choices=("oracle", "generated"), default="oracle")
    parser.add_argument(
        "--models",
        type=Path,
        default=Path("resources/demo/world_models"),
        help="the world models that generate the dialogue (--dialogue generated)",
    )
    parser.add_argument(
        "--dialogue-cache", type=Path, help="generated dialogue: written once, then read"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-sabotage", action="store_true")
    parser.add_argument("--skip-nommd", action="store_true")
    parser.add_argument("--skip-third", action="store_true")
    parser.add_argument("--skip-draft", action="store_true")
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        help="instead of training: the effects over the runs of these outputs (one process per "
        "seed, run side by side)",
    )
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    setup_logging()
    if args.combine:
        return combine(args.combine, args.output)
    if args.baseline is None:
        parser.error("--baseline is required (or --combine)")
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        clip = _read_clip(args.baseline, Path(tmp))
    evaluation = Evaluation(args.world_seed, clip.preprocess, args.n_coco, args.n_vqa)
    train_scenes = draw_scenes(args.world_seed, "cc3m", args.n_train)
    dialogue, dialogue_record = load_dialogue(args, train_scenes)
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(clip, evaluation, train_scenes, dialogue, seed, args))
        record = {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": machine_record(args.threads),
            "dialogue": dialogue_record,
            "seconds": round(time.monotonic() - started, 1),
            "runs": runs,
            "effects": effects(runs),
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=2) + "\n")
    log.info("effects: %s", json.dumps(record["effects"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
