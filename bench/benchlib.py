"""What the training benchmarks share: paired timing of several arms and the machine record."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch


def time_interleaved(arms: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each arm, the arms taking turns after one warm-up call each.

    Alternating call by call exposes every arm to the same load on a shared machine, so their
    ratio stays fair when other work comes and goes during the run.
    """
    for run in arms.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, run in arms.items():
            begin = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - begin)
    return times


def summary(times: list[float], samples: int) -> dict[str, Any]:
    """Median seconds per call, every call's seconds, and samples/s at the median."""
    median = statistics.median(times)
    return {
        "step_s_median": round(median, 6),
        "step_s": [round(t, 6) for t in times],
        "samples_per_s": round(samples / median, 2),
    }


def machine_record(threads: int) -> dict[str, Any]:
    """Where the figures were measured; the load averages say how busy the machine was."""
    return {
        "cpus": os.cpu_count(),
        "threads": threads,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "torch": torch.__version__,
    }


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The trainer's precision: bf16 autocast on CUDA, float32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer stops when the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(
    objective: Any, optimizer: torch.optim.Optimizer, batch: dict[str, Any], device: torch.device
) -> None:
    """One update as the trainer makes it: the objective's loss on ``batch`` (one process, so
    gathering is the identity), backward, the optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(device):
        loss, _ = objective.loss(batch, lambda features: features)
    loss.backward()
    optimizer.step()
    sync(device)
