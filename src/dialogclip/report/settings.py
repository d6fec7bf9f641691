"""The ``report`` section of the config, typed, and the evaluation entries the report reads.

The report never imports the evaluate stage: it receives the ``evaluate.models`` entries as
plain JSON from its rule and keeps only what decides where a result goes (text variant, beta,
the tower it is built on, the thesis row it reproduces).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dialogclip.core.config import ConfigError, section_from_dict
from dialogclip.models.openclip import ClipSpec

EVAL_DATASETS = ("coco", "vqa_real", "vqa_abstract")


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
class EvalEntry:
    """What the report needs of one ``evaluate.models`` entry."""

    name: str
    architecture: str
    pretrained: str
    quickgelu: bool | str = "auto"
    text_variant: str = "plain"
    other: str | None = None
    beta: float = 1.0
    thesis_row: str | None = None  # or several rows, as a list (``thesis_rows``)
    datasets: list[str] | None = None  # None: every configured set

    @property
    def thesis_rows(self) -> tuple[str, ...]:
        """The thesis rows this entry reproduces: none, one, or one per table that prints it."""
        linked: Any = self.thesis_row
        if linked is None:
            return ()
        return (linked,) if isinstance(linked, str) else tuple(linked)

    @property
    def image_tower(self) -> tuple[str, str, str]:
        """(architecture, pretrained, quickgelu): entries sharing it share the image tower."""
        return (self.architecture, self.pretrained, str(self.quickgelu))

    def describe(self) -> str:
        """A one-line description for a table line that has no thesis row."""
        text = f"{self.architecture} ({self.pretrained})"
        if self.text_variant != "plain":
            text += f", {self.text_variant} beta {self.beta:g}"
        return text

    def fields(self) -> dict[str, Any]:
        """The entry's fields an ``include`` filter of numbers.yaml can match."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "pretrained": self.pretrained,
            "text_variant": self.text_variant,
            "beta": self.beta,
            "thesis_row": self.thesis_row,
        }


@dataclass(frozen=True)
class ReportSettings:
    """What the ``report`` command receives from its rule (``--params``)."""

    models: list[EvalEntry] = field(default_factory=list)  # evaluate.models, in config order
    generators: list[str] = field(default_factory=list)  # generate.generators
    decimals: int = 2  # our numbers and the differences, in percent

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
