"""Machine settings of a stage command: its flags, the torch threads and the torch device.

Machine settings (threads, batch size, where fetched weights are) come from the rules'
``threads`` and ``resources`` as command-line flags, never inside ``--params``, so tuning them
reruns nothing. Every stage command adds them with :func:`add_machine_arguments` and applies
them with :func:`apply_machine_arguments` before it loads a model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

AUTO = "auto"


def add_machine_arguments(
    parser: argparse.ArgumentParser,
    *,
    batch_size: int | None = None,
    batch_help: str = "items per forward pass",
    weights_dir: bool = True,
    threads_help: str = "CPU threads for torch",
) -> argparse._ArgumentGroup:
    """Add ``--threads`` (default None: torch's own choice), ``--batch-size`` when
    ``batch_size`` is given (its default), and ``--weights-dir`` (default None) when
    ``weights_dir``; returns their argument group, where a command adds its own machine flags.
    """
    group = parser.add_argument_group(
        "machine settings (the rule's threads and resources; never change a result)"
    )
    group.add_argument("--threads", type=int, default=None, help=threads_help)
    if batch_size is not None:
        help_text = f"{batch_help} (default {batch_size})"
        group.add_argument("--batch-size", type=int, default=batch_size, help=help_text)
    if weights_dir:
        group.add_argument(
            "--weights-dir",
            type=Path,
            default=None,
            help="folder of fetched pretrained weights (config weights_dir); tags load from there",
        )
    return group


def apply_machine_arguments(args: argparse.Namespace) -> None:
    """Apply the parsed machine flags to this process (today: ``--threads``)."""
    set_torch_threads(args.threads)


def set_torch_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` when given (> 0): parallel jobs on one machine must
    not each take every core. None or 0 leaves torch's default."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def torch_device(requested: str | Any = AUTO) -> Any:
    """The ``torch.device`` a job runs on: ``auto`` -> ``cuda`` when torch sees a GPU, else
    ``cpu``; anything else (``cpu``, ``cuda:1``, a ``torch.device``) as given.

    Whether a GPU job may run on the CPU at all is decided before, by
    :func:`dialogclip.core.devices.require_cuda` (``--allow-cpu``).
    """
    import torch

    if requested == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
