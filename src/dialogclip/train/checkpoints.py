"""Training checkpoints: atomic directories in safe formats, newest-complete resume, pruning.

Layout of ``<run_dir>/checkpoints/step-XXXXXXXX/`` (XXXXXXXX = optimizer updates done):

- ``trainable.safetensors``: every parameter with ``requires_grad`` (full names), plus
  metadata ``state`` (the JSON below);
- ``optimizer.pt``: ``optimizer.state_dict()`` (tensors, numbers, strings: ``torch.load`` with
  ``weights_only=True`` reads it);
- ``rng-rank<r>.pt``: process r's Python, NumPy and torch (CPU, CUDA) generator states, as
  tensors and plain lists for the same ``weights_only`` loader;
- ``state.json``: step, data position (next epoch and batch), total steps, the learning-rate
  schedule (a pure function of the step: its parameters are its whole state), world size, the
  optimisation settings, the run config and the package versions.

A checkpoint is written into ``checkpoints/.tmp-step-XXXXXXXX`` and renamed to its final name
only when every file is written and fsynced, so a directory named ``step-*`` is complete: a
SIGKILL at any moment leaves either the previous checkpoints or the new one, plus at worst a
``.tmp-*`` directory that the next run removes. accelerate's ``save_state`` is not used: its RNG
file pickles NumPy arrays and its loader reads it with ``weights_only=False``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step-"
TMP_PREFIX = ".tmp-"
WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.json"
VERSIONED_PACKAGES = ("torch", "open_clip_torch", "transformers", "accelerate", "dialogclip")


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable or belongs to another configuration; the message names it."""


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories under ``run_dir``, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        suffix = path.name[len(STEP_PREFIX) :]
        if path.is_dir() and path.name.startswith(STEP_PREFIX) and suffix.isdigit():
            found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


def newest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def saved_run_config(path: Path) -> dict[str, Any]:
    """The ``run_config`` a checkpoint directory was written with (its state file only)."""
    try:
        return json.loads((path / STATE).read_text()).get("run_config", {})
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"{path / STATE}: unreadable checkpoint file ({err}); delete {path} to resume from "
            "the previous checkpoint"
        ) from err


def remove_all(run_dir: Path) -> None:
    """Delete every checkpoint of ``run_dir`` (complete or not)."""
    shutil.rmtree(checkpoint_root(run_dir), ignore_errors=True)


def remove_partial(run_dir: Path) -> None:
    """Delete ``.tmp-*`` directories left by a run killed while writing a checkpoint."""
    root = checkpoint_root(run_dir)
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(TMP_PREFIX):
                log.info("removing the incomplete checkpoint %s", path)
                shutil.rmtree(path)


def prune(run_dir: Path, keep: int) -> None:
    """Keep the ``keep`` newest complete checkpoints, delete older ones."""
    for path in complete_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        log.info("pruning old checkpoint %s", path)
        shutil.rmtree(path)


def _readable(path: Path) -> None:
    # safetensors writes 0600 files; give every checkpoint file the mode open() would (umask).
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def begin(run_dir: Path, step: int) -> Path:
    """Create an empty temporary directory for the checkpoint of ``step`` (main process)."""
    tmp = checkpoint_root(run_dir) / f"{TMP_PREFIX}{step_dir_name(step)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def tmp_dir(run_dir: Path, step: int) -> Path:
    return checkpoint_root(run_dir) / f"{TMP_PREFIX}{step_dir_name(step)}"


def write_main_files(
    tmp: Path,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
) -> None:
    """Weights, optimizer and state of a checkpoint into ``tmp`` (main process)."""
    state_json = json.dumps(state, sort_keys=True)
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in weights.items()}
    save_file(tensors, str(tmp / WEIGHTS), metadata={"state": state_json})
    torch.save(optimizer_state, tmp / OPTIMIZER)
    (tmp / STATE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    for name in (WEIGHTS, OPTIMIZER, STATE):
        _readable(tmp / name)
        _fsync(tmp / name)


def write_rng(tmp: Path, rank: int) -> None:
    """This process's generator states into ``tmp/rng-rank<rank>.pt``."""
    path = tmp / f"rng-rank{rank}.pt"
    torch.save(rng_state(), path)
    _readable(path)
    _fsync(path)


def commit(run_dir: Path, step: int) -> Path:
    """Rename the finished temporary directory to ``step-XXXXXXXX`` (main process)."""
    tmp = tmp_dir(run_dir, step)
    final = checkpoint_root(run_dir) / step_dir_name(step)
    _fsync(tmp)
    if final.exists():  # the same step written again (cannot hold other content): replace
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync(final.parent)
    return final


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch generator states in ``weights_only``-loadable types."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {
                "key": numpy_state["key"].numpy().astype(np.uint32),
                "pos": numpy_state["pos"],
            },
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class LoadedCheckpoint:
    """What a resumed run needs from a checkpoint directory."""

    path: Path
    state: dict[str, Any]
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any] | None  # None: no file for this rank (world size changed)


def load(path: Path, rank: int, device: torch.device | str = "cpu") -> LoadedCheckpoint:
    """Read a checkpoint directory with safe loaders only; errors name the file."""
    current = path / STATE
    try:
        state = json.loads(current.read_text())
        current = path / WEIGHTS
        weights = load_file(str(current), device=str(device))
        current = path / OPTIMIZER
        optimizer = torch.load(current, map_location=device, weights_only=True)
        current = path / f"rng-rank{rank}.pt"
        rng = torch.load(current, weights_only=True) if current.is_file() else None
    except (OSError, ValueError, SafetensorError, RuntimeError, EOFError) as err:
        raise CheckpointError(
            f"{current}: unreadable checkpoint file ({err}); delete {path} to resume from the "
            f"previous checkpoint"
        ) from err
    return LoadedCheckpoint(path, state, weights, optimizer, rng)
