"""The ``evaluate`` section of the config, typed; one evaluation job's parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dialogclip.core.config import ConfigError, section_from_dict
from dialogclip.models.naming import image_model_key
from dialogclip.models.openclip import ClipSpec

VQA_DATASETS = ("vqa_real", "vqa_abstract")
DATASETS = ("coco", *VQA_DATASETS)
TEXT_VARIANTS = ("plain", "embedding_blend", "weight_blend")
# CLIP_benchmark's names for the tasks and for COCO (the `dataset` and `task` of its JSON).
TASKS = {"coco": "zeroshot_retrieval", "vqa_real": "vqa_multiple_choice"}
TASKS["vqa_abstract"] = TASKS["vqa_real"]
BENCHMARK_DATASET_NAMES = {"coco": "mscoco_captions"}


@dataclass(frozen=True)
class ModelEntry:
    """One model to evaluate (an entry of ``evaluate.models``); ``name`` names its result files.

    The image tower is always ``architecture`` + ``pretrained`` (+ ``quickgelu``); the text
    encoder is chosen by ``text_variant``:

    - ``plain``: the same model's text tower T;
    - ``embedding_blend``: ``beta * T(x) + (1 - beta) * G(x)`` (unit embeddings, renormalised),
      G the text tower in the checkpoint ``other`` (e.g. a trained third tower);
    - ``weight_blend``: the text tower with weights ``beta * theta_T + (1 - beta) * theta_other``
      (``other`` e.g. a fine-tuned text tower; beta = 0 is that tower alone).
    """

    name: str
    architecture: str  # open_clip model name
    pretrained: str  # open_clip pretrained tag or checkpoint path
    quickgelu: bool | str = "auto"  # "auto", true, or false (the thesis' mismatched set-up)
    text_variant: str = "plain"
    other: str | None = None  # checkpoint with the second text tower (blends only)
    beta: float | None = None  # blends: weight of the original text tower T (required)
    datasets: list[str] | None = None  # evaluation sets for this model (None: all configured)
    thesis_row: str | list[str] | None = None  # the thesis' table row(s) it reproduces (report)

    def __post_init__(self) -> None:
        where = f"evaluate.models ({self.name})"
        if self.text_variant not in TEXT_VARIANTS:
            raise ConfigError(f"{where}: text_variant must be one of {TEXT_VARIANTS}")
        if self.text_variant == "plain":
            for key in ("other", "beta"):
                if getattr(self, key) is not None:
                    raise ConfigError(f"{where}: `{key}` is only used by the blend variants")
        else:
            # No silent default: a blend with beta 1 would equal the baseline.
            for key in ("other", "beta"):
                if getattr(self, key) is None:
                    raise ConfigError(
                        f"{where}: text_variant {self.text_variant} needs an explicit `{key}`"
                    )
        if self.beta is not None and not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"{where}: beta must be in [0, 1], got {self.beta}")
        unknown = sorted(set(self.datasets or ()) - set(DATASETS))
        if unknown:
            raise ConfigError(f"{where}: unknown datasets {unknown}; expected {DATASETS}")

    @property
    def spec(self) -> ClipSpec:
        return ClipSpec(self.architecture, self.pretrained, self.quickgelu)

    @property
    def image_model(self) -> str:
        """The key the image embeddings of this entry are cached under."""
        return image_model_key(self.architecture, self.pretrained, self.quickgelu)


@dataclass(frozen=True)
class DatasetFiles:
    """Where an evaluation set lives (``evaluate.coco`` / ``vqa_real`` / ``vqa_abstract``)."""

    annotations: str  # COCO: dataset_coco.json or coco_test_karpathy.json; VQA: *_annotations
    images: str  # the folder the image names are relative to
    questions: str | None = None  # VQA: MultipleChoice_*_questions.json
    split: str = "test"  # COCO dataset_coco.json: the Karpathy split


@dataclass(frozen=True)
class EvaluateJob:
    """What one evaluation command computes: the model entry, the dataset and its settings (the
    science only: batch size and threads are machine flags of the commands)."""

    model: ModelEntry
    dataset: str
    files: DatasetFiles
    template: str = "{question} {answer}"  # VQA candidate text (config: text.qa_template)
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])  # retrieval recall@k

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown evaluation dataset {self.dataset!r}; expected {DATASETS}")
        if self.dataset in VQA_DATASETS and self.files.questions is None:
            raise ConfigError(f"evaluate.{self.dataset}.questions is required for VQA")


def job_from_params(params: dict[str, Any]) -> EvaluateJob:
    """Build the job from the ``--params`` JSON a rule passes."""
    params = dict(params)
    model = section_from_dict(ModelEntry, params.pop("model"), "evaluate.models[]")
    dataset = params.pop("dataset")
    files = section_from_dict(DatasetFiles, params.pop("files"), f"evaluate.{dataset}")
    return section_from_dict(
        EvaluateJob, {"model": model, "dataset": dataset, "files": files, **params}, "evaluate"
    )
