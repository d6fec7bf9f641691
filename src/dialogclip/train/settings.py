"""The ``train`` section of the config, typed, and the names of the files a run reads.

Standard library, ``dialogclip.core``, ``dialogclip.models.naming``,
``dialogclip.models.eval_entry`` and the torch-free ``dialogclip.train.loss_settings`` only: the
workflow imports it to plan the jobs.

Each run (an entry of ``train.runs``) is a method on an OpenCLIP model with one generator's
dialogue. What its data depend on decides where they live, so runs share every file they can:

- image embeddings: ``results/train/emb/image/{image_model}/{shard}.arrow`` - the model only
  (``image_model_key``): a third-tower run and a DRAFT run on the same model share them;
- caption embeddings (third tower only): ``results/train/emb/text/{text_model}/{shard}.arrow``;
- rows: ``results/train/rows/{generator}/{architecture}/{rows_form}/{shard}.arrow`` - the
  generator, the tokenizer (a function of the architecture), the sample form and whether
  truncated replies count (``rows_form``, e.g. ``pairs`` or ``concatenated-with_truncated``);
  the config's ``text`` section is a parameter of the rows job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dialogclip.core.config import ConfigError, section_from_dict
from dialogclip.models.eval_entry import BLEND_VARIANTS, EvalEntry
from dialogclip.models.naming import (
    QuickGelu,
    architecture_key,
    image_model_key,
    text_model_key,
)
from dialogclip.train.loss_settings import loss_settings

METHODS = ("third_tower", "draft")
GENERATORS = ("blip2", "llava")
SAMPLE_FORMS = ("concatenated", "pairs")
# METHOD.md section 3: the third tower reads the concatenated dialogue, DRAFT one pair a sample.
DEFAULT_SAMPLE_FORM = {"third_tower": "concatenated", "draft": "pairs"}
WITH_TRUNCATED = "-with_truncated"
PAIR_TEXT_KEYS = ("qa_template",)  # the text settings a per-pair sample depends on
RUN_FIELDS = (
    "name",
    "method",
    "architecture",
    "pretrained",
    "quickgelu",
    "generator",
    "sample_form",
    "include_truncated",
    "trainable_blocks",
    "optim",
    "loss",
    "evaluate",
)
# The betas a run is evaluated at unless its ``evaluate.betas`` says (beta weights the original
# text tower): the third tower over the thesis' blend ablation (Table 5.2) and alone ("only
# 3rd"), DRAFT blended at 0.9 and alone.
DEFAULT_EVAL_BETAS = {"third_tower": (1.0, 0.95, 0.9, 0.8, 0.6, 0.0), "draft": (0.9, 0.0)}
# The entry name of each blend: the embedding blend keeps the plain ``{run}-beta{beta}``.
EVAL_VARIANT_INFIX = {"embedding_blend": "", "weight_blend": "-wblend"}


@dataclass(frozen=True)
class RunEvaluation:
    """``train.runs[].evaluate``: which evaluation entries the run adds
    (:meth:`TrainRun.eval_entries`)."""

    # How the trained and the original tower are blended (METHOD.md 5).
    variants: list[str] = field(default_factory=lambda: ["embedding_blend"])
    betas: list[float] | None = None  # weights of the original tower; None: DEFAULT_EVAL_BETAS
    datasets: list[str] | None = None  # evaluation sets (None: every configured set)
    # beta -> the thesis row(s) its embedding-blend entry reproduces (keys as YAML reads them)
    thesis_rows: dict[float, str | list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainRun:
    """One training run (an entry of ``train.runs``)."""

    name: str  # names the run's outputs
    method: str  # "third_tower" (CLIP-3Modal) or "draft"
    architecture: str  # open_clip model name, e.g. ViT-B-32
    pretrained: str  # open_clip pretrained tag or checkpoint path
    generator: str  # whose dialogue: "blip2" or "llava"
    quickgelu: QuickGelu = "auto"  # as evaluate.models[].quickgelu
    sample_form: str | None = None  # "concatenated" / "pairs"; None: the method's default
    include_truncated: bool = False  # count replies cut at the generator's token limit
    trainable_blocks: int | None = None  # train the last k blocks (+ norm, projection); None: all
    optim: dict[str, Any] = field(default_factory=dict)  # OptimSettings (dialogclip.train.trainer)
    loss: dict[str, Any] = field(default_factory=dict)  # ThirdTowerLoss / DraftLoss fields
    evaluate: RunEvaluation = field(default_factory=RunEvaluation)  # its evaluation entries

    def __post_init__(self) -> None:
        where = f"train.runs[{self.name}]"
        if self.method not in METHODS:
            raise ConfigError(f"{where}.method must be one of {METHODS}, got {self.method!r}")
        if self.generator not in GENERATORS:
            raise ConfigError(
                f"{where}.generator must be one of {GENERATORS}, got {self.generator!r}"
            )
        if self.sample_form is not None and self.sample_form not in SAMPLE_FORMS:
            raise ConfigError(
                f"{where}.sample_form must be one of {SAMPLE_FORMS} or null, "
                f"got {self.sample_form!r}"
            )
        loss_settings(self.method, self.loss, where)  # a bad loss key fails when the DAG is built
        for variant in self.evaluate.variants:
            if variant not in BLEND_VARIANTS:
                raise ConfigError(
                    f"{where}.evaluate.variants: {variant!r} is not a blend; "
                    f"expected some of {BLEND_VARIANTS}"
                )

    @property
    def form(self) -> str:
        """The sample form used: the configured one, else the method's default."""
        return self.sample_form or DEFAULT_SAMPLE_FORM[self.method]

    @property
    def rows_form(self) -> str:
        """The rows folder name: the form, marked when truncated replies count."""
        return self.form + (WITH_TRUNCATED if self.include_truncated else "")

    @property
    def architecture_key(self) -> str:
        return architecture_key(self.architecture)

    @property
    def image_model(self) -> str:
        """Cache key of the frozen image tower I."""
        return image_model_key(self.architecture, self.pretrained, self.quickgelu)

    @property
    def text_model(self) -> str:
        """Cache key of the frozen caption tower T."""
        return text_model_key(self.architecture, self.pretrained, self.quickgelu)

    @property
    def uses_caption_cache(self) -> bool:
        """The third tower compares G(z) with the frozen T(y); DRAFT trains T itself."""
        return self.method == "third_tower"

    def tower_params(self) -> dict[str, Any]:
        """What a frozen-tower cache depends on (the embedding jobs' params)."""
        return {
            "architecture": self.architecture,
            "pretrained": self.pretrained,
            "quickgelu": self.quickgelu,
        }

    @property
    def final(self) -> str:
        """The trained tower (the run's artefact, evaluate's ``other``)."""
        return f"results/train/runs/{self.name}/final.safetensors"

    @property
    def metrics(self) -> str:
        """The run's per-step metrics (JSON lines)."""
        return f"results/train/runs/{self.name}/metrics.jsonl"

    def rows_params(self, text: dict[str, Any]) -> dict[str, Any]:
        """What a rows file depends on besides its inputs (the rows jobs' params): of the
        ``text`` section, one sample per pair reads only the pair template."""
        used = PAIR_TEXT_KEYS if self.form == "pairs" else tuple(text)
        return {
            "architecture": self.architecture,
            "sample_form": self.form,
            "include_truncated": self.include_truncated,
            "text": {key: text[key] for key in used if key in text},
        }

    def image_cache(self, shard: str) -> str:
        return f"results/train/emb/image/{self.image_model}/{shard}.arrow"

    def caption_cache(self, shard: str) -> str:
        return f"results/train/emb/text/{self.text_model}/{shard}.arrow"

    def rows_file(self, shard: str) -> str:
        return f"{self.rows_dir}/{shard}.arrow"

    def rows_stats(self, shard: str) -> str:
        return f"{self.rows_dir}/stats/{shard}.json"

    @property
    def rows_dir(self) -> str:
        return f"results/train/rows/{self.generator}/{self.architecture_key}/{self.rows_form}"

    def eval_entries(self) -> list[EvalEntry]:
        """The evaluation entries the run adds: per variant and beta (``evaluate``, else
        :data:`DEFAULT_EVAL_BETAS`), the trained tower blended with the text tower of the model
        it started from, beta weighting that original: ``{name}-beta{beta}`` (embedding blend)
        and ``{name}-wblend-beta{beta}`` (weight blend, only strictly between 0 and 1: at the
        ends both blends are the same model, evaluated once). ``evaluate.thesis_rows`` link the
        embedding blends, the thesis' reading of "blend" (METHOD.md 5). All share the model's
        image tower, hence its image-embedding cache."""
        settings = self.evaluate
        rows = {float(beta): row for beta, row in settings.thesis_rows.items()}
        entries = []
        for variant in settings.variants:
            for beta in map(float, settings.betas or DEFAULT_EVAL_BETAS[self.method]):
                if variant == "weight_blend" and beta in (0.0, 1.0):
                    continue
                entries.append(
                    EvalEntry(
                        name=f"{self.name}{EVAL_VARIANT_INFIX[variant]}-beta{beta:g}",
                        architecture=self.architecture,
                        pretrained=self.pretrained,
                        quickgelu=self.quickgelu,
                        text_variant=variant,
                        other=self.final,
                        beta=beta,
                        datasets=settings.datasets,
                        thesis_row=rows.get(beta) if variant == "embedding_blend" else None,
                    )
                )
        return entries


