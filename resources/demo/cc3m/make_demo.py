"""Generate the demo's CC3M-format TSV and its synthetic images (run once; outputs are in git).

    .venv/bin/python resources/demo/cc3m/make_demo.py

Writes ``demo.tsv`` (caption TAB url, no header, like Train_GCC-training.tsv) and ``images/``
next to this script. Good rows point at small synthetic images (coloured shapes whose caption
says what is drawn) through relative ``file:`` URLs, which the demo config allows; among them
sit the cases a real crawl meets: dead links, broken and truncated files, a disallowed URL
scheme, and malformed TSV lines (wrong column count, empty fields, invalid UTF-8). Everything
is seeded, so rerunning reproduces the same bytes.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
N_GOOD = 60
SEED = 20240501

COLOURS = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 119, 180),
    "yellow": (240, 200, 30),
    "purple": (148, 103, 189),
    "orange": (255, 127, 14),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
}
BACKGROUNDS = {
    "white": (250, 250, 250),
    "light grey": (200, 200, 200),
    "light blue": (190, 220, 245),
    "pale yellow": (250, 240, 190),
    "dark": (40, 40, 50),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ((128, 96), (96, 128), (112, 112), (160, 120))
NUMBER_WORDS = {1: "a", 2: "two", 3: "three"}

# Rows that are not plain good images, by row position (0-based; line = position + 1).
# Shards are 32 rows in the demo config, so every shard meets some of them.
SPECIAL_ROWS: dict[int, bytes] = {
    3: b"a picture that no longer exists\tfile:images/missing-0001.jpg\n",
    9: b"a caption without its url\n",  # one column
    14: b"a web page served instead of a picture\tfile:images/broken-not-an-image.jpg\n",
    21: b"\tfile:images/0000.jpg\n",  # empty caption
    37: b"a photo that stops halfway\tfile:images/broken-truncated.jpg\n",
    42: "a caf\u00e9 table in the sun\tfile:images/0001.jpg\n".encode("latin-1"),  # not UTF-8
    50: b"an image on an ftp server\tftp://example.invalid/image.jpg\n",
    55: b"too\tmany\tcolumns\n",
    64: b"a caption whose url is empty\t\n",
    66: b"another vanished picture\tfile:images/missing-0002.jpg\n",
}


def draw_image(rng: random.Random) -> tuple[Image.Image, str]:
    """One synthetic image and its caption, e.g. 'two red circles on a light blue background'."""
    width, height = rng.choice(SIZES)
    background = rng.choice(sorted(BACKGROUNDS))
    colour = rng.choice([c for c in sorted(COLOURS) if c != background])
    shape = rng.choice(SHAPES)
    count = rng.choice((1, 1, 2, 3))
    image = Image.new("RGB", (width, height), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        size = rng.randint(min(width, height) // 5, min(width, height) // 2)
        x, y = rng.randint(0, width - size), rng.randint(0, height - size)
        box = (x, y, x + size, y + size)
        if shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.polygon([(x + size // 2, y), (x, y + size), (x + size, y + size)], COLOURS[colour])
    noun = shape if count == 1 else shape + "s"
    caption = f"{NUMBER_WORDS[count]} {colour} {noun} on a {background} background"
    return image, caption


def encode(image: Image.Image, number: int) -> tuple[str, bytes]:
    """File name and bytes; a few images use other formats and modes img2dataset must handle."""
    buffer = io.BytesIO()
    if number == 5:  # grayscale PNG: stored as RGB by the ingestion
        image.convert("L").save(buffer, "PNG")
        return f"{number:04d}.png", buffer.getvalue()
    if number == 11:  # PNG with an alpha channel: matted onto white
        rgba = image.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(image.size))
        rgba.save(buffer, "PNG")
        return f"{number:04d}.png", buffer.getvalue()
    if number == 17:  # WebP
        image.save(buffer, "WEBP", quality=80)
        return f"{number:04d}.webp", buffer.getvalue()
    if number == 23:  # larger than image_size (336): downscaled to a 336 px shortest side
        image.resize((640, 480)).save(buffer, "JPEG", quality=70)
        return f"{number:04d}.jpg", buffer.getvalue()
    image.save(buffer, "JPEG", quality=85)
    return f"{number:04d}.jpg", buffer.getvalue()


def main() -> None:
    rng = random.Random(SEED)
    images = HERE / "images"
    images.mkdir(exist_ok=True)
    for stale in images.iterdir():
        stale.unlink()
    good_lines = []
    first_jpeg = b""
    for number in range(N_GOOD):
        image, caption = draw_image(rng)
        name, data = encode(image, number)
        (images / name).write_bytes(data)
        first_jpeg = first_jpeg or data
        good_lines.append(f"{caption}\tfile:images/{name}\n".encode())
    (images / "broken-not-an-image.jpg").write_bytes(b"<html><body>Not found</body></html>\n")
    (images / "broken-truncated.jpg").write_bytes(first_jpeg[: len(first_jpeg) // 2])

    n_rows = N_GOOD + len(SPECIAL_ROWS)
    good = iter(good_lines)
    lines = [SPECIAL_ROWS[i] if i in SPECIAL_ROWS else next(good) for i in range(n_rows)]
    (HERE / "demo.tsv").write_bytes(b"".join(lines))


if __name__ == "__main__":
    main()
