"""The one training loop shared by the third tower and DRAFT.

What it does with an :class:`Objective` (the method: its trainable module and its loss):

- AdamW (decay groups as open_clip: :mod:`dialogclip.train.optim`), linear warmup then cosine
  to 0, optional gradient-norm clipping, bf16 autocast on CUDA only (``precision: auto``).
- Data parallel over processes with accelerate (``accelerate launch`` / torchrun; gloo on CPU,
  NCCL on GPUs). Every process runs the same global batches (``plan(epoch)``) and takes a
  contiguous slice of each (rank r: rows ``r*B//W .. (r+1)*B//W``), so W processes and one
  process see the same rows in the same order. The objective computes its loss over the
  *global* batch through ``gather`` (:func:`dialogclip.train.losses.gather_features`: the other
  processes' rows without a graph, its own with one), so each process's backward yields the
  gradient contribution of its own rows; the trainer sums the gradients over processes with
  an all-reduce. The sum is the single-process gradient. The module is deliberately not
  wrapped in DDP: DDP *averages* (a 1/W error with a global loss, the one open_clip carries)
  and does not allow an objective to run the module twice per step (DRAFT encodes captions and
  dialogues).
- ``metrics.jsonl`` in the run directory: one JSON object per optimizer update (``step`` =
  updates done, ``epoch``, ``batch``, ``loss``, ``lr``, ``grad_norm``, ``samples_per_s`` and
  every part the objective reports); a tqdm progress bar.
- Checkpoints every ``checkpoint_every`` updates and at every epoch end
  (:mod:`dialogclip.train.checkpoints`); a rerun resumes from the newest complete one, drops
  the metrics lines written after it, and continues with the same RNG states, so on CPU its
  final weights equal an uninterrupted run's bit for bit.
- A non-finite loss or gradient norm stops the run before the update with
  :class:`TrainingDiverged`, naming the step; the checkpoints on disk stay as they are.
- The final artefact ``final.safetensors`` holds ``objective.export_state()`` with the run
  config, optimisation settings and package versions in its metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from dialogclip.core.config import ConfigError
from dialogclip.core.io import atomic_path
from dialogclip.core.machine import torch_device
from dialogclip.core.versions import package_versions
from dialogclip.train import checkpoints
from dialogclip.train.losses import gather_features
from dialogclip.train.optim import adamw, param_groups, trainable_parameters, warmup_cosine_lr

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
FINAL = "final.safetensors"
PRECISIONS = ("auto", "fp32", "bf16")
GRAD_BUCKET_ELEMENTS = 1 << 25  # all-reduce gradients in ~128 MiB (fp32) flat buckets

BatchPlan = Callable[[int], list[list[int]]]
"""epoch -> that epoch's GLOBAL batches as dataset row indices, deterministic in (seed, epoch)."""