@dataclass(frozen=True)
class TrainSettings:
    """The ``train`` section."""

    activate: bool = False  # plan the training targets
    runs: tuple[TrainRun, ...] = ()

    def __post_init__(self) -> None:
        names = [run.name for run in self.runs]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ConfigError(f"train.runs: duplicated name(s) {duplicated}")


def train_settings_from_dict(data: dict[str, Any]) -> TrainSettings:
    """Build :class:`TrainSettings` from the (schema-validated) ``train`` section."""
    unknown = sorted(set(data) - {"activate", "runs"})
    if unknown:
        raise ConfigError(f"train: unknown key(s) {unknown}; allowed keys: ['activate', 'runs']")
    runs = []
    for i, entry in enumerate(data.get("runs", [])):
        extra = sorted(set(entry) - set(RUN_FIELDS))
        if extra:
            raise ConfigError(f"train.runs[{i}]: unknown key(s) {extra}")
        missing = sorted({"name", "method", "architecture", "pretrained", "generator"} - set(entry))
        if missing:
            raise ConfigError(f"train.runs[{i}]: missing required key(s) {missing}")
        evaluate = section_from_dict(
            RunEvaluation, entry.get("evaluate", {}), f"train.runs[{i}].evaluate"
        )
        runs.append(TrainRun(**{**entry, "evaluate": evaluate}))
    return TrainSettings(activate=bool(data.get("activate", False)), runs=tuple(runs))
