"""Checking what a text says against a scene record: are the attributes it states true?

The world's texts (captions, BLIP-2 answers, LLaVA pairs) are read into *claims*, each stating
one or more attributes:

- an object phrase (``a small red circle on the left``, ``a red shape``) states each attribute
  it names (size, colour, shape, position); it is matched to the scene object that agrees with
  it on the most attributes (each object matched at most once per text), and each attribute it
  shares with that object is true;
- a count (``two shapes``; the answer to ``How many shapes are there?``) and a background
  (``on a black background``) state one attribute each;
- a LLaVA answer states one attribute about the object its question names (``What color is the
  circle on the left? Red.``: the colour of that object; ``Where is the red circle? On the
  left.``; ``What shape is in the middle? A circle.``), or the truth of a yes/no question, or a
  count. A question naming no object of the scene makes its answer false.

:func:`check_text` and :func:`check_pairs` return how many stated attributes are true of the
scene and how many were stated; a text the reader finds nothing in states nothing (the
grounding rate is over stated attributes, the reply counts say how many replies stated none).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dialogclip.core.io import InputFileError, read_parquet
from dialogclip.world.scenes import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
)

_NUMBERS = {"no": 0, "zero": 0, "none": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
_POSITION_WORDS = {
    "on the left": "left",
    "in the middle": "middle",
    "on the right": "right",
    "left": "left",
    "middle": "middle",
    "center": "middle",
    "right": "right",
}
_alt = "|".join
_OBJECT = re.compile(
    rf"\b(?:(?P<number>{_alt(_NUMBERS)})\s+|an?\s+|the\s+)?"
    rf"(?:(?P<size>{_alt(SIZES)})\s+)?(?:(?P<colour>{_alt(COLOURS)})\s+)?"
    rf"(?P<noun>{_alt(SHAPES)}|shape)(?P<plural>s)?\b"
    rf"(?:\s+(?P<position>on the left|in the middle|on the right))?",
    re.IGNORECASE,
)
_BACKGROUND = re.compile(rf"\b(?P<background>{_alt(BACKGROUNDS)})\s+background\b", re.IGNORECASE)


@dataclass(frozen=True)
class Claim:
    """What one phrase states: attribute -> value, about ``about``."""

    about: str  # "object", "count", "background", "answer"
    attributes: dict[str, str] = field(default_factory=dict)
    text: str = ""


@dataclass
class Check:
    """Stated and true attributes over some texts (add with ``+=``)."""

    stated: int = 0
    true: int = 0
    texts: int = 0
    texts_stating_nothing: int = 0

    def __iadd__(self, other: Check) -> Check:
        self.stated += other.stated
        self.true += other.true
        self.texts += other.texts
        self.texts_stating_nothing += other.texts_stating_nothing
        return self

    @property
    def rate(self) -> float:
        """Share of stated attributes that are true (NaN when nothing was stated)."""
        return self.true / self.stated if self.stated else float("nan")

    def as_dict(self) -> dict[str, float | int]:
        return {
            "stated": self.stated,
            "true": self.true,
            "rate": round(self.rate, 4) if self.stated else None,
            "texts": self.texts,
            "texts_stating_nothing": self.texts_stating_nothing,
        }


def claims_in_text(text: str) -> list[Claim]:
    """The object, count and background claims of a description."""
    claims = []
    for match in _OBJECT.finditer(text):
        parts = {k: v.lower() for k, v in match.groupdict().items() if v}
        number = parts.pop("number", None)
        noun = parts.pop("noun")
        plural = parts.pop("plural", None)
        if noun == "shape" and plural and number is not None and not parts:
            claims.append(Claim("count", {"count": str(_NUMBERS[number])}, match.group(0)))
            continue
        if noun == "shape" and number == "one" and not parts:
            claims.append(Claim("count", {"count": "1"}, match.group(0)))
            continue
        attributes = {key: parts[key] for key in ("size", "colour") if key in parts}
        if noun != "shape":
            attributes["shape"] = noun
        if "position" in parts:
            attributes["position"] = _POSITION_WORDS[parts["position"]]
        if attributes:
            claims.append(Claim("object", attributes, match.group(0)))
    for match in _BACKGROUND.finditer(text):
        claims.append(Claim("background", {"background": match.group("background").lower()}))
    return claims


def _matches(obj: SceneObject, attributes: dict[str, str]) -> int:
    return sum(getattr(obj, key) == value for key, value in attributes.items())


def _score_claims(claims: Sequence[Claim], scene: Scene) -> tuple[int, int]:
    """(true, stated) attributes of ``claims`` in ``scene``; object claims matched one-to-one."""
    stated = true = 0
    free = list(scene.objects)
    for claim in claims:
        stated += len(claim.attributes)
        if claim.about == "object":
            if not free:
                continue
            best = max(free, key=lambda obj: _matches(obj, claim.attributes))
            true += _matches(best, claim.attributes)
            free.remove(best)
        elif claim.about == "count":
            true += int(claim.attributes["count"]) == scene.count
        elif claim.about == "background":
            true += claim.attributes["background"] == scene.background
    return true, stated


def check_text(text: str, scene: Scene) -> Check:
    """Stated and true attributes of a description (caption, BLIP-2 answer)."""
    true, stated = _score_claims(claims_in_text(text), scene)
    return Check(stated, true, 1, int(stated == 0))


def is_true_of(text: str, scene: Scene) -> bool:
    """True if the description states something and all of it holds in ``scene``."""
    check = check_text(text, scene)
    return check.stated > 0 and check.true == check.stated


# --- LLaVA pairs --------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+")


def _resolve(reference: str, scene: Scene) -> list[SceneObject]:
    """The scene objects a question's noun phrase (``circle on the left``, ``red square``,
    ``blue one``) fits."""
    claims = [c for c in claims_in_text(reference) if c.about == "object"]
    if not claims:
        colour = _first(set(_WORD.findall(reference.lower())), list(COLOURS))
        return [] if colour is None else [o for o in scene.objects if o.colour == colour]
    wanted = claims[0].attributes
    return [o for o in scene.objects if _matches(o, wanted) == len(wanted)]


def _first(words: set[str], vocabulary: Sequence[str]) -> str | None:
    return next((v for v in vocabulary if v in words), None)


def _number(text: str) -> int | None:
    for word in _WORD.findall(text.lower()):
        if word.isdigit():
            return int(word)
        if word in _NUMBERS:
            return _NUMBERS[word]
    return None


def check_pair(question: str, answer: str, scene: Scene) -> Check:
    """Stated and true attributes of one question/answer pair (see the module docstring)."""
    q = question.strip().lower().rstrip("?")
    words = set(_WORD.findall(answer.lower()))
    if q.startswith("how many"):
        n = _number(answer)
        if n is None:
            return Check(0, 0, 1, 1)
        counted = q.removeprefix("how many").split(" are")[0].strip()
        shape = next((s for s in SHAPES if counted.startswith(s)), None)
        truth = sum(o.shape == shape for o in scene.objects) if shape else scene.count
        return Check(1, int(n == truth), 1, 0)
    if q.startswith("is there"):
        said = "yes" if "yes" in words else "no" if "no" in words else None
        if said is None:
            return Check(0, 0, 1, 1)
        wanted = claims_in_text(q.removeprefix("is there"))
        exists = bool(wanted) and all(
            any(_matches(o, c.attributes) == len(c.attributes) for o in scene.objects)
            for c in wanted
        )
        return Check(1, int((said == "yes") == exists), 1, 0)
    if q.startswith("what color is the"):
        reference = q.removeprefix("what color is the").strip()
        colour = _first(words, [*COLOURS, *BACKGROUNDS])
        if colour is None:
            return Check(0, 0, 1, 1)
        if reference == "background":
            return Check(1, int(colour == scene.background), 1, 0)
        objects = _resolve(reference, scene)
        return Check(1, int(any(o.colour == colour for o in objects)), 1, 0)
    if q.startswith("where is the"):
        position = _first(words, [*POSITIONS, "center"])
        if position is None:
            return Check(0, 0, 1, 1)
        position = _POSITION_WORDS[position]
        objects = _resolve(q.removeprefix("where is the"), scene)
        return Check(1, int(any(o.position == position for o in objects)), 1, 0)
    if q.startswith("what shape is"):
        shape = _first(words, SHAPES)
        if shape is None:
            return Check(0, 0, 1, 1)
        place = q.removeprefix("what shape is").strip()
        position = next((p for phrase, p in _POSITION_WORDS.items() if phrase in place), None)
        objects = [o for o in scene.objects if position is None or o.position == position]
        return Check(1, int(any(o.shape == shape for o in objects)), 1, 0)
    # Any other question: its answer is read as a description.
    check = check_text(answer, scene)
    return Check(check.stated, check.true, 1, check.texts_stating_nothing)


def check_pairs(questions: Sequence[str], answers: Sequence[str], scene: Scene) -> Check:
    """Stated and true attributes over the pairs of one reply (counted as one text)."""
    total = Check()
    for question, answer in zip(questions, answers, strict=True):
        total += check_pair(question, answer, scene)
    return Check(total.stated, total.true, 1, int(total.stated == 0))


# --- the dialogue shards of a pipeline run ---------------------------------------------------

PARSE_OK = "ok"  # the dialogue shards' parse_status of a reply read completely
DIALOGUE_COLUMNS = ("key", "status", "questions", "answers", "parse_status")


def check_dialogue_shards(
    generator: str, shards: Sequence[str | os.PathLike[str]], records: str | os.PathLike[str]
) -> dict[str, Any]:
    """Grounding of one generator's dialogue shards against the CC3M scene records.

    BLIP-2: each turn's answer is a description (:func:`check_text`); LLaVA: the parsed pairs
    (:func:`check_pairs`), and the share of replies the free-text parser read as three pairs.
    Rows whose image the world stored in grey (``encoding`` png-grey) are left out: their
    colours are not visible. A key without a scene record is an error naming the files.
    """
    scenes = {}
    grey = set()
    for line_number, record in enumerate(_read_lines(records), start=1):
        if "key" not in record:
            raise InputFileError(
                records, f"{records}:{line_number}: a scene record without its TSV key"
            )
        scenes[record["key"]] = Scene.from_record(record)
        if record.get("encoding") == "png-grey":
            grey.add(record["key"])
    total = Check()
    per_turn: list[Check] = []
    replies = parsed = 0
    for shard in shards:
        table = read_parquet(shard, DIALOGUE_COLUMNS, what="dialogue shard").to_pylist()
        for row in table:
            if row["status"] != "success" or row["key"] in grey:
                continue
            scene = scenes.get(row["key"])
            if scene is None:
                raise InputFileError(
                    records,
                    f"key {row['key']} of {shard} has no scene record in {records}: the "
                    "dialogue belongs to another world (write the world and rerun the pipeline)",
                )
            replies += 1
            parsed += row["parse_status"] == PARSE_OK
            if generator == "blip2":
                for turn, answer in enumerate(row["answers"]):
                    check = check_text(answer, scene)
                    while len(per_turn) <= turn:
                        per_turn.append(Check())
                    per_turn[turn] += check
                    total += check
            else:
                total += check_pairs(row["questions"], row["answers"], scene)
    return {
        "generator": generator,
        "replies": replies,
        "parse_ok_rate": round(parsed / replies, 4) if replies else None,
        "grounding": total.as_dict(),
        "per_turn": [check.as_dict() for check in per_turn],
    }


def _read_lines(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)
