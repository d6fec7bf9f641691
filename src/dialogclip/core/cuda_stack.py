"""Which GPU pin set suits this node's NVIDIA driver, and why torch sees no GPU.

The GPU install comes in two pin sets (docs/gpu.md, "Install"), both of PyPI's default Linux
wheels, which bring their CUDA libraries with them:

- CUDA 13 (``make install-gpu``, ``envs/gpu-requirements.txt``): vLLM 0.33.0 with torch 2.14.0;
  the driver must support CUDA 13.0 (NVIDIA driver >= 580);
- CUDA 12 (``make install-gpu CUDA=12``, ``envs/gpu-requirements-cuda12.txt``): vLLM 0.19.1
  with torch 2.10.0, built for CUDA 12.8; any CUDA 12 driver (>= 525.60.13, CUDA's minor
  version compatibility).

A CUDA build newer than the driver installs without complaint and then sees no GPU. The driver
tells the newest CUDA it supports in the header of ``nvidia-smi`` ("CUDA Version: 12.4"); this
module compares that with a pin set before the install downloads it (``check-driver``), and
with the installed torch's build afterwards (``check-torch``). ``dialogclip.core.devices``
uses :func:`explain_no_cuda` when a job given GPUs finds none.

Standard library only: ``scripts/setup.sh`` runs it with the system Python before ``.venv``
exists (``PYTHONPATH=src python -m dialogclip.core.cuda_stack check-driver --cuda 13``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PinSet:
    """One GPU pin set: the CUDA major version its wheels are built for, and how to get it."""

    cuda: int  # CUDA major version of the torch/vLLM wheels
    requirements: str  # pin file under the repository root
    torch: str
    vllm: str
    min_driver: str  # oldest NVIDIA driver that runs it

    @property
    def install(self) -> str:
        return (
            "make install-gpu"
            if self.cuda == DEFAULT_CUDA
            else f"make install-gpu CUDA={self.cuda}"
        )

    def describe(self) -> str:
        return (
            f"the CUDA {self.cuda} set (torch {self.torch}, vllm {self.vllm}; driver >= "
            f"{self.min_driver}: {self.install})"
        )


PIN_SETS = {
    13: PinSet(13, "envs/gpu-requirements.txt", "2.14.0", "0.33.0", "580"),
    12: PinSet(12, "envs/gpu-requirements-cuda12.txt", "2.10.0", "0.19.1", "525.60.13"),
}
DEFAULT_CUDA = 13


@dataclass(frozen=True)
class Driver:
    """What ``nvidia-smi`` says about this node's NVIDIA driver.

    ``problem`` is None when it answered; else why not (not found, failed).
    """

    version: str | None = None  # e.g. "550.54.15"
    cuda: str | None = None  # the newest CUDA the driver supports, e.g. "12.4"
    problem: str | None = None

    def describe(self) -> str:
        if self.problem:
            return f"nvidia-smi: {self.problem}"
        return f"NVIDIA driver {self.version or '?'} (supports CUDA <= {self.cuda or '?'})"


def parse_nvidia_smi_header(text: str) -> tuple[str | None, str | None]:
    """Driver version and supported CUDA version from ``nvidia-smi``'s table header."""
    driver = re.search(r"Driver Version:\s*([0-9][0-9.]*)", text)
    cuda = re.search(r"CUDA Version:\s*([0-9][0-9.]*)", text)
    return (driver[1] if driver else None, cuda[1] if cuda else None)


