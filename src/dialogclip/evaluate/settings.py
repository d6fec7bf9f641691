"""The ``evaluate`` section of the config, typed; one evaluation job's parameters.

An ``evaluate.models`` entry is :class:`dialogclip.models.eval_entry.EvalEntry`, the type the
workflow and the report share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dialogclip.core.config import ConfigError, section_from_dict
from dialogclip.models.eval_entry import EVAL_DATASETS, EvalEntry

VQA_DATASETS = ("vqa_real", "vqa_abstract")
# CLIP_benchmark's names for the tasks and the retrieval sets (the `dataset` and `task` of its
# JSON).
TASKS = {"coco": "zeroshot_retrieval", "flickr30k": "zeroshot_retrieval"}
TASKS.update(vqa_real="vqa_multiple_choice", vqa_abstract="vqa_multiple_choice")
BENCHMARK_DATASET_NAMES = {"coco": "mscoco_captions", "flickr30k": "flickr30k"}


@dataclass(frozen=True)
class DatasetFiles:
    """Where an evaluation set lives (``evaluate.<set>``, a name of ``EVAL_DATASETS``)."""

    # COCO: dataset_coco.json or coco_test_karpathy.json; Flickr30k: dataset_flickr30k.json;
    # VQA: *_annotations
    annotations: str
    images: str  # the folder the image names are relative to
    questions: str | None = None  # VQA: MultipleChoice_*_questions.json
    split: str = "test"  # Karpathy's split files: the split


@dataclass(frozen=True)
class EvaluateJob:
    """What one evaluation command computes: the model entry, the dataset and its settings (the
    science only: batch size and threads are machine flags of the commands)."""

    model: EvalEntry
    dataset: str
    files: DatasetFiles
    template: str = "{question} {answer}"  # VQA candidate text (config: text.qa_template)
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])  # retrieval recall@k

    def __post_init__(self) -> None:
        if self.dataset not in EVAL_DATASETS:
            raise ConfigError(
                f"unknown evaluation dataset {self.dataset!r}; expected {EVAL_DATASETS}"
            )
        if self.dataset in VQA_DATASETS and self.files.questions is None:
            raise ConfigError(f"evaluate.{self.dataset}.questions is required for VQA")


def job_from_params(params: dict[str, Any]) -> EvaluateJob:
    """Build the job from the ``--params`` JSON a rule passes."""
    params = dict(params)
    model = section_from_dict(EvalEntry, params.pop("model"), "evaluate.models[]")
    dataset = params.pop("dataset")
    files = section_from_dict(DatasetFiles, params.pop("files"), f"evaluate.{dataset}")
    return section_from_dict(
        EvaluateJob, {"model": model, "dataset": dataset, "files": files, **params}, "evaluate"
    )
