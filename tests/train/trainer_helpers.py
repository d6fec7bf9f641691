"""Test-only objectives and a command line that trains them with dialogclip.train.trainer.fit.

The objectives train the text transformer of our tiny open_clip model (``tiny-clip``, context
shortened to 16 tokens) on seeded random rows: fixed "image" and "caption" embeddings and
random token sequences. They exist for the trainer's tests (resume, multi-process, NaN stop,
learning) and are not the methods' objectives (those live in the package).

Run as a script (tests start it in subprocesses, one per process for the multi-process case)::

    python trainer_helpers.py --run-dir DIR --objective third|draft [...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dialogclip.train.losses import draft_loss, gather_features, third_tower_loss
from dialogclip.train.trainer import OptimSettings, RunSettings, fit, shuffled_batches

CONTEXT = 16
EOT = 49407  # open_clip's end-of-text token: the text pooling takes the argmax token
EMBED_DIM = 32
LOGIT_SCALE = 10.0


def tiny_text_model(seed: int = 0) -> torch.nn.Module:
    """tiny-clip with only its text transformer, final norm, projection and positions trainable."""
    import open_clip

    from dialogclip.models.openclip import register_model_configs

    register_model_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model("tiny-clip", force_context_length=CONTEXT)
    for param in model.parameters():
        param.requires_grad_(False)
    for name, param in model.named_parameters():
        # The token embedding (49408 x 64) stays frozen: its optimizer state would make the
        # checkpoints ten times larger without testing anything more.
        if name.startswith(
            ("transformer.", "ln_final.", "text_projection", "positional_embedding")
        ):
            param.requires_grad_(True)
    return model


def random_tokens(n: int, generator: torch.Generator) -> torch.Tensor:
    """[n, CONTEXT] token ids: 10 random tokens, the end-of-text token, then padding zeros."""
    tokens = torch.zeros(n, CONTEXT, dtype=torch.long)
    tokens[:, 1:11] = torch.randint(1, 5000, (n, 10), generator=generator)
    tokens[:, 0] = 49406  # start of text
    tokens[:, 11] = EOT
    return tokens


class SyntheticRows:
    """``rows`` seeded rows: image_emb [D], caption_emb [D], caption_tokens and dialogue_tokens."""

    def __init__(self, rows: int, seed: int = 1) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.image = F.normalize(torch.randn(rows, EMBED_DIM, generator=generator), dim=-1)
        self.caption = F.normalize(torch.randn(rows, EMBED_DIM, generator=generator), dim=-1)
        self.caption_tokens = random_tokens(rows, generator)
        self.dialogue_tokens = random_tokens(rows, generator)

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "image_emb": self.image[index],
            "caption_emb": self.caption[index],
            "caption_tokens": self.caption_tokens[index],
            "dialogue_tokens": self.dialogue_tokens[index],
        }


class TinyObjective:
    """third: third_tower_loss(G(dialogue), I, T(caption)); draft: draft_loss with the tower
    encoding both the captions and the dialogues (two forward passes per step)."""

    def __init__(
        self,
        kind: str,
        seed: int = 0,
        nan_at: int | None = None,
        hang_at: int | None = None,
        log_batches: Path | None = None,
        noise: bool = False,
    ) -> None:
        self.kind = kind
        self.module = tiny_text_model(seed)
        self.nan_at = nan_at  # the 1-based call that returns NaN
        self.hang_at = hang_at  # the 1-based call that blocks (a run to kill at a known point)
        self.calls = 0
        # Noise drawn from the global Python, NumPy and torch generators, as augmentation or
        # dropout would: an exact resume must then restore all three.
        self.noise = noise
        self.log_batches = log_batches

    def _encode(self, tokens: torch.Tensor) -> torch.Tensor:
        features = self.module.encode_text(tokens)
        if self.noise:
            amount = 0.05 * (1 + random.random()) * (1 + float(np.random.rand()))
            features = features + amount * torch.randn_like(features)
        return F.normalize(features, dim=-1)

    def loss(
        self, batch: dict[str, torch.Tensor], gather: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        self.calls += 1
        if self.calls == self.hang_at:
            time.sleep(600)
        if self.log_batches is not None:
            with open(self.log_batches, "a") as handle:
                handle.write(json.dumps(len(batch["image_emb"])) + "\n")
        image = gather(batch["image_emb"])
        dialogue = gather(self._encode(batch["dialogue_tokens"]))
        if self.kind == "third":
            loss = third_tower_loss(dialogue, image, gather(batch["caption_emb"]), LOGIT_SCALE)
            parts: dict[str, float] = {}
        else:
            caption = gather(self._encode(batch["caption_tokens"]))
            loss, tensors = draft_loss(image, caption, dialogue, LOGIT_SCALE, 0.5, 1.0)
            parts = {name: float(value) for name, value in tensors.items()}
        if self.calls == self.nan_at:
            loss = loss * float("nan")
        return loss, parts

    def export_state(self) -> dict[str, torch.Tensor]:
        return {name: p for name, p in self.module.named_parameters() if p.requires_grad}


def gather_check(report: Path) -> None:
    """All-gather rows of uneven per-process sizes; write what each process saw to ``report``."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    local = torch.arange(3 + rank, dtype=torch.float32)[:, None] * torch.ones(1, 2) + 10 * rank
    local.requires_grad_(True)
    gathered = gather_features(local, accelerator)
    weights = torch.arange(1, 1 + gathered.numel(), dtype=torch.float32).view_as(gathered)
    (gathered * weights).sum().backward()
    report.write_text(
        json.dumps({"gathered": gathered.tolist(), "grad": local.grad.tolist(), "rank": rank})
    )


