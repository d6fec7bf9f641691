"""Decoding stored image bytes (the ingested shards' JPEGs, evaluation images) to RGB."""

from __future__ import annotations

import io
from typing import Any


class ImageDecodeError(ValueError):
    """Image bytes that are missing or cannot be decoded; the message says why, in one line."""


def decode_rgb(data: bytes | None) -> Any:
    """The RGB ``PIL.Image.Image`` encoded in ``data`` (JPEG, PNG or any format PIL reads).

    Raises :class:`ImageDecodeError` with ``"no image bytes"`` for empty data, else with PIL's
    reason as ``"<ExceptionType>: <message>"`` (truncated file, unknown format, decompression
    bomb); callers add which image it was. Alpha is dropped by PIL's plain ``convert("RGB")``:
    the generators' robust decoding (``dialogclip.generate.images``) is a different, richer one.
    """
    from PIL import Image

    if not data:
        raise ImageDecodeError("no image bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(f"{type(err).__name__}: {err}") from err
