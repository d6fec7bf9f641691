"""Decoding the downloaded image bytes into RGB images the generators can read.

Web images come in every shape: truncated files, CMYK JPEGs, PNGs with transparency, 16-bit
grayscale, 1x1 tracking pixels, decompression bombs. :func:`decode_image` turns each into either
an RGB :class:`PIL.Image.Image` or an error message for its row; it never raises, so one bad
image cannot stop a shard. It is deterministic (same bytes, same pixels) and runs in the
background decode pool (:mod:`dialogclip.generate.decode_prefetch`).
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from dialogclip.generate.config import DecodeSettings

# Transparent pixels are shown on white (a black fill would invent dark content).
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class DecodedImage:
    """One decoded image (``image`` RGB) or the reason it could not be used (``error``)."""

    image: Image.Image | None
    error: str | None = None


def decode_image(data: bytes | None, settings: DecodeSettings) -> DecodedImage:
    """Decode encoded image bytes to an upright RGB image, downscaled per ``settings``.

    Errors (no bytes, unreadable, truncated, too small, too large) come back as
    ``DecodedImage(None, "<reason>")``.
    """
    if not data:
        return DecodedImage(None, "no image bytes")
    try:
        return DecodedImage(_decode(data, settings))
    except _RejectedImage as err:
        return DecodedImage(None, str(err))
    except Image.DecompressionBombError as err:  # beyond PIL's own hard limit
        return DecodedImage(None, f"image too large: {err}")
    # Any decoder failure (PIL raises OSError, SyntaxError, ValueError, struct.error, ...,
    # depending on the format) concerns this row only.
    except Exception as err:
        return DecodedImage(None, _describe_error(err))


class _RejectedImage(ValueError):
    pass


def _describe_error(err: Exception) -> str:
    # Messages like "cannot identify image file <_io.BytesIO object at 0x7f...>" carry a memory
    # address; without it the same bytes always give the same row (resumed == uninterrupted).
    message = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(err))
    return f"{type(err).__name__}: {message}"


def _decode(data: bytes, settings: DecodeSettings) -> Image.Image:
    with warnings.catch_warnings():
        # Our own max_pixels check below replaces PIL's bomb warning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))  # reads the header only
    width, height = image.size
    if width * height > settings.max_pixels:
        raise _RejectedImage(f"image too large: {width}x{height} > {settings.max_pixels} pixels")
    if min(width, height) < settings.min_side:
        raise _RejectedImage(f"image too small: {width}x{height} (min side {settings.min_side})")
    target = _target_size(width, height, settings.shortest_side)
    if target is not None and image.format == "JPEG":
        # Let libjpeg decode at a reduced scale (still >= target): far cheaper for huge photos.
        image.draft(image.mode, target)
    image.load()  # a truncated file fails here
    image = ImageOps.exif_transpose(image)
    image = _to_rgb(image)
    if target is not None:
        target = _target_size(image.width, image.height, settings.shortest_side)
        if target is not None:
            image = image.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
    return image


def _target_size(width: int, height: int, shortest_side: int | None) -> tuple[int, int] | None:
    """Size with the shorter side ``shortest_side`` (aspect kept), or None if already small."""
    if shortest_side is None or min(width, height) <= shortest_side:
        return None
    scale = shortest_side / min(width, height)
    return max(1, math.ceil(width * scale - 1e-6)), max(1, math.ceil(height * scale - 1e-6))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _high_bit_depth_to_rgb(image)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL knows the conversion.
    return image.convert("RGB")


def _high_bit_depth_to_rgb(image: Image.Image) -> Image.Image:
    # 16-bit PNGs open as I/I;16; convert("RGB") would clip everything above 255 to white.
    array = np.asarray(image, dtype=np.float64)
    if image.mode != "F":
        array = array / 257.0  # 0..65535 -> 0..255
    gray = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")
