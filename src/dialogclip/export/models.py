"""Trained runs as files other code loads (docs/export.md, "Trained models").

Each training run's evaluation entries (``TrainRun.eval_entries``) become files in one folder:

- a weight blend of any run, and a DRAFT run alone (its ``-beta0`` entry): a standard open_clip
  checkpoint, the whole CLIP state dict in safetensors, that
  ``open_clip.create_model_and_transforms(name, pretrained=file)`` loads. The image tower is the
  one the run started from; the text tower is the blend ``beta * T + (1 - beta) * trained``
  (beta 0: the trained tower);
- a third-tower run: its tower G under open_clip's text-tower names, and
  :func:`load_embedding_blend`, which builds the model of any of its embedding-blend entries;
- ``manifest.json``: every file with the open_clip name to load it under (``-quickgelu`` when
  the run used QuickGELU), the entry it reproduces and how.

The files give the project's own numbers: an exported model scores what its evaluation entry
scored (tests/export/test_export_models.py, through CLIP_benchmark).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dialogclip.core.io import atomic_dir, read_json, write_json_atomic
from dialogclip.models.eval_entry import EvalEntry
from dialogclip.models.openclip import ClipSpec, LoadedClip, load_clip, load_text_tower
from dialogclip.models.text_encoders import blend_weights

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ExportedModel:
    """One file of the folder, as ``manifest.json`` lists it."""

    file: str  # name inside the folder
    kind: str  # "open_clip" (a full checkpoint) | "third_tower" (a text tower G)
    open_clip_name: str  # the model name to create before loading the file
    entry: str | None  # the evaluation entry the file reproduces (open_clip files)
    entries: dict[str, float]  # third tower: its embedding-blend entries and their betas
    architecture: str
    pretrained: str  # the weights the run started from (tag or checkpoint path)
    quickgelu: bool
    beta: float | None  # weight of the original text tower T


def exported_entries(method: str, entries: list[EvalEntry]) -> list[EvalEntry]:
    """The entries exported as open_clip checkpoints: every weight blend, and for DRAFT the
    trained tower alone (beta 0). A third tower's embedding blends are not one CLIP's weights:
    they load through :func:`load_embedding_blend`."""

    def alone(entry: EvalEntry) -> bool:  # DRAFT's trained text tower with its image tower
        return method == "draft" and entry.text_variant == "embedding_blend" and entry.beta == 0

    return [e for e in entries if e.text_variant == "weight_blend" or alone(e)]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Own contiguous CPU copies: safetensors refuses tensors that share memory.
    return {
        name: t.detach().to("cpu").contiguous().clone() for name, t in model.state_dict().items()
    }


def export_run(
    run: str,
    method: str,
    entries: list[EvalEntry],
    tower: Path,
    output: Path,
    weights_dir: Path | None = None,
) -> list[ExportedModel]:
    """Write the folder ``output`` for the training run ``run`` (``method`` draft or
    third_tower), whose trained tower is ``tower`` and whose evaluation entries are
    ``entries`` (all on the run's model and ``other == tower``). Atomic: the folder appears
    complete or not at all."""
    if not entries:
        raise ValueError(f"training run {run}: no evaluation entries to export")
    first = entries[0]
    spec = ClipSpec(first.architecture, first.pretrained, first.quickgelu)
    clip = load_clip(spec, device="cpu", weights_dir=weights_dir)
    trained = load_text_tower(clip.model, tower)  # the run's model with the trained text tower
    common = {
        "open_clip_name": clip.open_clip_name,
        "architecture": first.architecture,
        "pretrained": first.pretrained,
        "quickgelu": clip.quickgelu,
    }
    exported: list[ExportedModel] = []
    with atomic_dir(output) as folder:
        for entry in exported_entries(method, entries):
            assert entry.beta is not None  # checked by EvalEntry for the blends
            model = blend_weights(clip.model, trained.state_dict(), entry.beta)
            file = f"{entry.name}.safetensors"
            save_file(_state(model), str(folder / file))
            exported.append(
                ExportedModel(
                    file, "open_clip", entry=entry.name, entries={}, beta=entry.beta, **common
                )
            )
            log.info("exported %s (%s, beta %g)", entry.name, entry.text_variant, entry.beta)
        if method == "third_tower":
            blends = {
                e.name: float(e.beta)
                for e in entries
                if e.text_variant == "embedding_blend" and e.beta is not None
            }
            file = f"{run}-tower.safetensors"
            shutil.copyfile(tower, folder / file)
            exported.append(
                ExportedModel(file, "third_tower", entry=None, entries=blends, beta=None, **common)
            )
            log.info("exported %s's tower G for %d embedding blends", run, len(blends))
        write_json_atomic(
            {"run": run, "method": method, "models": [asdict(m) for m in exported]},
            folder / MANIFEST,
        )
    return exported


class EmbeddingBlendCLIP(torch.nn.Module):
    """A CLIP whose text embedding is ``normalize(beta * T(x) + (1 - beta) * G(x))`` with unit
    T(x), G(x) (the project's ``embedding_blend``); images as the original model. It has the
    ``encode_image`` / ``encode_text`` of an open_clip model, so code written for one (e.g.
    CLIP_benchmark's ``zeroshot_retrieval.evaluate``) takes it."""

    def __init__(self, original: torch.nn.Module, third: torch.nn.Module, beta: float) -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.original, self.third, self.beta = original, third, beta

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """images [N, 3, H, W] -> [N, D]."""
        return self.original.encode_image(images, normalize=normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """tokens [N, context] -> [N, D] unit vectors (a blend is defined on unit vectors)."""
        t = F.normalize(self.original.encode_text(tokens), dim=-1)
        g = F.normalize(self.third.encode_text(tokens), dim=-1)
        return F.normalize(self.beta * t + (1 - self.beta) * g, dim=-1)


def load_embedding_blend(
    folder: str | Path, entry: str, pretrained: str | None = None, device: str = "cpu"
) -> LoadedClip:
    """The model of the embedding-blend entry ``entry`` from an exported third-tower folder:
    ``model`` (an :class:`EmbeddingBlendCLIP`), ``preprocess`` and ``tokenizer`` as open_clip
    gives them. The original weights are the run's own, ``pretrained`` in the manifest (a tag
    loads from open_clip's cache or hub; a checkpoint path is relative to the working
    directory the run was made in), unless ``pretrained`` names them here."""
    folder = Path(folder)
    manifest: dict[str, Any] = read_json(folder / MANIFEST, "exported models manifest")
    towers = [m for m in manifest["models"] if m["kind"] == "third_tower" and entry in m["entries"]]
    if not towers:
        raise ValueError(f"{folder / MANIFEST}: no third tower has the entry {entry!r}")
    tower = towers[0]
    beta = tower["entries"][entry]
    weights = pretrained or tower["pretrained"]
    clip = load_clip(ClipSpec(tower["architecture"], weights, tower["quickgelu"]), device=device)
    third = load_text_tower(clip.model, folder / tower["file"])
    model = EmbeddingBlendCLIP(clip.model, third, beta).eval()
    return LoadedClip(model, clip.preprocess, clip.tokenizer, clip.quickgelu, clip.model_name)
