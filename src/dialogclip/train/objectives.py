"""The two training methods as objectives of the shared loop (:func:`dialogclip.train.trainer.fit`).

- :class:`ThirdTowerObjective` (CLIP-3Modal): G, a copy of the pretrained text tower, reads the
  dialogue z; the frozen image and text towers' features I(x), T(y) come from the embedding
  caches. ``L = a * CE(G(z) vs I) + (1 - a) * CE(G(z) vs T(y))``.
- :class:`DraftObjective` (DRAFT): the text tower T itself trains on captions y and dialogue
  samples z against the frozen (cached) I(x); eq. 4.4.4: the contrastive term (texts query the
  images, eq. 4.4.1) + ``mmd_weight`` * the RBF-MMD norm over the scalar logits (eq. 4.4.3).

Both use the pretrained model's own temperature (its ``logit_scale``), frozen by default; with
``loss.temperature: trainable`` it trains from that value as open_clip's pre-training does (a
log-scale parameter, the scale capped at 100). Both export the trained tower under open_clip's
state-dict names, which the evaluation's ``other`` loads (``embedding_blend`` /
``weight_blend``); the temperature is not part of it (a ranking does not depend on it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from dialogclip.models.towers import TextTower, text_tower_state
from dialogclip.train.loss_settings import DraftLoss, ThirdTowerLoss
from dialogclip.train.losses import draft_loss
from dialogclip.train.losses import third_tower_loss as _third_tower_loss

__all__ = ["DraftLoss", "DraftObjective", "ThirdTowerLoss", "ThirdTowerObjective"]

Gather = Callable[[torch.Tensor], torch.Tensor]


MAX_LOGIT_SCALE = 100.0  # open_clip clamps its trained logit scale at ln(100)


def _unit(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.float(), dim=-1)


class TowerWithTemperature(torch.nn.Module):
    """The trained tower and a trainable log logit scale: the module the trainer optimises when
    ``loss.temperature`` is ``trainable`` (the scale's parameter is 0-d: never weight-decayed)."""

    def __init__(self, tower: TextTower, logit_scale: float) -> None:
        super().__init__()
        self.tower = tower
        self.log_logit_scale = torch.nn.Parameter(torch.tensor(math.log(logit_scale)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tower(tokens)

    def logit_scale(self) -> torch.Tensor:
        """1/tau, a 0-d tensor with a graph, at most :data:`MAX_LOGIT_SCALE`."""
        return self.log_logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()


class _Objective:
    """What both methods share: the tower, the temperature and the export."""

    def __init__(
        self, tower: TextTower, logit_scale: float, settings: ThirdTowerLoss | DraftLoss
    ) -> None:
        self.tower = tower  # the trained tower (G, or DRAFT's T)
        self.settings = settings
        self.module: torch.nn.Module  # what the trainer optimises
        if settings.temperature == "trainable":
            self.module = TowerWithTemperature(tower, logit_scale)
        else:
            self.module = tower
        self.frozen_logit_scale = float(logit_scale)

    def logit_scale(self) -> float | torch.Tensor:
        """The pretrained 1/tau (a float), or the trained one (a 0-d tensor with a graph)."""
        if isinstance(self.module, TowerWithTemperature):
            return self.module.logit_scale()
        return self.frozen_logit_scale

    def scale_part(self) -> dict[str, float]:
        """The trained scale, logged with the loss parts (nothing when it is frozen)."""
        if isinstance(self.module, TowerWithTemperature):
            return {"logit_scale": float(self.module.logit_scale().detach())}
        return {}

    def export_state(self) -> dict[str, torch.Tensor]:
        return text_tower_state(self.tower)


class ThirdTowerObjective(_Objective):
    """G(z) against the cached I(x) and T(y) of the global batch."""

    settings: ThirdTowerLoss

    def loss(
        self, batch: dict[str, torch.Tensor], gather: Gather
    ) -> tuple[torch.Tensor, dict[str, float]]:
        dialogue = gather(_unit(self.module(batch["dialogue_tokens"])))  # [N, D]
        # The caches hold unit features in float16: renormalise after the cast back.
        image = gather(_unit(batch["image_emb"]))  # [N, D], no graph
        text = gather(_unit(batch["caption_emb"]))  # [N, D], no graph
        loss = _third_tower_loss(
            dialogue, image, text, self.logit_scale(), self.settings.a, self.settings.symmetric
        )
        return loss, self.scale_part()


class DraftObjective(_Objective):
    """T(y) and T(z) of the trained text tower against the cached I(x) of the global batch."""

    settings: DraftLoss

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
            self.logit_scale(),
            a=s.a,
            mmd_weight=s.mmd_weight,
            sigmas=_floats(s.sigmas),
            direction=s.direction,
            mmd_samples=s.mmd_samples,
            mmd_form=s.mmd_form,
        )
        return total, {name: float(value) for name, value in parts.items()} | self.scale_part()


def _floats(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(value) for value in values)
