"""The ``report`` section of the config, typed, and the evaluation entries the report reads.

The report never imports the evaluate stage: it receives the evaluation entries (``evaluate.models``
and the training runs' variants) as plain JSON from its rule, as the one entry type both stages
share (:class:`dialogclip.models.eval_entry.EvalEntry`); their text variant, beta, tower and
thesis row decide where a result goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dialogclip.core.config import ConfigError, section_from_dict
from dialogclip.models.eval_entry import EvalEntry
from dialogclip.models.openclip import ClipSpec


@dataclass(frozen=True)
class ReportClip:
    """The CLIP model that scores dialogue and captions against images (``report.clip``)."""

    architecture: str = "ViT-B-32"  # open_clip model name (CLIPScore's paper: ViT-B/32)
    pretrained: str = "openai"  # open_clip tag or checkpoint path
    quickgelu: bool | str = "auto"  # as in evaluate.models

    @property
    def spec(self) -> ClipSpec:
        return ClipSpec(self.architecture, self.pretrained, self.quickgelu)


@dataclass(frozen=True)
class DialogueQualitySettings:
    """``report.dialogue_quality``: what the per-generator statistics compute."""

    activate: bool = True
    # Images scored with CLIPScore per generator (null: all). Chosen by a hash of the key, so
    # both generators score the same images and a rerun the same ones.
    sample: int | None = 10000
    prefix: str = "A photo depicts"  # CLIPScore's prompt prefix (Hessel et al. 2021)
    weight: float = 2.5  # CLIPScore's w: w * max(cos, 0)
    seed: int = 0  # salts the key hash that picks the sample

    def __post_init__(self) -> None:
        if self.sample is not None and self.sample < 1:
            raise ConfigError(f"report.dialogue_quality.sample must be >= 1, got {self.sample}")
        if self.weight <= 0:
            raise ConfigError(f"report.dialogue_quality.weight must be > 0, got {self.weight}")


@dataclass(frozen=True)
class GallerySettings:
    """``report.gallery``: the page of sample images with their caption and dialogue."""

    samples: int = 12  # images shown, spread evenly over the downloaded ones in key order

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ConfigError(f"report.gallery.samples must be >= 0, got {self.samples}")


@dataclass(frozen=True)
class ReportSettings:
    """What the ``report`` command receives from its rule (``--params``)."""

    models: list[EvalEntry] = field(default_factory=list)  # evaluate.models, in config order
    generators: list[str] = field(default_factory=list)  # generate.generators
    decimals: int = 2  # our numbers and the differences, in percent
    gallery: GallerySettings = field(default_factory=GallerySettings)
    # false: our numbers alone, no thesis row or difference (results that reproduce no row)
    compare_with_thesis: bool = True
    note: str | None = None  # a paragraph at the top of report.md

    def __post_init__(self) -> None:
        names = [entry.name for entry in self.models]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ConfigError(f"evaluate.models: duplicated name(s) {duplicated}")


def report_settings_from_params(params: dict[str, Any]) -> ReportSettings:
    """Build the settings from the ``--params`` JSON of the ``report`` rule."""
    params = dict(params)
    models = [
        section_from_dict(EvalEntry, entry, f"evaluate.models[{i}]")
        for i, entry in enumerate(params.pop("models", []))
    ]
    return section_from_dict(ReportSettings, {"models": models, **params}, "report")