@dataclass(frozen=True)
class OptimSettings:
    """Optimisation settings: science (rule params), they change the trained result."""

    lr: float  # peak learning rate, reached at the end of warmup
    weight_decay: float  # AdamW decoupled weight decay on matrices (not biases/norms/embeddings)
    batch_size: int  # GLOBAL batch size, over all processes
    epochs: int  # passes over the training rows
    warmup_steps: int  # linear warmup updates before the cosine decay to 0
    grad_clip: float | None  # max global gradient L2 norm; None = no clipping
    seed: int  # seeds Python/NumPy/torch at the start (process r: seed + r)
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU; or "fp32" / "bf16"
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas (open_clip's default for ViTs)
    eps: float = 1e-6  # AdamW epsilon (open_clip's default for ViTs)
    decay_embeddings: bool = False  # also decay the positional/class embeddings (optim.py)

    def __post_init__(self) -> None:
        checks = {
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "batch_size": self.batch_size >= 1,
            "epochs": self.epochs >= 1,
            "warmup_steps": self.warmup_steps >= 0,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
            "precision": self.precision in PRECISIONS,
            "eps": self.eps > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = {name: getattr(self, name) for name in bad}
            raise ConfigError(f"invalid optimisation settings {values} (precision: {PRECISIONS})")


@dataclass(frozen=True)
class RunSettings:
    """Machine settings (CLI flags from rule resources): they never change the result."""

    checkpoint_every: int = 500  # optimizer updates between checkpoints (plus every epoch end)
    num_workers: int = 0  # DataLoader worker processes per training process
    log_every: int = 1  # updates between log lines / progress-bar refreshes
    progress: bool = True  # show a tqdm progress bar (main process)
    keep_checkpoints: int = 2  # complete checkpoints kept; older ones are deleted

    def __post_init__(self) -> None:
        if min(self.checkpoint_every, self.log_every, self.keep_checkpoints) < 1 or (
            self.num_workers < 0
        ):
            raise ConfigError(
                f"invalid run settings {self}: checkpoint_every, log_every and keep_checkpoints "
                f"must be >= 1, num_workers >= 0"
            )


class Objective(Protocol):
    """A training method: what is trained, the loss, and the artefact to keep.

    Optional: ``to(device)`` (called instead of ``module.to(device)``, for an objective holding
    more tensors than its module) and ``export_metadata() -> dict[str, str]`` (extra metadata of
    the final safetensors file).
    """

    module: torch.nn.Module  # the trainable part (params with requires_grad are trained)

    def loss(
        self, batch: dict[str, torch.Tensor], gather: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss over the GLOBAL batch (``gather`` this process's features) and its parts."""
        ...

    def export_state(self) -> dict[str, torch.Tensor]:
        """The final artefact's tensors."""
        ...


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN/inf; the message names the step."""


def shuffled_batches(n_rows: int, batch_size: int, seed: int, drop_last: bool = True) -> BatchPlan:
    """A plan visiting each of ``n_rows`` rows once per epoch in a (seed, epoch) permutation.

    ``drop_last`` drops the final short batch (a contrastive batch of 3 is a different task
    from one of 1024); without it the last batch holds the remainder.
    """
    if n_rows < 1 or batch_size < 1:
        raise ValueError(f"need n_rows >= 1 and batch_size >= 1; got {n_rows}, {batch_size}")
    if drop_last and n_rows < batch_size:
        raise ConfigError(
            f"{n_rows} training rows make no full batch of {batch_size}; lower the batch size"
        )

    def plan(epoch: int) -> list[list[int]]:
        # SeedSequence([seed, epoch]) is a fixed, platform-independent function of both.
        order = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
        rows = order.permutation(n_rows).tolist()
        stop = n_rows - n_rows % batch_size if drop_last else n_rows
        return [rows[start : start + batch_size] for start in range(0, stop, batch_size)]

    return plan


def local_slice(batch: Sequence[int], rank: int, world: int) -> list[int]:
    """Process ``rank``'s contiguous share of a global batch: rows rank*B//W .. (rank+1)*B//W."""
    n = len(batch)
    return list(batch[rank * n // world : (rank + 1) * n // world])


def collate(rows: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack one-row dicts into a batch dict; every row must have the same keys."""
    keys = list(rows[0])
    for index, row in enumerate(rows):
        if list(row) != keys:
            raise ValueError(f"dataset row {index} of the batch has keys {list(row)}, not {keys}")
    return {key: torch.stack([torch.as_tensor(row[key]) for row in rows]) for key in keys}


class _RowsDataset(torch.utils.data.Dataset):
    """``dataset[i]`` behind a torch Dataset, for the DataLoader's workers."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __getitem__(self, index: int) -> Mapping[str, torch.Tensor]:
        return self.dataset[index]

    def __len__(self) -> int:
        return len(self.dataset)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _settings_record(optim: OptimSettings) -> dict[str, Any]:
    # JSON round trip: tuples become lists, so a record compares equal to a reloaded one.
    return json.loads(json.dumps(dataclasses.asdict(optim)))


def _sum_gradients(params: Sequence[torch.nn.Parameter], accelerator: Any) -> None:
    """Sum every parameter's gradient over the processes (in flat buckets)."""
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = []
    for p in params:
        if p.grad is None:  # unused this step here: contribute zeros so the buckets line up
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    bucket: list[torch.Tensor] = []
    size = 0
    for index, grad in enumerate(grads):
        bucket.append(grad)
        size += grad.numel()
        if size >= GRAD_BUCKET_ELEMENTS or index == len(grads) - 1:
            flat = _flatten_dense_tensors(bucket)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            for grad_out, summed in zip(
                bucket, _unflatten_dense_tensors(flat, bucket), strict=True
            ):
                grad_out.copy_(summed)
            bucket, size = [], 0


def _all_finite(value: torch.Tensor, accelerator: Any) -> bool:
    """True when ``value`` is finite on every process (all processes agree on stopping)."""
    flag = torch.tensor([0.0 if torch.isfinite(value).all() else 1.0], device=value.device)
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() == 0.0)


def _trim_metrics(path: Path, last_step: int) -> None:
    """Keep the metrics lines of steps <= last_step (a killed run may have written more)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if record.get("step", math.inf) <= last_step:
            kept.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in kept))


def _write_final(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> None:
    state = {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=dict(metadata))


@dataclass
class _Position:
    """Where training stands: updates done and the next (epoch, batch) to run."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


@dataclass
class _Training:
    """What one :func:`fit` call sets up once and every step reads: the processes, the
    trainable parameters and their optimizer, the plan's length, the records checkpoints keep."""

    objective: Objective
    optim: OptimSettings
    run: RunSettings
    run_dir: Path
    accelerator: Any
    named: list[tuple[str, torch.nn.Parameter]]  # the trainable parameters, by name
    optimizer: torch.optim.Optimizer
    epoch_lengths: list[int]  # global batches per epoch
    run_config: dict[str, Any]  # plain JSON types
    optim_record: dict[str, Any]
    versions: dict[str, str | None]

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def total_steps(self) -> int:
        return sum(self.epoch_lengths)

    def gather(self, features: torch.Tensor) -> torch.Tensor:
        """The global batch's features (this process's rows keep their graph)."""
        return gather_features(features, self.accelerator)


def fit(
    objective: Objective,
    dataset: Any,
    plan: BatchPlan,
    optim: OptimSettings,
    run: RunSettings,
    run_dir: Path,
    run_config: dict[str, Any],
) -> Path:
    """Train ``objective`` on ``dataset`` following ``plan``; return ``run_dir/final.safetensors``.

    ``dataset[i]`` is one row as a dict of tensors; ``plan(epoch)`` the epoch's global batches
    of row indices. ``run_config`` (JSON-serialisable) is stored in every checkpoint and in the
    final artefact; resuming from a checkpoint of a different ``run_config``/``optim`` is
    refused (:class:`checkpoints.CheckpointError`). Launch with ``accelerate launch`` or
    torchrun for several processes; a plain call trains in this one.
    """
    training = _set_up(objective, plan, optim, run, Path(run_dir), run_config)
    position = _restore(training)
    position = _train_loop(training, dataset, plan, position)
    return _write_final_artefact(training, position)


def _set_up(
    objective: Objective,
    plan: BatchPlan,
    optim: OptimSettings,
    run: RunSettings,
    run_dir: Path,
    run_config: dict[str, Any],
) -> _Training:
    """The processes, the seeds, the objective on its device and its optimizer."""
    from accelerate import Accelerator

    # accelerate treats a CPU-only launch as multi-process only when told cpu=True.
    accelerator = Accelerator(cpu=torch_device().type == "cpu")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        # Otherwise every launched process would train alone and overwrite the others' files.
        raise RuntimeError(
            f"launched as {launched} processes (WORLD_SIZE) but accelerate set up "
            f"{accelerator.num_processes}"
        )
    run_config = json.loads(json.dumps(run_config))  # fail early if not JSON; plain types
    epoch_lengths = [len(plan(epoch)) for epoch in range(optim.epochs)]
    if sum(epoch_lengths) == 0:
        raise ConfigError("the batch plan has no batches: nothing to train")
    device = accelerator.device
    _seed_everything(optim.seed + accelerator.process_index)
    if hasattr(objective, "to"):
        objective.to(device)  # an objective with more than its module on the device
    else:
        objective.module.to(device)
    objective.module.train()
    groups = param_groups(objective.module, optim.weight_decay, optim.decay_embeddings)
    return _Training(
        objective=objective,
        optim=optim,
        run=run,
        run_dir=run_dir,
        accelerator=accelerator,
        named=trainable_parameters(objective.module),
        optimizer=adamw(
            groups, optim.lr, tuple(optim.betas), optim.eps, optim.weight_decay, device
        ),
        epoch_lengths=epoch_lengths,
        run_config=run_config,
        optim_record=_settings_record(optim),
        versions=package_versions(checkpoints.VERSIONED_PACKAGES),
    )


def _restore(t: _Training) -> _Position:
    """Resume from the newest complete checkpoint (the start when there is none); the metrics
    lines written after it go."""
    if t.is_main:
        checkpoints.remove_partial(t.run_dir)
    t.accelerator.wait_for_everyone()
    position = _Position()
    newest = checkpoints.newest_checkpoint(t.run_dir)
    stale = newest is not None and _trained_on_other_data(newest, t.run_config)
    t.accelerator.wait_for_everyone()  # every rank has read it before the main one deletes it
    if stale:
        # Same settings (the folder's key) but other training files: a finished or crashed
        # run on data that has since been regenerated. Its steps are not this run's.
        if t.is_main:
            log.warning(
                "%s was trained on other data than this run's (training files changed since): "
                "starting afresh",
                newest,
            )
            checkpoints.remove_all(t.run_dir)
        t.accelerator.wait_for_everyone()
        newest = None
    if newest is not None:
        position = _resume(
            newest, t.rank, t.device, t.named, t.optimizer, t.run_config, t.optim_record
        )
        if position.step > t.total_steps:
            raise checkpoints.CheckpointError(
                f"{newest}: {position.step} steps done but this plan has {t.total_steps}; "
                f"the training rows changed: delete {t.run_dir} to start afresh"
            )
        log.info("resuming from %s (step %d of %d)", newest, position.step, t.total_steps)
    if t.is_main:
        t.run_dir.mkdir(parents=True, exist_ok=True)
        _trim_metrics(t.run_dir / METRICS, position.step)
    t.accelerator.wait_for_everyone()
    return position


def _train_loop(t: _Training, dataset: Any, plan: BatchPlan, position: _Position) -> _Position:
    """Every update from ``position`` to the plan's end: one metrics line each, checkpoints
    every ``checkpoint_every`` updates and at each epoch's end; returns the final position."""
    progress = tqdm(
        total=t.total_steps,
        initial=position.step,
        disable=not (t.run.progress and t.is_main),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    autocast = _autocast(t.device, t.optim.precision)
    metrics_file = open(t.run_dir / METRICS, "a") if t.is_main else None  # noqa: SIM115 (closed below)
    try:
        for epoch in range(position.epoch, t.optim.epochs):
            batches = _epoch_batches(t, plan, epoch)
            start = position.batch if epoch == position.epoch else 0
            tick = time.perf_counter()  # samples/s include loading the batch
            for index, rows in _local_batches(batches, start, dataset, t.rank, t.world, t.run):
                step = position.step  # 0-based index of this update
                lr = warmup_cosine_lr(step, t.optim.lr, t.optim.warmup_steps, t.total_steps)
                loss, grad_norm, parts = _step(t, rows, lr, autocast, (step, epoch, index))
                # The position a resume continues from: the next batch, or the next epoch.
                end_of_epoch = index + 1 == len(batches)
                position = (
                    _Position(step + 1, epoch + 1, 0)
                    if end_of_epoch
                    else _Position(step + 1, epoch, index + 1)
                )
                seconds, tick = time.perf_counter() - tick, time.perf_counter()
                record = {
                    "step": position.step,
                    "epoch": epoch,
                    "batch": index,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "samples_per_s": len(batches[index]) / seconds if seconds > 0 else None,
                    **{name: float(value) for name, value in parts.items()},
                }
                _report(t, record, metrics_file, progress)
                if end_of_epoch or position.step % t.run.checkpoint_every == 0:
                    _save_checkpoint(t, position)
            position = _Position(position.step, epoch + 1, 0)
    finally:
        progress.close()
        if metrics_file is not None:
            metrics_file.close()
    return position


def _epoch_batches(t: _Training, plan: BatchPlan, epoch: int) -> list[list[int]]:
    """The plan's global batches of ``epoch``, checked against the plan's first call and the
    batch size."""
    batches = plan(epoch)
    if len(batches) != t.epoch_lengths[epoch]:
        raise RuntimeError(f"the batch plan is not deterministic (epoch {epoch})")
    too_big = [len(b) for b in batches if len(b) > t.optim.batch_size]
    if too_big:
        raise ConfigError(
            f"the batch plan of epoch {epoch} has batches of {max(too_big)} rows, more "
            f"than batch_size {t.optim.batch_size}"
        )
    return batches


def _step(
    t: _Training,
    rows: dict[str, torch.Tensor],
    lr: float,
    autocast: contextlib.AbstractContextManager,
    where: tuple[int, int, int],
) -> tuple[float, float, dict[str, float]]:
    """One optimizer update on this process's ``rows`` of a global batch: (loss, gradient norm
    before clipping, the objective's loss parts). ``where``: (step, epoch, batch), for the
    message when the loss or the gradient norm is not finite (then nothing is updated)."""
    for group in t.optimizer.param_groups:
        group["lr"] = lr
    batch = {key: value.to(t.device, non_blocking=True) for key, value in rows.items()}
    with autocast:
        loss, parts = t.objective.loss(batch, t.gather)
    if not _all_finite(loss.detach(), t.accelerator):
        raise _diverged(f"loss is {float(loss.detach()):g}", *where, t.run_dir)
    loss.backward()
    params = [p for _, p in t.named]
    _sum_gradients(params, t.accelerator)
    grad_norm = _clip(params, t.optim.grad_clip)
    if not _all_finite(grad_norm, t.accelerator):
        raise _diverged(f"gradient norm is {float(grad_norm):g}", *where, t.run_dir)
    t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), float(grad_norm), parts


def _report(t: _Training, record: dict[str, Any], metrics_file: Any, progress: tqdm) -> None:
    """One update's metrics line (main process), progress bar and, every ``log_every``
    updates, log line."""
    if metrics_file is not None:
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
    progress.update(1)
    if record["step"] % t.run.log_every == 0:
        progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.3g}")
        log.info(
            "step %d/%d epoch %d loss %.5f lr %.3g %.1f samples/s",
            record["step"],
            t.total_steps,
            record["epoch"],
            record["loss"],
            record["lr"],
            record["samples_per_s"] or 0.0,
        )


def _save_checkpoint(t: _Training, position: _Position) -> Path:
    """Write the checkpoint of ``position`` (every process its RNG state, the main process the
    weights, optimizer and state), commit it and prune old ones; returns its folder."""
    state = {
        "step": position.step,
        "epoch": position.epoch,
        "batch": position.batch,
        "total_steps": t.total_steps,
        "epoch_lengths": t.epoch_lengths,
        "schedule": {
            "kind": "warmup_cosine",
            "base_lr": t.optim.lr,
            "warmup_steps": t.optim.warmup_steps,
            "total_steps": t.total_steps,
        },
        "world_size": t.world,
        "optim": t.optim_record,
        "run_config": t.run_config,
        "versions": t.versions,
        "parameters": [name for name, _ in t.named],
    }
    if t.is_main:
        checkpoints.begin(t.run_dir, position.step)
    t.accelerator.wait_for_everyone()
    tmp = checkpoints.tmp_dir(t.run_dir, position.step)
    checkpoints.write_rng(tmp, t.rank)
    if t.is_main:
        weights = {name: p for name, p in t.named}
        checkpoints.write_main_files(tmp, weights, t.optimizer.state_dict(), state)
    t.accelerator.wait_for_everyone()
    final = checkpoints.checkpoint_root(t.run_dir) / checkpoints.step_dir_name(position.step)
    if t.is_main:
        checkpoints.commit(t.run_dir, position.step)
        checkpoints.prune(t.run_dir, t.run.keep_checkpoints)
        log.info("checkpoint %s", final)
    t.accelerator.wait_for_everyone()
    return final


def _write_final_artefact(t: _Training, position: _Position) -> Path:
    """``final.safetensors``: the objective's exported tensors, the run's records in the
    metadata (main process)."""
    final_path = t.run_dir / FINAL
    if t.is_main:
        metadata = {
            "run_config": json.dumps(t.run_config, sort_keys=True),
            "optim": json.dumps(t.optim_record, sort_keys=True),
            "versions": json.dumps(t.versions, sort_keys=True),
            "steps": str(position.step),
        }
        extra = getattr(t.objective, "export_metadata", None)
        if callable(extra):
            metadata.update({str(k): str(v) for k, v in extra().items()})
        _write_final(final_path, t.objective.export_state(), metadata)
        log.info("wrote %s after %d steps", final_path, position.step)
    t.accelerator.wait_for_everyone()
    return final_path


def _diverged(what: str, step: int, epoch: int, batch: int, run_dir: Path) -> TrainingDiverged:
    last_good = checkpoints.newest_checkpoint(run_dir)
    return TrainingDiverged(
        f"{what} at step {step + 1} (epoch {epoch}, batch {batch}); stopped before updating "
        f"the weights; last good checkpoint: {last_good or 'none yet'} (lower the learning "
        f"rate or check the training rows of that batch)"
    )


def _trained_on_other_data(path: Path, run_config: dict[str, Any]) -> bool:
    """Whether checkpoint ``path`` records another training-data fingerprint than
    ``run_config`` (a checkpoint without one, from before fingerprints, counts as other)."""
    if "data" not in run_config:
        return False
    return checkpoints.saved_run_config(path).get("data") != run_config["data"]


def _resume(
    path: Path,
    rank: int,
    device: torch.device,
    named: Sequence[tuple[str, torch.nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    run_config: dict[str, Any],
    optim_record: dict[str, Any],
) -> _Position:
    """Load weights, optimizer and RNG states from ``path``; return its data position."""
    loaded = checkpoints.load(path, rank, device)
    state = loaded.state
    differs = [
        key
        for key, current in (("run_config", run_config), ("optim", optim_record))
        if state.get(key) != current
    ]
    if differs:
        raise checkpoints.CheckpointError(
            f"{path} was written with a different {' and '.join(differs)} than this run's; "
            f"delete {path.parent.parent} to start afresh, or rerun with its settings"
        )
    names = [name for name, _ in named]
    saved_groups = [group.get("names") for group in loaded.optimizer.get("param_groups", [])]
    current_groups = [group["names"] for group in optimizer.param_groups]
    if (
        state.get("parameters") != names
        or set(loaded.weights) != set(names)
        or (saved_groups != current_groups)
    ):
        raise checkpoints.CheckpointError(
            f"{path} holds other trainable parameters than this objective's; delete "
            f"{path.parent.parent} to start afresh"
        )
    with torch.no_grad():
        for name, param in named:
            param.copy_(loaded.weights[name])
    optimizer.load_state_dict(loaded.optimizer)
    if loaded.rng is not None:
        checkpoints.set_rng_state(loaded.rng)
    else:
        log.warning(
            "%s has no RNG state for process %d (written by %s processes): reseeding",
            path,
            rank,
            state.get("world_size"),
        )
        _seed_everything(int(state["optim"]["seed"]) + rank + int(state["step"]))
    return _Position(int(state["step"]), int(state["epoch"]), int(state["batch"]))


def _clip(params: Sequence[torch.nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """The global gradient L2 norm (before clipping); clips to ``max_norm`` when set."""
    grads = [p.grad for p in params if p.grad is not None]
    if max_norm is None:
        return torch.nn.utils.get_total_norm(grads)
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def _local_batches(
    batches: list[list[int]], start: int, dataset: Any, rank: int, world: int, run: RunSettings
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """(batch index, this process's collated rows) for batches[start:]."""
    slices = []
    for index in range(start, len(batches)):
        if len(batches[index]) < world:
            raise ConfigError(
                f"global batch {index} has {len(batches[index])} rows, fewer than the "
                f"{world} processes"
            )
        slices.append(local_slice(batches[index], rank, world))
    loader = torch.utils.data.DataLoader(
        _RowsDataset(dataset),
        batch_sampler=slices,
        collate_fn=collate,
        num_workers=run.num_workers,
        # Its own generator: the DataLoader must not draw from the global torch RNG, or a
        # resumed epoch would shift the RNG stream against the uninterrupted run's.
        generator=torch.Generator(),
    )
    yield from enumerate(loader, start=start)
