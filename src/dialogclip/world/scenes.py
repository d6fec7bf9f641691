"""Scenes of the miniature world: what is drawn, how it is drawn, and its JSON-lines record.

A scene is a 64 px square picture of one to three flat shapes on a plain background. Each shape
has a ``shape`` (circle, square, triangle), a ``colour`` (six hues), a ``size`` (small, large)
and a ``position``, the column it stands in (left, middle, right; one shape per column, so
"the shape on the left" always names one shape). The vertical place and a small horizontal
jitter vary but carry no name.

Everything is seeded per scene: scene ``index`` of split ``split`` under world seed ``seed`` is
drawn from its own random stream (:func:`scene_rng`), so a scene does not depend on how many
scenes are drawn before or after it, and a rebuild gives the same scenes and the same pixels.
"""

from __future__ import annotations

import json
import os
import random
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from PIL import Image, ImageDraw

from dialogclip.core.io import atomic_path

IMAGE_SIZE = 64  # pixels, square
SUPERSAMPLE = 4  # drawn 4x larger, then downscaled: smooth edges as in a photographed shape

# Hues are named as a person would name them; each colour is drawn with a small per-scene jitter
# so that a model learns the colour category rather than one RGB triple.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (238, 205, 40),
    "purple": (140, 60, 180),
    "orange": (245, 135, 25),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (246, 246, 246),
    "grey": (150, 150, 150),
    "black": (28, 28, 28),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("left", "middle", "right")
# Extent (width = height) of a shape in pixels, by size, and the centre of each column.
EXTENT = {"small": (11, 13), "large": (19, 21)}
COLUMN_CENTRE = {"left": 12, "middle": 32, "right": 52}
COLOUR_JITTER = 12  # +- per channel
MAX_OBJECTS = 3


@dataclass(frozen=True)
class SceneObject:
    """One shape: its four named attributes and where it is drawn (pixels, image coordinates)."""

    shape: str
    colour: str
    size: str
    position: str  # the column: left, middle or right
    x: int  # centre
    y: int
    extent: int  # width = height


@dataclass(frozen=True)
class Scene:
    """One picture: background and shapes (ordered left to right)."""

    scene_id: str  # "<split>-<index:06d>"
    split: str
    index: int
    seed: int  # the world seed
    background: str
    objects: tuple[SceneObject, ...]

    @property
    def count(self) -> int:
        return len(self.objects)

    def to_record(self) -> dict:
        """The JSON-lines record of the scene (the ground truth every checker reads)."""
        record = asdict(self)
        record["objects"] = [asdict(obj) for obj in self.objects]
        return record

    @classmethod
    def from_record(cls, record: dict) -> Scene:
        """The scene of a record; keys a file adds beside the scene (``key``, ``image``, ...)
        are ignored."""
        objects = tuple(SceneObject(**obj) for obj in record["objects"])
        names = {f.name for f in fields(cls)} - {"objects"}
        return cls(objects=objects, **{name: record[name] for name in names})


def scene_rng(seed: int, split: str, index: int, stream: str = "scene") -> random.Random:
    """The random stream of one scene (and one purpose: ``scene``, ``caption``, ...)."""
    return random.Random(zlib.crc32(f"{seed}/{split}/{index}/{stream}".encode()))


def draw_scene(seed: int, split: str, index: int) -> Scene:
    """Scene ``index`` of ``split`` under world seed ``seed`` (see the module docstring)."""
    rng = scene_rng(seed, split, index)
    count = rng.randint(1, MAX_OBJECTS)
    columns = sorted(rng.sample(POSITIONS, count), key=POSITIONS.index)
    objects = []
    for position in columns:
        size = rng.choice(SIZES)
        extent = rng.randint(*EXTENT[size])
        half = extent // 2
        x = COLUMN_CENTRE[position] + rng.randint(-1, 1)
        y = rng.randint(half + 4, IMAGE_SIZE - half - 5)
        objects.append(
            SceneObject(
                shape=rng.choice(SHAPES),
                colour=rng.choice(sorted(COLOURS)),
                size=size,
                position=position,
                x=x,
                y=y,
                extent=extent,
            )
        )
    return Scene(
        scene_id=f"{split}-{index:06d}",
        split=split,
        index=index,
        seed=seed,
        background=rng.choice(sorted(BACKGROUNDS)),
        objects=tuple(objects),
    )


def draw_scenes(seed: int, split: str, n: int, start: int = 0) -> list[Scene]:
    """Scenes ``start .. start + n - 1`` of ``split``."""
    return [draw_scene(seed, split, index) for index in range(start, start + n)]


def _jittered(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    return tuple(  # type: ignore[return-value]
        min(255, max(0, c + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for c in rgb
    )


def render(scene: Scene) -> Image.Image:
    """The scene as a 64 x 64 RGB image (deterministic: its own random stream for jitter)."""
    rng = scene_rng(scene.seed, scene.split, scene.index, "pixels")
    big = IMAGE_SIZE * SUPERSAMPLE
    image = Image.new("RGB", (big, big), _jittered(BACKGROUNDS[scene.background], rng))
    pen = ImageDraw.Draw(image)
    for obj in scene.objects:
        fill = _jittered(COLOURS[obj.colour], rng)
        half = obj.extent * SUPERSAMPLE / 2
        cx, cy = obj.x * SUPERSAMPLE, obj.y * SUPERSAMPLE
        box = (cx - half, cy - half, cx + half, cy + half)
        if obj.shape == "circle":
            pen.ellipse(box, fill=fill)
        elif obj.shape == "square":
            pen.rectangle(box, fill=fill)
        else:  # an upright triangle filling its box
            pen.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill)
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)


def write_records(scenes: Iterable[Scene], path: str | os.PathLike[str]) -> Path:
    """Write one JSON record per line (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for scene in scenes:
            handle.write(json.dumps(scene.to_record(), sort_keys=True) + "\n")
    return path


def read_records(path: str | os.PathLike[str]) -> Iterator[Scene]:
    """The scenes of a JSON-lines file written by :func:`write_records`."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield Scene.from_record(json.loads(line))
            except (json.JSONDecodeError, TypeError, KeyError) as err:
                raise ValueError(f"{path}:{number}: not a scene record ({err})") from err
