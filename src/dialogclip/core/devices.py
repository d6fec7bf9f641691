"""One job per GPU on a multi-GPU node: pin each job to free devices with per-device lock files.

Why: Snakemake counts ``resources: gpu=k`` against ``--resources gpu=N`` but does not set
``CUDA_VISIBLE_DEVICES`` for local jobs (snakemake issue #281), so every job would land on
device 0. A job that needs k GPUs calls :func:`claim_gpus` (``dialogclip --gpus k <command>``)
before anything initialises CUDA. It takes k free device slots by locking
``<slot dir>/gpu<id>.lock`` with ``fcntl.flock`` and keeps the lock files open for the life of
the process: the kernel drops the locks when the process ends in any way, SIGKILL and OOM kill
included, so no stale slot is ever left behind. It then sets ``CUDA_VISIBLE_DEVICES`` to those
devices; children (vLLM workers, data loaders) inherit the variable. With no free slot it waits,
saying so in the job's log.

Where the devices come from, first match wins:

- ``DIALOGCLIP_DEVICES=0,1,2,3``: an explicit list (tests use a fake one; a user may reserve
  part of a node);
- ``CUDA_VISIBLE_DEVICES`` set around Snakemake: the jobs share out exactly those devices;
- ``nvidia-smi -L``: every GPU of the node (MIG instances by UUID when the GPU is partitioned).

Under Slurm the scheduler has already given the job its own devices (``SLURM_JOB_GPUS`` /
``CUDA_VISIBLE_DEVICES``): nothing is locked or changed, unless Snakemake itself runs inside a
larger allocation and starts local jobs there, which are then shared out like on a node. No
device found (a CPU machine): nothing is claimed. Then :func:`require_cuda` stops a job given
GPUs at once when torch sees none, unless the run allows the CPU (``--allow-cpu 1``, the
profile's ``allow_cpu``).

The slot directory is ``.snakemake/gpu-slots`` under the working directory (so the jobs of one
workflow see each other's locks), or ``DIALOGCLIP_GPU_SLOT_DIR`` to share a node between several
working directories (and users: the slot files are made read-write for all,
:mod:`dialogclip.core.locks`). Where the working directory's file system has no ``flock``,
``DIALOGCLIP_LOCK_DIR`` moves the default slot folder to a local disk.

``python -m dialogclip.core.devices --gpus k -- <command> ...`` claims the devices and then
execs the command, which keeps the locks (for commands other than ``dialogclip``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dialogclip.core.config import ConfigError
from dialogclip.core.cuda_stack import explain_no_cuda, probe_torch, query_driver
from dialogclip.core.locks import (
    ENV_LOCK_DIR,
    LockUnsupportedError,
    flock,
    lock_folder,
    open_lock_file,
)

ENV_DEVICES = "DIALOGCLIP_DEVICES"
ENV_SLOT_DIR = "DIALOGCLIP_GPU_SLOT_DIR"
ENV_POLL_S = "DIALOGCLIP_GPU_POLL_S"
DEFAULT_SLOT_DIR = Path(".snakemake") / "gpu-slots"
DEFAULT_POLL_S = 5.0
# A waiting job repeats its message this often, so a long wait stays visible in its log.
REPEAT_WAIT_LOG_S = 600.0

log = logging.getLogger(__name__)

# Open lock files of this process's slots. Never closed on purpose: the locks must last as long
# as the process and vanish with it (see the module docstring).
_HELD: list[int] = []


class DeviceError(ConfigError):
    """A job asks for more GPUs than the node has, or asks too late (CUDA already started)."""


@dataclass(frozen=True)
class Claim:
    """The devices a job runs on.

    Attributes:
        devices: device ids as written into ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs).
        source: where they came from: ``DIALOGCLIP_DEVICES``, ``CUDA_VISIBLE_DEVICES``,
            ``nvidia-smi`` (slots locked here) or ``scheduler`` (Slurm's choice, left as is).
        waited_s: seconds spent waiting for free slots.
    """

    devices: tuple[str, ...]
    source: str
    waited_s: float = 0.0


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_nvidia_smi(text: str) -> list[str]:
    """Device ids from ``nvidia-smi -L`` output: GPU indices, or MIG UUIDs for partitioned GPUs.

    A GPU split into MIG instances is addressed through its instances' UUIDs
    (``CUDA_VISIBLE_DEVICES=MIG-...``), one slot each; its plain index would mean all of them.
    """
    devices: list[str] = []
    for line in text.splitlines():
        gpu = re.match(r"GPU (\d+):", line)
        if gpu:
            devices.append(gpu[1])
            continue
        mig = re.match(r"\s+MIG .*\(UUID: (MIG-[^)\s]+)\)", line)
        if mig:
            if devices and not devices[-1].startswith("MIG-"):
                devices.pop()  # the parent GPU is replaced by its instances
            devices.append(mig[1])
    return devices


def _nvidia_smi_devices() -> list[str]:
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return []
    try:
        result = subprocess.run(
            [executable, "-L"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("nvidia-smi -L failed (%s); assuming no GPU", err)
        return []
    if result.returncode != 0:
        log.warning("nvidia-smi -L exited with %d; assuming no GPU", result.returncode)
        return []
    return parse_nvidia_smi(result.stdout)


def device_pool(environ: MutableMapping[str, str] | None = None) -> tuple[list[str], str]:
    """The devices jobs on this node share out, and where that list came from."""
    environ = os.environ if environ is None else environ
    if ENV_DEVICES in environ:
        return _split(environ[ENV_DEVICES]), ENV_DEVICES
    if "CUDA_VISIBLE_DEVICES" in environ:
        # "-1" (or any negative index) hides every GPU; CUDA ignores the list from there on.
        visible = _split(environ["CUDA_VISIBLE_DEVICES"])
        usable = []
        for device in visible:
            if device.lstrip("-").isdigit() and int(device) < 0:
                break
            usable.append(device)
        return usable, "CUDA_VISIBLE_DEVICES"
    return _nvidia_smi_devices(), "nvidia-smi"


def _slot_file(slot_dir: Path, device: str) -> Path:
    return slot_dir / f"gpu{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock"


def _try_lock(path: Path, setting: str) -> int | None:
    fd = open_lock_file(path, shared=True)
    try:
        flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, path, setting)
    except BlockingIOError:
        os.close(fd)
        return None
    except LockUnsupportedError:
        os.close(fd)
        raise
    # Who holds it, for the message of a job that waits.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
    return fd


def _holders(slot_dir: Path, pool: Sequence[str]) -> str:
    held = []
    for device in pool:
        path = _slot_file(slot_dir, device)
        with contextlib.suppress(OSError):
            held.append(f"{device}: {path.read_text().strip() or '?'}")
    return "; ".join(held) or "none recorded"


def _take(slot_dir: Path, pool: Sequence[str], count: int, setting: str) -> list[tuple[str, int]]:
    """Lock ``count`` free slots of ``pool`` or none (all-or-nothing, under the assign lock)."""
    assign_path = slot_dir / "assign.lock"
    assign = open_lock_file(assign_path, shared=True)
    try:
        # One job picks at a time, so two jobs needing 2 of 2 free slots cannot take one each.
        flock(assign, fcntl.LOCK_EX, assign_path, setting)
        taken: list[tuple[str, int]] = []
        for device in pool:
            fd = _try_lock(_slot_file(slot_dir, device), setting)
            if fd is not None:
                taken.append((device, fd))
                if len(taken) == count:
                    return taken
        for _, fd in taken:
            os.close(fd)
        return []
    finally:
        os.close(assign)  # closing drops the assign lock


def _scheduler_assigned(environ: MutableMapping[str, str]) -> bool:
    return "SLURM_JOB_ID" in environ and (
        "SLURM_JOB_GPUS" in environ or "CUDA_VISIBLE_DEVICES" in environ
    )


def _check_cuda_not_started() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise DeviceError(
            "CUDA was initialised before the GPU claim, so CUDA_VISIBLE_DEVICES can no longer "
            "take effect; claim the GPUs (dialogclip --gpus N) before any CUDA call"
        )


def claim_gpus(
    count: int,
    *,
    environ: MutableMapping[str, str] | None = None,
    slot_dir: Path | None = None,
    poll_s: float | None = None,
) -> Claim | None:
    """Take ``count`` free GPUs of this node for the rest of the process's life.

    Sets ``CUDA_VISIBLE_DEVICES`` (and ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` when the ids are
    nvidia-smi indices, so both number the devices alike) in ``environ``; waits, logging why,
    while fewer than ``count`` slots are free.

    Returns:
        the claim, or None when nothing was done (``count`` 0, or no GPU on this machine).

    Raises:
        DeviceError: ``count`` is negative or exceeds the node's devices, or CUDA already runs.
    """
    environ = os.environ if environ is None else environ
    if count == 0:
        return None
    if count < 0:
        raise DeviceError(f"--gpus must be 0 or more, got {count}")
    if ENV_DEVICES not in environ and _scheduler_assigned(environ):
        visible, _ = device_pool(environ)
        if len(visible) <= count or not visible:
            log.info(
                "GPUs assigned by Slurm (CUDA_VISIBLE_DEVICES=%s, SLURM_JOB_GPUS=%s): used as is",
                environ.get("CUDA_VISIBLE_DEVICES"),
                environ.get("SLURM_JOB_GPUS"),
            )
            return Claim(tuple(visible), "scheduler")
        # More devices than the job asks for: Snakemake runs local jobs inside a larger
        # allocation, so they are shared out like on a node.
    pool, source = device_pool(environ)
    if not pool:
        log.info("no GPU found (%s): job %d GPU(s) runs without device assignment", source, count)
        return None
    if count > len(pool):
        raise DeviceError(
            f"the job asks for {count} GPUs but this node has {len(pool)} ({source}: "
            f"{','.join(pool)}); lower the rule's resources gpu (set-resources in the profile)"
        )
    _check_cuda_not_started()
    # The variable that moves the slot files, named when their folder has no flock.
    setting = ENV_SLOT_DIR if environ.get(ENV_SLOT_DIR) else ENV_LOCK_DIR
    if slot_dir is None:
        slot_dir = (
            Path(environ[ENV_SLOT_DIR])
            if environ.get(ENV_SLOT_DIR)
            else lock_folder(DEFAULT_SLOT_DIR, environ)
        )
    poll_s = float(environ.get(ENV_POLL_S, DEFAULT_POLL_S)) if poll_s is None else poll_s

    started = time.monotonic()
    last_message = None
    while not (taken := _take(slot_dir, pool, count, setting)):
        now = time.monotonic()
        if last_message is None or now - last_message >= REPEAT_WAIT_LOG_S:
            log.warning(
                "waiting for %d free GPU(s) of %s (%s) in %s; held: %s",
                count,
                ",".join(pool),
                source,
                slot_dir,
                _holders(slot_dir, pool),
            )
            last_message = now
        time.sleep(poll_s)
    waited_s = time.monotonic() - started if last_message is not None else 0.0

    devices = tuple(device for device, _ in taken)
    _HELD.extend(fd for _, fd in taken)
    environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    if source == "nvidia-smi":
        environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    log.info(
        "GPU slot(s) taken: CUDA_VISIBLE_DEVICES=%s (of %s from %s%s)",
        environ["CUDA_VISIBLE_DEVICES"],
        ",".join(pool),
        source,
        f", after waiting {waited_s:.1f} s" if waited_s else "",
    )
    return Claim(devices, source, round(waited_s, 3))


def slurm_gave_gpus(environ: Mapping[str, str]) -> bool:
    """Whether Slurm allocated GPUs to this job or step (``--gpus``, ``--gres=gpu``): the GPU
    ids it exports, or its count of GPUs on this node."""
    if "SLURM_JOB_ID" not in environ:
        return False
    ids = environ.get("SLURM_STEP_GPUS", "") + environ.get("SLURM_JOB_GPUS", "")
    on_node = environ.get("SLURM_GPUS_ON_NODE", "").strip()
    return bool(ids.strip()) or (on_node.isdigit() and int(on_node) > 0)


def require_cuda(
    count: int, allow_cpu: bool, environ: Mapping[str, str] | None = None
) -> dict | None:
    """Stop a job that was given GPUs when torch sees none, instead of letting it run (LLaVA-7B
    in float32 on the CPU until the wall time runs out).

    A job was given GPUs when it asks for ``count`` >= 1 (``--gpus``, the rule's ``gpu``
    resource) or Slurm allocated it some (a ``gres`` request). ``allow_cpu`` (the profile's
    ``allow_cpu`` resource: the demo's and the CPU test runs') lets it run on the CPU anyway.
    torch is asked in a child process (:func:`dialogclip.core.cuda_stack.probe_torch`): this
    process has not imported torch yet and must not initialise CUDA before its command.

    Returns:
        the probe's answer (None when nothing was checked).

    Raises:
        DeviceError: one line naming torch's build, the driver (or its absence),
            ``CUDA_VISIBLE_DEVICES`` and the pin set to install.
    """
    environ = os.environ if environ is None else environ
    given = count >= 1 or slurm_gave_gpus(environ)
    if not given or allow_cpu:
        return None
    torch = probe_torch()
    if torch.get("available"):
        return torch
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    slurm_ids = environ.get("SLURM_STEP_GPUS") or environ.get("SLURM_JOB_GPUS")
    asked = f"--gpus {count}" if count >= 1 else f"Slurm's GPUs {slurm_ids}"
    if "error" in torch:
        build, advice = f"torch cannot be imported ({torch['error']})", "check the install"
    else:
        driver = query_driver()
        cuda = torch["cuda"]
        build = f"torch {torch['version']} ({f'built for CUDA {cuda}' if cuda else 'a CPU build'})"
        advice = explain_no_cuda(torch["version"], cuda, driver)
        build += f", {driver.describe()}"
    raise DeviceError(
        f"this job was given GPUs ({asked}) but torch sees none: {build}, "
        f"CUDA_VISIBLE_DEVICES={visible if visible is not None else 'unset'}; {advice}; "
        "to run GPU jobs on the CPU on purpose set the resource allow_cpu: 1 "
        "(default-resources of the profile)"
    )


def release_gpus() -> None:
    """Give back this process's slots before it ends (tests; a normal job just exits)."""
    while _HELD:
        os.close(_HELD.pop())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dialogclip.core.devices --gpus k -- COMMAND ...``: claim, then exec COMMAND.

    The lock files are handed to COMMAND across exec, so it holds the slots until it ends.
    """
    parser = argparse.ArgumentParser(
        prog="python -m dialogclip.core.devices", description=main.__doc__.splitlines()[0]
    )
    parser.add_argument("--gpus", type=int, required=True, metavar="N")
    parser.add_argument("--allow-cpu", type=int, choices=(0, 1), default=0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    from dialogclip.core.logging import setup_logging

    setup_logging("INFO")
    try:
        claim_gpus(args.gpus)
        require_cuda(args.gpus, bool(args.allow_cpu))
    except DeviceError as err:
        log.error("%s", err)
        return 2
    for fd in _HELD:
        os.set_inheritable(fd, True)
    sys.stderr.flush()
    os.execvp(command[0], command)
    return 127  # not reached: execvp replaces this process or raises


if __name__ == "__main__":
    sys.exit(main())