def query_driver() -> Driver:
    """Run ``nvidia-smi`` (found on PATH) and read its header."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return Driver(problem="not found on PATH (no NVIDIA driver here)")
    try:
        result = subprocess.run(
            [executable], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return Driver(problem=f"failed ({err})")
    if result.returncode != 0:
        last = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["no output"]
        return Driver(problem=f"exited with {result.returncode} ({last[0].strip()})")
    version, cuda = parse_nvidia_smi_header(result.stdout)
    return Driver(version=version, cuda=cuda)


def _major(version: str | None) -> int | None:
    match = re.match(r"(\d+)", version or "")
    return int(match[1]) if match else None


def set_for_driver(driver: Driver) -> PinSet | None:
    """The newest pin set the driver runs (None when its CUDA version is unknown or too old)."""
    major = _major(driver.cuda)
    if major is None:
        return None
    usable = [pins for cuda, pins in PIN_SETS.items() if cuda <= major]
    return max(usable, key=lambda pins: pins.cuda) if usable else None


def driver_problem(pins: PinSet, driver: Driver) -> str | None:
    """Why ``driver`` cannot run ``pins`` (None when it can, or when nothing is known)."""
    major = _major(driver.cuda)
    if major is None or major >= pins.cuda:
        return None
    better = set_for_driver(driver)
    advice = f"use {better.describe()}" if better else "update the NVIDIA driver"
    return (
        f"{driver.describe()} cannot run the CUDA {pins.cuda} set ({pins.requirements}: torch "
        f"{pins.torch}, vllm {pins.vllm}, driver >= {pins.min_driver}); {advice}"
    )


def explain_no_cuda(torch_version: str, torch_cuda: str | None, driver: Driver) -> str:
    """What to do when torch (``torch_version``, built for CUDA ``torch_cuda`` or None for a
    CPU build) sees no GPU on a node whose driver is ``driver``."""
    install = " or ".join(pins.install for pins in PIN_SETS.values())
    if driver.problem:
        where = "run GPU jobs on a node with an NVIDIA driver (the profile's GPU partition)"
        return where if torch_cuda else f"{where}, with a GPU set installed ({install})"
    if torch_cuda is None:
        best = set_for_driver(driver)
        return "install a GPU set: " + (best.describe() if best else install)
    built = _major(torch_cuda)
    supported = _major(driver.cuda)
    if built is not None and supported is not None and built > supported:
        best = set_for_driver(driver)
        advice = f"install {best.describe()}" if best else "update the NVIDIA driver"
        return f"torch's CUDA {torch_cuda} is newer than the driver's CUDA {driver.cuda}: {advice}"
    return "the driver and torch's build agree: check nvidia-smi and CUDA_VISIBLE_DEVICES here"


TORCH_PROBE = (
    "import json, torch; print(json.dumps({'version': torch.__version__, "
    "'cuda': torch.version.cuda, 'available': torch.cuda.is_available()}))"
)


def probe_torch(python: str = sys.executable) -> dict:
    """torch's version, CUDA build and whether it sees a GPU, asked in a child process (so that
    this process neither imports torch nor initialises CUDA). ``error`` when torch fails."""
    result = subprocess.run(
        [python, "-c", TORCH_PROBE], capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        last = result.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": last[0]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    """``check-driver --cuda N`` (before an install) or ``check-torch`` (after one)."""
    parser = argparse.ArgumentParser(
        prog="python -m dialogclip.core.cuda_stack", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    before = sub.add_parser("check-driver", help="can this node's driver run pin set --cuda N?")
    before.add_argument("--cuda", type=int, choices=sorted(PIN_SETS), required=True)
    sub.add_parser("check-torch", help="does the installed torch see a GPU; if not, why?")
    args = parser.parse_args(argv)
    prog = "cuda_stack"
    driver = query_driver()
    if args.command == "check-driver":
        pins = PIN_SETS[args.cuda]
        problem = driver_problem(pins, driver)
        if problem:
            print(f"{prog}: {problem}", file=sys.stderr)
            return 1
        if driver.problem:
            print(
                f"{prog}: {driver.describe()}; installing the CUDA {pins.cuda} set unchecked "
                f"(needs driver >= {pins.min_driver} where the jobs run)",
                file=sys.stderr,
            )
        else:
            print(f"{prog}: {driver.describe()} runs the CUDA {pins.cuda} set", file=sys.stderr)
        return 0
    torch = probe_torch()
    if "error" in torch:
        print(f"{prog}: torch cannot be imported: {torch['error']}", file=sys.stderr)
        return 1
    build = f"torch {torch['version']} (CUDA {torch['cuda'] or 'none: a CPU build'})"
    if torch["available"]:
        print(f"{prog}: {build} sees a GPU; {driver.describe()}", file=sys.stderr)
        return 0
    advice = explain_no_cuda(torch["version"], torch["cuda"], driver)
    if driver.problem:
        # A login node without GPUs: nothing to compare yet; the jobs check again when they start.
        print(
            f"{prog}: {build}; {driver.describe()}: checked again when a GPU job starts",
            file=sys.stderr,
        )
        return 0
    print(f"{prog}: {build} sees no GPU; {driver.describe()}: {advice}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
