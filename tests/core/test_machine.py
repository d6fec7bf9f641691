"""The cross-cutting helpers of dialogclip.core: machine flags, torch threads and device,
package versions, image decoding. Each has one behaviour, tested here once."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dialogclip.cli import build_parser
from dialogclip.core.images import ImageDecodeError, decode_rgb
from dialogclip.core.machine import (
    add_machine_arguments,
    apply_machine_arguments,
    set_torch_threads,
    torch_device,
)
from dialogclip.core.versions import package_versions


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_machine_arguments_defaults_and_values() -> None:
    parser = argparse.ArgumentParser()
    group = add_machine_arguments(parser, batch_size=64)
    group.add_argument("--num-workers", type=int, default=0)
    defaults = parser.parse_args([])
    assert (defaults.threads, defaults.batch_size, defaults.weights_dir) == (None, 64, None)
    given = parser.parse_args(["--threads", "3", "--batch-size", "8", "--weights-dir", "w"])
    assert (given.threads, given.batch_size, given.weights_dir) == (3, 8, Path("w"))
    assert parser.parse_args(["--num-workers", "2"]).num_workers == 2


def test_machine_arguments_leave_out_what_a_command_lacks() -> None:
    parser = argparse.ArgumentParser()
    add_machine_arguments(parser, weights_dir=False)
    assert vars(parser.parse_args([])) == {"threads": None}
    with pytest.raises(SystemExit):
        parser.parse_args(["--batch-size", "8"])


@pytest.mark.parametrize(
    ("command", "defaults"),
    [
        # The rules pass these flags: their names and defaults must not change.
        (["embed-images", "--output", "o"],
         {"threads": None, "batch_size": 64, "weights_dir": None}),
        (["eval-retrieval", "--image-emb", "e", "--output", "o"], {"batch_size": 64}),
        (["dialogue-quality", "--generator", "g", "--dialogue", "d", "--ingested", "i",
          "--output", "o", "--per-image", "p"], {"batch_size": 64, "threads": None}),
        (["embed-train-images", "--shard", "s", "--output", "o"],
         {"batch_size": 256, "device": "auto", "threads": None, "weights_dir": None}),
        (["train", "--rows", "r", "--image-emb", "e", "--run-dir", "d", "--final", "f",
          "--metrics", "m"],
         {"threads": None, "weights_dir": None, "num_workers": 0, "checkpoint_every": 500,
          "processes": 1}),
        (["generate-dialogue", "--generator", "blip2", "--shard", "s", "--output", "o",
          "--stats", "t"], {"threads": None, "shards_per_engine": 1}),
    ],
)  # fmt: skip
def test_stage_commands_keep_their_machine_flags(command: list[str], defaults: dict) -> None:
    args = build_parser().parse_args(command)
    assert {name: getattr(args, name) for name in defaults} == defaults
    assert build_parser().parse_args([*command, "--threads", "2"]).threads == 2


def test_apply_machine_arguments_sets_torch_threads() -> None:
    before = torch.get_num_threads()
    try:
        apply_machine_arguments(argparse.Namespace(threads=1))
        assert torch.get_num_threads() == 1
        set_torch_threads(2)
        assert torch.get_num_threads() == 2
        set_torch_threads(None)  # no flag: torch keeps what it has
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_torch_device_auto_follows_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch_device("auto") == torch.device("cuda")
    assert torch_device("cuda:1") == torch.device("cuda", 1)  # an explicit device is kept
    assert torch_device(torch.device("cpu")) == torch.device("cpu")


def test_package_versions_missing_is_none() -> None:
    from importlib import metadata

    versions = package_versions(["pyarrow", "no-such-package-dialogclip", "numpy"])
    assert list(versions) == ["pyarrow", "no-such-package-dialogclip", "numpy"]
    assert versions["pyarrow"] == metadata.version("pyarrow")
    assert versions["numpy"] == np.__version__
    assert versions["no-such-package-dialogclip"] is None


def test_decode_rgb_png_with_alpha_and_grayscale_jpeg() -> None:
    rgba = np.zeros((5, 7, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    decoded = decode_rgb(_encoded(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert decoded.mode == "RGB" and decoded.size == (7, 5)
    assert decoded.getpixel((0, 0)) == (200, 0, 0)
    gray = decode_rgb(_encoded(Image.new("L", (4, 3), 90), "JPEG"))
    assert gray.mode == "RGB" and gray.size == (4, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "no image bytes"),
        (b"", "no image bytes"),
        (b"<html>404</html>", "UnidentifiedImageError: cannot identify image file"),
    ],
)
def test_decode_rgb_errors_say_why(data: bytes | None, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=f"^{message}"):
        decode_rgb(data)


def test_decode_rgb_truncated_jpeg() -> None:
    data = _encoded(Image.new("RGB", (64, 64), (10, 20, 30)), "JPEG")
    with pytest.raises(ImageDecodeError, match=r"^OSError: (?i:.*truncated)"):
        decode_rgb(data[: len(data) // 2])