def launch(
    run_dir: Path, args: list[str], env: dict[str, str] | None = None, log_name: str = "log"
) -> subprocess.Popen:
    """Start this script in a subprocess (stdout+stderr to ``run_dir/<log_name>.txt``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    src = str(Path(__file__).resolve().parents[2] / "src")
    full_env["PYTHONPATH"] = os.pathsep.join(
        [src, *[p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    )
    with open(run_dir / f"{log_name}.txt", "w") as log:  # the child keeps its own handle
        return subprocess.Popen(
            [sys.executable, __file__, "--run-dir", str(run_dir), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )


@contextlib.contextmanager
def reaped(processes: list[subprocess.Popen]) -> Iterator[list[subprocess.Popen]]:
    """Kill (by pid) those of ``processes`` still running when the block ends, e.g. on a
    failed assertion, so that no test leaves a hung training process behind."""
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--run-dir", type=Path, required=True, help="one sub-directory per objective"
    )
    parser.add_argument("--objective", choices=["third", "draft"], nargs="+", default=["third"])
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=2)
    parser.add_argument("--hang-at", type=int, default=None, help="call of the last objective")
    parser.add_argument("--gather-report", type=Path, default=None)
    parser.add_argument("--noise", action="store_true", help="random noise on the features")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)  # the same arithmetic in every run, however loaded the machine
    if args.gather_report is not None:
        gather_check(args.gather_report)
    rank = int(os.environ.get("RANK", "0"))
    for kind in args.objective:
        run_dir = args.run_dir / kind
        objective = TinyObjective(
            kind,
            hang_at=args.hang_at if kind == args.objective[-1] else None,
            log_batches=args.run_dir / f"{kind}-rank{rank}-batches.jsonl",
            noise=args.noise,
        )
        optim = OptimSettings(
            lr=args.lr,
            weight_decay=0.1,
            batch_size=args.batch_size,
            epochs=args.epochs,
            warmup_steps=args.warmup,
            grad_clip=1.0,
            seed=7,
        )
        run = RunSettings(checkpoint_every=args.checkpoint_every, progress=False)
        config = {"objective": kind, "rows": args.rows}
        plan = shuffled_batches(args.rows, args.batch_size, optim.seed)
        fit(objective, SyntheticRows(args.rows), plan, optim, run, run_dir, config)


if __name__ == "__main__":
    main()
