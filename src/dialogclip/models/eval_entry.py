"""The evaluation entry: one image tower and one text encoder to evaluate, the one type that the
workflow, the evaluation jobs, the report and the training runs' variants share.

An entry is an ``evaluate.models`` item of the config (the schema,
``workflow/schemas/config.schema.yaml``, holds its defaults; ``tests/core/test_config_truth.py``
keeps the two equal) or one of the variants a training run adds (``TrainRun.eval_entries``).

Standard library, ``dialogclip.core.config`` and ``dialogclip.models.naming`` only: the
workflow imports it to plan the jobs.

Beta: the weight of the entry's own (original) text tower in a blend. It has no default:
``plain`` entries have none (None; the evaluation rejects one, since nothing reads it), and a
blend must state it (an implicit 1 would silently evaluate the baseline under a blend's name).
Where a number is needed for every entry, the report's beta axis, :attr:`EvalEntry.blend_weight`
reads a plain entry as beta 1, the original tower alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dialogclip.core.config import ConfigError
from dialogclip.models.naming import QuickGelu, image_model_key

if TYPE_CHECKING:
    from dialogclip.models.openclip import ClipSpec

# COCO 5k and Flickr30k 1k retrieval (Karpathy test splits), VQA v1 multiple choice real/abstract
EVAL_DATASETS = ("coco", "flickr30k", "vqa_real", "vqa_abstract")
RETRIEVAL_SETS = ("coco", "flickr30k")
TEXT_VARIANTS = ("plain", "embedding_blend", "weight_blend")
BLEND_VARIANTS = TEXT_VARIANTS[1:]


def result_path(results_dir: Path, name: str, dataset: str) -> Path:
    """Where the evaluation writes the metrics of entry ``name`` on ``dataset`` (read by the
    report and by the world's effects)."""
    task = "retrieval" if dataset in RETRIEVAL_SETS else "vqa"
    return Path(results_dir) / "eval" / task / name / f"{dataset}.json"


# The fields that name the image tower: entries equal on them share its cached embeddings.
IMAGE_TOWER_FIELDS = ("architecture", "pretrained", "quickgelu")


@dataclass(frozen=True)
class EvalEntry:
    """One model to evaluate; ``name`` names its result files.

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
    quickgelu: QuickGelu = "auto"  # "auto", true, or false (the thesis' mismatched set-up)
    text_variant: str = "plain"
    other: str | None = None  # checkpoint with the second text tower (blends only)
    beta: float | None = None  # blends: weight of the original text tower T (required there)
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
            for key in ("other", "beta"):
                if getattr(self, key) is None:
                    raise ConfigError(
                        f"{where}: text_variant {self.text_variant} needs an explicit `{key}`"
                    )
        if self.beta is not None and not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"{where}: beta must be in [0, 1], got {self.beta}")
        unknown = sorted(set(self.datasets or ()) - set(EVAL_DATASETS))
        if unknown:
            raise ConfigError(f"{where}: unknown datasets {unknown}; expected {EVAL_DATASETS}")

    @property
    def spec(self) -> ClipSpec:
        """The model to load (architecture, weights, QuickGELU setting)."""
        # Imported here: the workflow plans with this module and never loads a model.
        from dialogclip.models.openclip import ClipSpec

        return ClipSpec(self.architecture, self.pretrained, self.quickgelu)

    @property
    def image_model(self) -> str:
        """The key the image embeddings of this entry are cached under."""
        return image_model_key(self.architecture, self.pretrained, self.quickgelu)

    def image_tower(self) -> dict[str, Any]:
        """The image tower's fields (all its cached embeddings depend on)."""
        return {key: getattr(self, key) for key in IMAGE_TOWER_FIELDS}

    @property
    def blend_weight(self) -> float:
        """The weight of the original text tower: ``beta``, or 1 for ``plain`` (T alone)."""
        return 1.0 if self.beta is None else self.beta

    @property
    def thesis_rows(self) -> tuple[str, ...]:
        """The thesis rows this entry reproduces: none, one, or one per table that prints it."""
        linked = self.thesis_row
        if linked is None:
            return ()
        return (linked,) if isinstance(linked, str) else tuple(linked)

    def describe(self) -> str:
        """A one-line description for a report line that has no thesis row."""
        text = f"{self.architecture} ({self.pretrained})"
        if self.text_variant != "plain":
            text += f", {self.text_variant} beta {self.blend_weight:g}"
        return text

    def fields(self) -> dict[str, Any]:
        """The fields a report table's ``include`` filter can match (numbers.yaml)."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "pretrained": self.pretrained,
            "text_variant": self.text_variant,
            "beta": self.beta,
            "thesis_row": self.thesis_row,
        }

    def as_dict(self) -> dict[str, Any]:
        """Every field as plain data (the report's params)."""
        return dataclasses.asdict(self)

    def job_dict(self) -> dict[str, Any]:
        """The fields an evaluation job reads: all but ``thesis_row``, which only the report
        reads (linking an entry to the thesis reruns the report, not the evaluation)."""
        return {key: value for key, value in self.as_dict().items() if key != "thesis_row"}
