"""The ``evaluate`` section of the config, typed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dialogclip.core.config import ConfigError, section_from_dict
from dialogclip.models.openclip import ClipSpec

VQA_DATASETS = ("vqa_real", "vqa_abstract")
DATASETS = ("coco", *VQA_DATASETS)
TEXT_VARIANTS = ("plain", "embedding_blend", "weight_blend")


@dataclass(frozen=True)
class ModelEntry:
    """One model to evaluate; ``name`` names its result files."""

    name: str
    architecture: str
    pretrained: str | None = None  # pretrained tag or checkpoint path
    quickgelu: bool | str = "auto"  # "auto", true, or false (the thesis' mismatched set-up)
    # How texts are encoded: "plain" (this model's text tower), "embedding_blend"
    # (beta * T(x) + (1 - beta) * G(x), G = the text tower of `other`) or "weight_blend"
    # (text encoder of beta * theta + (1 - beta) * theta_other). `other` is a checkpoint of the
    # same architecture (a trained third tower or fine-tuned model).
    text_variant: str = "plain"
    other: str | None = None
    beta: float = 1.0

    def __post_init__(self) -> None:
        if self.text_variant not in TEXT_VARIANTS:
            raise ConfigError(f"{self.name}: text_variant must be one of {TEXT_VARIANTS}")
        if self.text_variant != "plain" and self.other is None:
            raise ConfigError(f"{self.name}: text_variant {self.text_variant} needs `other`")

    @property
    def spec(self) -> ClipSpec:
        return ClipSpec(self.architecture, self.pretrained, self.quickgelu)


@dataclass(frozen=True)
class DatasetFiles:
    """Where an evaluation set lives: COCO uses annotations + images (+ split); VQA adds
    questions."""

    annotations: str
    images: str
    questions: str | None = None
    split: str = "test"


@dataclass(frozen=True)
class EvaluateJob:
    """What one evaluation command needs: the model, the dataset and how to run."""

    model: ModelEntry
    dataset: str
    files: DatasetFiles
    batch_size: int = 64
    template: str = "{question} {answer}"
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])


def job_from_params(params: dict[str, Any]) -> EvaluateJob:
    """Build the job from the ``--params`` JSON a rule passes."""
    params = dict(params)
    model = section_from_dict(ModelEntry, params.pop("model"), "evaluate.models[]")
    dataset = params.pop("dataset")
    if dataset not in DATASETS:
        raise ValueError(f"unknown evaluation dataset {dataset!r}; expected one of {DATASETS}")
    files = section_from_dict(DatasetFiles, params.pop("files"), f"evaluate.{dataset}")
    return section_from_dict(
        EvaluateJob, {"model": model, "dataset": dataset, "files": files, **params}, "evaluate"
    )
