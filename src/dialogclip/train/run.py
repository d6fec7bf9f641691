"""One training run end to end: the pretrained model, its tower, the cached data, the loop.

``train_run`` builds what :func:`dialogclip.train.trainer.fit` needs from a run's settings (the
rule's params): the pretrained OpenCLIP model (its weights fetched into ``weights_dir``), the
trained tower (G, a copy of the text tower, for the third tower; the text tower itself for
DRAFT) with its last ``trainable_blocks`` blocks trainable, the cached dataset (the files of
every block of shards) and the batch plan (each row once per epoch; for DRAFT, no image twice
in a batch). The frozen towers never run: their features come from the caches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dialogclip.core.config import ConfigError, section_from_dict
from dialogclip.train.datasets import DraftDataset, ShardFiles, ThirdTowerDataset
from dialogclip.train.loss_settings import loss_settings
from dialogclip.train.objectives import DraftObjective, ThirdTowerObjective
from dialogclip.train.sampler import unique_image_batches
from dialogclip.train.trainer import METRICS, OptimSettings, RunSettings, fit, shuffled_batches

log = logging.getLogger(__name__)


def optim_settings(params: dict[str, Any], where: str) -> OptimSettings:
    """The run's ``optim`` mapping as :class:`OptimSettings` (lists become tuples)."""
    values = dict(params)
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    return section_from_dict(OptimSettings, values, f"{where}.optim")


def train_run(
    run: dict[str, Any],
    shards: Sequence[ShardFiles],
    run_dir: Path,
    machine: RunSettings,
    weights_dir: Path | None = None,
) -> Path:
    """Train the run described by ``run`` (an entry of ``train.runs``); returns the final
    artefact (``run_dir/final.safetensors``: the trained tower under open_clip's names)."""
    from dialogclip.models.openclip import ClipSpec, load_clip
    from dialogclip.models.towers import copy_text_tower, set_trainable

    where = f"train.runs ({run['name']})"
    method = run["method"]
    optim = optim_settings(run.get("optim", {}), where)
    loss = loss_settings(method, run.get("loss", {}), where)
    spec = ClipSpec(run["architecture"], run["pretrained"], run.get("quickgelu", "auto"))
    clip = load_clip(spec, device="cpu", weights_dir=weights_dir)
    # The pretrained model's temperature, frozen (METHOD: tau from the model's logit scale).
    logit_scale = float(clip.model.logit_scale.detach().exp())
    tower = copy_text_tower(clip.model)
    trainable = set_trainable(tower, run.get("trainable_blocks"))
    log.info(
        "%s: %s on %s, %d trainable tensors, logit scale %.2f",
        run["name"], method, spec.architecture, len(trainable), logit_scale,
    )  # fmt: skip
    del clip
    if method == "third_tower":
        dataset = ThirdTowerDataset(shards)
        objective = ThirdTowerObjective(tower, logit_scale, loss)
        plan = shuffled_batches(len(dataset), optim.batch_size, optim.seed)
    elif method == "draft":
        dataset = DraftDataset(shards)
        objective = DraftObjective(tower, logit_scale, loss)
        plan = unique_image_batches(dataset.groups, optim.batch_size, optim.seed)
    else:
        raise ConfigError(f"{where}.method must be third_tower or draft, got {method!r}")
    if len(dataset) < optim.batch_size:
        raise ConfigError(
            f"{where}: {len(dataset)} training rows, fewer than one batch of "
            f"{optim.batch_size} (optim.batch_size)"
        )
    config = {
        "run": run,
        "data": data_fingerprint(shards),
        "loss": dataclasses.asdict(loss),
        "trainable": trainable,
        "quickgelu": spec.quickgelu,
        "n_rows": len(dataset),
        "excluded": dict(dataset.excluded),
    }
    return fit(objective, dataset, plan, optim, machine, run_dir, config)


def data_fingerprint(shards: Sequence[ShardFiles]) -> str:
    """SHA-256 over the bytes of every file the run trains on (each block's rows, image cache
    and caption cache, in order). Stored with each checkpoint: the run's folder is keyed by its
    settings only (the rule cannot hash files that do not exist yet), so this is what tells a
    crash's leftovers (same data: resume) from a finished run on other data, e.g. after a
    prompt edit regenerated the dialogue (start afresh). About 1 s per GB read."""
    digest = hashlib.sha256()
    for block in shards:
        for path in (block.rows, block.image_emb, block.caption_emb):
            if path is None:
                continue
            with open(path, "rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def publish(run_dir: Path, final: Path, metrics: Path) -> None:
    """Copy the run's final artefact and metrics to the rule's outputs (atomically)."""
    from dialogclip.core.io import atomic_path

    for source, target in ((run_dir / "final.safetensors", final), (run_dir / METRICS, metrics)):
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
