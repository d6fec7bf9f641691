"""The two methods' loss settings (config ``train.runs[].loss``), typed; standard library and
``dialogclip.core`` only, so the workflow checks a run's ``loss`` when it plans the jobs.

The losses themselves are in :mod:`dialogclip.train.losses` (whose docstring gives the thesis'
equations and the reasons for each default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dialogclip.core.config import ConfigError, section_from_dict

THIRD_TOWER_A = 0.65  # METHOD.md section 4 (thesis value)
DRAFT_A = 0.65  # the thesis gives no number for DRAFT but wants a "high enough" (line ~3476)
DEFAULT_SIGMAS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)  # RBF bandwidths, logit units
DIRECTIONS = ("text_to_image", "image_to_text", "symmetric")  # DRAFT's contrastive direction
MMD_SAMPLES = ("scalar", "rows")  # DRAFT's MMD sample unit
MMD_FORMS = ("norm", "squared")  # DRAFT's MMD term: the RKHS norm (eq. 4.4.3) or its square
TEMPERATURES = ("frozen", "trainable")  # tau: the pretrained model's, kept or trained on


def _check_choices(settings: object, **allowed: tuple[str, ...]) -> None:
    for name, values in allowed.items():
        value = getattr(settings, name)
        if value not in values:
            raise ConfigError(f"loss.{name} must be one of {values}; got {value!r}")


@dataclass(frozen=True)
class ThirdTowerLoss:
    """The third tower's loss settings."""

    a: float = THIRD_TOWER_A  # weight of the dialogue-image term (thesis: 0.65)
    symmetric: bool = False  # average each term with its transpose (as written: one-directional)
    temperature: str = "frozen"  # the pretrained model's tau, or trainable from it

    def __post_init__(self) -> None:
        _check_choices(self, temperature=TEMPERATURES)


@dataclass(frozen=True)
class DraftLoss:
    """DRAFT's loss settings (eqs. 4.4.1-4.4.4 of the thesis)."""

    a: float = DRAFT_A  # weight of the image-dialogue term
    direction: str = "text_to_image"  # eq. 4.4.1: texts query the batch's images
    mmd_weight: float = 1.0  # 0 = the thesis' no-MMD ablation
    sigmas: list[float] = field(default_factory=lambda: list(DEFAULT_SIGMAS))  # RBF bandwidths
    mmd_samples: str = "scalar"  # eq. 4.4.3: every logit a scalar sample; or rows (R^N per text)
    mmd_form: str = "norm"  # eq. 4.4.3: the RKHS norm; or squared (MMD^2, eq. 4.4.2)
    temperature: str = "frozen"  # the pretrained model's tau, or trainable from it

    def __post_init__(self) -> None:
        _check_choices(
            self,
            direction=DIRECTIONS,
            mmd_samples=MMD_SAMPLES,
            mmd_form=MMD_FORMS,
            temperature=TEMPERATURES,
        )


def loss_settings(method: str, params: dict[str, Any], where: str) -> ThirdTowerLoss | DraftLoss:
    """A run's ``loss`` mapping, typed for its method; a key the method does not have (e.g. the
    third tower's ``symmetric`` on a DRAFT run, whose option is ``direction: symmetric``) is an
    error naming ``{where}.loss``."""
    cls = ThirdTowerLoss if method == "third_tower" else DraftLoss
    try:
        return section_from_dict(cls, params, f"{where}.loss")
    except ConfigError as err:
        message = str(err)
        if not message.startswith(where):
            message = f"{where}.{message}"
        raise ConfigError(message) from None


def loss_params(method: str, params: dict[str, Any], where: str) -> dict[str, Any]:
    """The run's loss with every default filled in, as plain JSON types: what the training job's
    params carry, so that a change of a default (e.g. DRAFT's direction) reruns the runs it
    changes instead of keeping results trained under the old one."""
    return dataclasses.asdict(loss_settings(method, params, where))
