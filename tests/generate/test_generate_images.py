"""Image decoding: every awkward input gives an RGB image or a row error, never an exception."""

from __future__ import annotations

import numpy as np
import pytest
from generate_helpers import bad_images, encode, jpeg_bytes, noise_image
from PIL import Image

from dialogclip.generate.config import DecodeSettings
from dialogclip.generate.images import decode_image

SETTINGS = DecodeSettings()
ERRORS = {
    "truncated": "truncated",
    "truncated_late": "truncated",
    "one_pixel": "too small",
    "huge_header": "too large",
    "not_an_image": "cannot identify",
    "empty": "no image bytes",
}


@pytest.mark.parametrize("case", sorted(bad_images()))
def test_awkward_inputs_never_raise(case: str) -> None:
    decoded = decode_image(bad_images()[case], SETTINGS)
    if case in ERRORS:
        assert decoded.image is None
        assert ERRORS[case] in decoded.error.lower()
    else:
        assert decoded.error is None
        assert decoded.image.mode == "RGB"
        assert min(decoded.image.size) >= SETTINGS.min_side


def test_none_bytes_is_an_error() -> None:
    assert decode_image(None, SETTINGS).error == "no image bytes"


def test_transparent_pixels_become_white() -> None:
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red where opaque
    rgba[:10, :, 3] = 255  # top half opaque, bottom half fully transparent
    decoded = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), SETTINGS).image
    pixels = np.asarray(decoded)
    assert (pixels[:10] == [200, 0, 0]).all()
    assert (pixels[10:] == [255, 255, 255]).all()


def test_cmyk_and_grayscale_convert_as_pil_does() -> None:
    cmyk = noise_image(2, mode="CMYK")
    decoded = decode_image(encode(cmyk, "TIFF"), SETTINGS).image  # lossless: exact comparison
    assert np.array_equal(np.asarray(decoded), np.asarray(cmyk.convert("RGB")))
    gray = noise_image(4, mode="L")
    decoded = decode_image(encode(gray, "PNG"), SETTINGS).image
    assert np.array_equal(np.asarray(decoded)[..., 0], np.asarray(gray))


def test_sixteen_bit_grayscale_keeps_its_range() -> None:
    values = np.array([[0, 257 * 100, 65535] * 4] * 12, dtype=np.uint16)
    decoded = decode_image(encode(Image.fromarray(values), "PNG"), SETTINGS).image
    row = np.asarray(decoded)[0, :3, 0]
    assert row.tolist() == [0, 100, 255]  # not clipped to white by a naive convert("RGB")


def test_large_images_are_downscaled_to_the_shortest_side() -> None:
    decoded = decode_image(jpeg_bytes(0, size=(2400, 1800)), SETTINGS).image
    assert decoded.size == (683, 512)
    small = decode_image(jpeg_bytes(0, size=(300, 200)), SETTINGS).image
    assert small.size == (300, 200)  # never upscaled


def test_pixel_limit_is_configurable() -> None:
    strict = DecodeSettings(max_pixels=1000)
    assert "too large" in decode_image(jpeg_bytes(0, size=(48, 40)), strict).error


def test_exif_orientation_is_applied() -> None:
    image = noise_image(9, size=(60, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the upright image is 30 x 60
    decoded = decode_image(encode(image, "JPEG", exif=exif), SETTINGS).image
    assert decoded.size == (30, 60)


def test_error_messages_are_reproducible() -> None:
    error = decode_image(b"<html>404</html>", SETTINGS).error
    assert error == "UnidentifiedImageError: cannot identify image file"
    assert decode_image(b"<html>404</html>", SETTINGS).error == error


def test_decoding_is_deterministic() -> None:
    data = bad_images()["large"]
    first, second = decode_image(data, SETTINGS).image, decode_image(data, SETTINGS).image
    assert np.array_equal(np.asarray(first), np.asarray(second))
