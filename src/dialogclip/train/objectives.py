"""The two training methods as objectives of the shared loop (:func:`dialogclip.train.trainer.fit`).

- :class:`ThirdTowerObjective` (CLIP-3Modal): G, a copy of the pretrained text tower, reads the
  dialogue z; the frozen image and text towers' features I(x), T(y) come from the embedding
  caches. ``L = a * CE(G(z) vs I) + (1 - a) * CE(G(z) vs T(y))``.
- :class:`DraftObjective` (DRAFT): the text tower T itself trains on captions y and dialogue
  samples z against the frozen (cached) I(x); contrastive + ``mmd_weight`` * RBF-MMD.

Both use the pretrained model's own temperature (its ``logit_scale``, frozen) and export the
trained tower under open_clip's state-dict names, which the evaluation's ``other`` loads
(``embedding_blend`` / ``weight_blend``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dialogclip.models.towers import TextTower, text_tower_state
from dialogclip.train.losses import DEFAULT_SIGMAS, DRAFT_A, THIRD_TOWER_A, draft_loss
from dialogclip.train.losses import third_tower_loss as _third_tower_loss

Gather = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ThirdTowerLoss:
    """The third tower's loss settings (config ``train.runs[].loss``)."""

    a: float = THIRD_TOWER_A  # weight of the dialogue-image term (thesis: 0.65)
    symmetric: bool = False  # average each term with its transpose (as written: one-directional)


@dataclass(frozen=True)
class DraftLoss:
    """DRAFT's loss settings (config ``train.runs[].loss``)."""

    a: float = DRAFT_A  # weight of the image-dialogue term (the thesis gives none: 0.5)
    symmetric: bool = False
    mmd_weight: float = 1.0  # 0 = the thesis' no-MMD ablation
    sigmas: list[float] = field(default_factory=lambda: list(DEFAULT_SIGMAS))  # RBF bandwidths


def _unit(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.float(), dim=-1)


class ThirdTowerObjective:
    """G(z) against the cached I(x) and T(y) of the global batch."""

    def __init__(self, tower: TextTower, logit_scale: float, settings: ThirdTowerLoss) -> None:
        self.module = tower  # G: the only trained part
        self.logit_scale = float(logit_scale)
        self.settings = settings

    def loss(
        self, batch: dict[str, torch.Tensor], gather: Gather
    ) -> tuple[torch.Tensor, dict[str, float]]:
        dialogue = gather(_unit(self.module(batch["dialogue_tokens"])))  # [N, D]
        # The caches hold unit features in float16: renormalise after the cast back.
        image = gather(_unit(batch["image_emb"]))  # [N, D], no graph
        text = gather(_unit(batch["caption_emb"]))  # [N, D], no graph
        loss = _third_tower_loss(
            dialogue, image, text, self.logit_scale, self.settings.a, self.settings.symmetric
        )
        return loss, {}

    def export_state(self) -> dict[str, torch.Tensor]:
        return text_tower_state(self.module)


class DraftObjective:
    """T(y) and T(z) of the trained text tower against the cached I(x) of the global batch."""

    def __init__(self, tower: TextTower, logit_scale: float, settings: DraftLoss) -> None:
        self.module = tower  # T: the trained text tower
        self.logit_scale = float(logit_scale)
        self.settings = settings

    def loss(
        self, batch: dict[str, torch.Tensor], gather: Gather
    ) -> tuple[torch.Tensor, dict[str, float]]:
        caption = gather(_unit(self.module(batch["caption_tokens"])))  # [N, D]
        dialogue = gather(_unit(self.module(batch["dialogue_tokens"])))  # [N, D]
        image = gather(_unit(batch["image_emb"]))  # [N, D], no graph
        s = self.settings
        total, parts = draft_loss(
            image,
            caption,
            dialogue,
            self.logit_scale,
            s.a,
            s.mmd_weight,
            _floats(s.sigmas),
            s.symmetric,
        )
        return total, {name: float(value) for name, value in parts.items()}

    def export_state(self) -> dict[str, torch.Tensor]:
        return text_tower_state(self.module)


def _floats(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(value) for value in values)
