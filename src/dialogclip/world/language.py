"""The world's language: every text made from a scene record.

- :func:`partial_caption`: alt-text, as in CC3M: one object, some of its attributes, or the
  count, or the background; never a complete description (:func:`is_complete_caption` is false
  for every caption it writes).
- :func:`complete_captions`: COCO-style captions naming every attribute of every object and the
  background, in several word orders.
- :func:`blip2_answers`: BLIP-2's two turns: what it sees (every object, with size, colour,
  shape and position) and what makes the image unique (the count and the background).
- :func:`llava_pairs` / :func:`llava_reply`: LLaVA-1.5's three question/answer pairs, chosen
  by the scene (the count, then colour / shape / position / yes-no questions), and the free-text
  reply in the ``Q1: ... A1: ...`` format the LLaVA question asks for.
- :func:`vqa_questions`: VQA v1 questions with their answer, question type and answer type.

Together these make the split the world is built on: captions leave out most of what the
evaluation asks about (the attributes of the other objects, counts as digits, yes/no, the
question form), while the dialogues carry it.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from dialogclip.world.scenes import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
)

# The thesis' two BLIP-2 questions (METHOD.md section 3): the world's BLIP-2 answers these.
BLIP2_QUESTIONS = ("What do you see in this image?", "What makes this image unique?")
NUMBER_WORDS = {0: "no", 1: "one", 2: "two", 3: "three"}
POSITION_PHRASES = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
CAPTION_PREFIXES = ("", "", "", "a picture of ", "an image of ", "illustration of ", "photo of ")
OBJECT_KINDS = ("colour", "size", "position")  # besides the shape


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def noun(shape: str, count: int = 1) -> str:
    return shape if count == 1 else shape + "s"


def object_phrase(obj: SceneObject, kinds: Sequence[str] = OBJECT_KINDS, shape: bool = True) -> str:
    """E.g. ``a small red circle on the left`` with every kind; ``a red shape`` with colour only
    and ``shape=False``."""
    words = [obj.size] if "size" in kinds else []
    words += [obj.colour] if "colour" in kinds else []
    words.append(obj.shape if shape else "shape")
    phrase = article(" ".join(words))
    if "position" in kinds:
        phrase += " " + POSITION_PHRASES[obj.position]
    return phrase


def join_list(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def count_phrase(count: int) -> str:
    return f"{NUMBER_WORDS[count]} {noun('shape', count)}"


# --- captions ------------------------------------------------------------------------------


def partial_caption(scene: Scene, rng: random.Random) -> str:
    """Alt-text for ``scene``: one object with some of its attributes (sometimes with the count
    or the background), or only the count, or only the background; never every attribute of
    every object and the background (:func:`is_complete_caption` is false for each)."""
    kind = rng.choices(("object", "count", "background"), weights=(0.85, 0.1, 0.05))[0]
    if kind == "count":
        text = count_phrase(scene.count)
        if rng.random() < 0.5:
            text += f" on a {scene.background} background"
    elif kind == "background":
        text = f"{'a shape' if scene.count == 1 else 'shapes'} on a {scene.background} background"
    else:
        obj = rng.choice(scene.objects)
        # A lone object is never described completely: at most two of its three other kinds.
        most = len(OBJECT_KINDS) if scene.count > 1 else len(OBJECT_KINDS) - 1
        n_kinds = min(most, rng.choices((1, 2, 3), weights=(0.2, 0.3, 0.5))[0])
        kinds = rng.sample(OBJECT_KINDS, n_kinds)
        text = object_phrase(obj, kinds, shape=rng.random() < 0.9)
        extra = rng.random()
        if extra < 0.3:
            joint = ", one of them" if scene.count > 1 else ","
            text = f"{count_phrase(scene.count)}{joint} {text}"
        elif extra < 0.55:
            text += f" on a {scene.background} background"
    return rng.choice(CAPTION_PREFIXES) + text


def full_object_phrases(scene: Scene, order: Sequence[int] | None = None) -> list[str]:
    objects = scene.objects if order is None else [scene.objects[i] for i in order]
    return [object_phrase(obj) for obj in objects]


def complete_captions(scene: Scene, n: int = 5) -> list[str]:
    """``n`` different complete captions (every object's four attributes and the background):
    five framings, the objects named left to right except in the last (right to left)."""
    background = f"a {scene.background} background"
    left_to_right = join_list(full_object_phrases(scene))
    right_to_left = join_list(full_object_phrases(scene, range(scene.count - 1, -1, -1)))
    forms = [
        f"{left_to_right} on {background}",
        f"{background} with {left_to_right}",
        f"{count_phrase(scene.count)} on {background}: {left_to_right}",
        f"there is {left_to_right}, on {background}",
        f"a picture of {right_to_left} on {background}",
    ]
    return [forms[i % len(forms)] for i in range(n)]


def is_complete_caption(text: str, scene: Scene) -> bool:
    """True if ``text`` names the background and every object's size, colour, shape and
    position (as the complete captions do)."""
    if f"{scene.background} background" not in text:
        return False
    return all(
        f"{obj.size} {obj.colour} {obj.shape} {POSITION_PHRASES[obj.position]}" in text
        for obj in scene.objects
    )


# --- BLIP-2 --------------------------------------------------------------------------------


def blip2_answers(scene: Scene) -> tuple[str, str]:
    """Answers to :data:`BLIP2_QUESTIONS`: every object (size, colour, shape, position) left to
    right, then the count and the background."""
    seen = join_list(full_object_phrases(scene))
    unique = f"{count_phrase(scene.count)} on a {scene.background} background"
    return seen, unique


# --- LLaVA ---------------------------------------------------------------------------------


def reference(obj: SceneObject, scene: Scene, by: str = "position") -> str | None:
    """The shortest phrase that names ``obj`` alone in ``scene``: its shape (``circle``) when no
    other object has that shape, else its shape with its position (``by="position"``: ``circle
    on the left``, always unique) or with its colour (``by="colour"``: ``red circle``; None when
    another object has the same colour and shape)."""
    if sum(o.shape == obj.shape for o in scene.objects) == 1:
        return obj.shape
    if by == "position":
        return f"{obj.shape} {POSITION_PHRASES[obj.position]}"
    if sum((o.shape, o.colour) == (obj.shape, obj.colour) for o in scene.objects) == 1:
        return f"{obj.colour} {obj.shape}"
    return None


LLAVA_PAIRS = 3  # "three fundamental questions" (METHOD.md section 3)


def llava_pairs(scene: Scene) -> list[tuple[str, str]]:
    """Three question/answer pairs about ``scene``, chosen by its content (deterministic, and
    each readable from one place of the image): the count; the colour of the leftmost object;
    then, by the count, the lone object's shape (one), where the rightmost object is (two), or
    whether the leftmost object's shape comes in the rightmost object's colour (three)."""
    first, last = scene.objects[0], scene.objects[-1]
    pairs = [
        ("How many shapes are there?", f"{scene.count}"),
        (
            f"What color is the {first.shape} {POSITION_PHRASES[first.position]}?",
            f"{first.colour.capitalize()}.",
        ),
    ]
    if scene.count == 1:
        where = POSITION_PHRASES[first.position]
        pairs.append((f"What shape is {where}?", f"{article(first.shape).capitalize()}."))
    elif scene.count == 2:
        named = reference(last, scene, "colour")
        if named is None:  # both alike in shape and colour: ask for their number instead
            pairs.append((f"How many {noun(last.shape, 2)} are there?", "2"))
        else:
            where = POSITION_PHRASES[last.position].capitalize()
            pairs.append((f"Where is the {named}?", f"{where}."))
    else:
        exists = any((o.colour, o.shape) == (last.colour, first.shape) for o in scene.objects)
        question = f"Is there {article(last.colour + ' ' + first.shape)}?"
        pairs.append((question, "Yes." if exists else "No."))
    return pairs


def llava_reply(pairs: Sequence[tuple[str, str]]) -> str:
    """The reply in the format the LLaVA question asks for: ``Q1: ...\\nA1: ...\\nQ2: ...``."""
    lines = []
    for number, (question, answer) in enumerate(pairs, start=1):
        lines += [f"Q{number}: {question}", f"A{number}: {answer}"]
    return "\n".join(lines)


# --- VQA -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VqaQuestion:
    question: str
    answer: str  # the true answer, in VQA's form (lower case, digits)
    question_type: str  # VQA's question-type prefix, e.g. "what color is the"
    answer_type: str  # "yes/no", "number" or "other"
    kind: str  # colour | shape | count | position | yes/no (the world's own grouping)
    small: bool = False  # about a small object: harder for annotators too


def _colour_question(scene: Scene, rng: random.Random) -> VqaQuestion:
    if rng.random() < 0.2:
        return VqaQuestion(
            "What color is the background?",
            scene.background,
            "what color is the",
            "other",
            "colour",
        )
    obj = rng.choice(scene.objects)
    return VqaQuestion(
        f"What color is the {reference(obj, scene)}?",
        obj.colour,
        "what color is the",
        "other",
        "colour",
        obj.size == "small",
    )


def _shape_question(scene: Scene, rng: random.Random) -> VqaQuestion:
    obj = rng.choice(scene.objects)
    return VqaQuestion(
        f"What shape is {POSITION_PHRASES[obj.position]}?",
        obj.shape,
        "what shape is",
        "other",
        "shape",
        obj.size == "small",
    )


def _count_question(scene: Scene, rng: random.Random) -> VqaQuestion:
    if rng.random() < 0.6:
        return VqaQuestion(
            "How many shapes are there?", str(scene.count), "how many", "number", "count"
        )
    shape = rng.choice(SHAPES)
    n = sum(obj.shape == shape for obj in scene.objects)
    return VqaQuestion(
        f"How many {noun(shape, 2)} are there?", str(n), "how many", "number", "count"
    )


def _position_question(scene: Scene, rng: random.Random) -> VqaQuestion | None:
    named = [(obj, ref) for obj in scene.objects if (ref := reference(obj, scene, "colour"))]
    if not named:
        return None
    obj, ref = rng.choice(named)
    return VqaQuestion(
        f"Where is the {ref}?",
        obj.position,
        "where is the",
        "other",
        "position",
        obj.size == "small",
    )


def _yes_no_question(scene: Scene, rng: random.Random) -> VqaQuestion:
    present = {(obj.colour, obj.shape) for obj in scene.objects}
    if rng.random() < 0.5:
        colour, shape = rng.choice(sorted(present))
    else:
        absent = [(c, s) for c in sorted(COLOURS) for s in SHAPES if (c, s) not in present]
        colour, shape = rng.choice(absent)
    answer = "yes" if (colour, shape) in present else "no"
    return VqaQuestion(
        f"Is there {article(colour + ' ' + shape)}?", answer, "is there a", "yes/no", "yes/no"
    )


QUESTION_KINDS = ("colour", "shape", "count", "position", "yes/no")
_MAKERS = {
    "colour": _colour_question,
    "shape": _shape_question,
    "count": _count_question,
    "position": _position_question,
    "yes/no": _yes_no_question,
}


def vqa_questions(scene: Scene, rng: random.Random, n: int = 3) -> list[VqaQuestion]:
    """``n`` different questions of different kinds about ``scene``."""
    questions: list[VqaQuestion] = []
    for kind in rng.sample(QUESTION_KINDS, len(QUESTION_KINDS)):
        question = _MAKERS[kind](scene, rng)
        if question is not None and question.question not in {q.question for q in questions}:
            questions.append(question)
        if len(questions) == n:
            break
    return questions


# Every answer of the world (a question's plausible answers are those of its own kind).
ANSWER_POOL: tuple[str, ...] = (
    *sorted(COLOURS),
    *(bg for bg in sorted(BACKGROUNDS) if bg not in COLOURS),
    *SHAPES,
    "0",
    "1",
    "2",
    "3",
    "yes",
    "no",
    *POSITIONS,
    *SIZES,
)
N_CHOICES = 18  # as in VQA v1 multiple choice
N_PLAUSIBLE = 3
N_POPULAR = 10
_SAME_TYPE = {
    "colour": (*sorted(COLOURS), *sorted(BACKGROUNDS)),
    "shape": SHAPES,
    "count": ("0", "1", "2", "3"),
    "position": POSITIONS,
    "yes/no": ("yes", "no"),
}
# What an annotator who gets it wrong tends to answer instead (plus surface variants that the
# official normalisation maps back to the right answer: "Two", "red.", "yes ").
_CONFUSIONS = {
    "red": ("orange", "purple"),
    "orange": ("red", "yellow"),
    "yellow": ("orange", "green"),
    "green": ("yellow", "blue"),
    "blue": ("purple", "green"),
    "purple": ("blue", "red"),
    "white": ("grey",),
    "grey": ("white", "black", "gray"),
    "black": ("grey", "dark"),
    "circle": ("ball", "oval", "square"),
    "square": ("rectangle", "box", "circle"),
    "triangle": ("pyramid", "circle"),
    "left": ("middle", "left side"),
    "middle": ("center", "left", "right"),
    "right": ("middle", "right side"),
    "yes": ("no",),
    "no": ("yes",),
}
_VARIANTS = {"1": "one", "2": "two", "3": "three", "0": "none"}


def multiple_choices(
    question: VqaQuestion,
    rng: random.Random,
    humans: Sequence[str],
    popular: Sequence[str],
    answers: Sequence[str],
) -> list[str]:
    """18 candidates built as VQA v1 builds them: the annotators' most common answer (VQA's
    ``multiple_choice_answer``; the true answer too when they differ), three plausible answers
    (of the question's kind), the set's ``popular`` answers (its ten most common), then correct
    answers of random other questions (``answers``: the set's true answers); shuffled."""
    choices = [majority(humans)]
    if question.answer not in choices:
        choices.append(question.answer)
    plausible = [a for a in _SAME_TYPE[question.kind] if a not in choices]
    choices += rng.sample(plausible, min(N_PLAUSIBLE, len(plausible)))
    choices += [a for a in popular if a not in choices]
    others = sorted(set(answers) | set(ANSWER_POOL))  # the pool keeps 18 reachable
    while len(choices) < N_CHOICES:
        answer = rng.choice(answers) if rng.random() < 0.9 else rng.choice(others)
        if answer not in choices:
            choices.append(answer)
    rng.shuffle(choices)
    return choices


def popular_answers(annotations: Sequence[Sequence[str]], n: int = N_POPULAR) -> list[str]:
    """The ``n`` most common answers over every annotator of every question (after
    :func:`_plain`; the first seen of equals first)."""
    counts = Counter(_plain(answer) for answers in annotations for answer in answers)
    return [answer for answer, _ in counts.most_common(n)]


# How often an annotator gives the true answer: most questions are easy, some are not (a small
# shape, a colour between two names), so the ten answers range from unanimous to split.
AGREEMENT = (0.95, 0.9, 0.85, 0.75, 0.6, 0.45)
SMALL_PENALTY = 0.1


def human_answers(question: VqaQuestion, rng: random.Random, n: int = 10) -> list[str]:
    """Ten annotators' answers: right with a per-question probability (lower for small
    objects), sometimes in another surface form the official normalisation undoes ("Red",
    "red.", "two"), otherwise a confusion (a neighbouring colour, one more or fewer, "center")."""
    p_right = rng.choice(AGREEMENT) - (SMALL_PENALTY if question.small else 0.0)
    answers = []
    for _ in range(n):
        if rng.random() < p_right:
            answer = question.answer
            if rng.random() < 0.15:
                answer = rng.choice(
                    [answer.capitalize(), answer + ".", _VARIANTS.get(answer, answer)]
                )
        elif question.kind == "count":
            answer = str(max(0, int(question.answer) + rng.choice((-1, 1))))
        else:
            answer = rng.choice(_CONFUSIONS.get(question.answer, (question.answer,)))
        answers.append(answer)
    return answers


def _plain(answer: str) -> str:
    """Lower case, no final period, number words as digits (enough for the world's answers)."""
    answer = answer.strip().lower().rstrip(".")
    return {v: k for k, v in _VARIANTS.items()}.get(answer, answer)


def majority(answers: Sequence[str]) -> str:
    """The most frequent answer (the first of equals) after :func:`_plain`: VQA's
    ``multiple_choice_answer``, which need not be the true answer when annotators split."""
    return Counter(_plain(answer) for answer in answers).most_common(1)[0][0]


def world_texts(scenes: Sequence[Scene]) -> list[str]:
    """Every kind of text the world writes about ``scenes`` (captions of both kinds, both
    generators' dialogue, VQA questions with every answer): the world's vocabulary."""
    texts = [*BLIP2_QUESTIONS, " ".join(ANSWER_POOL), " ".join(v for v in _VARIANTS.values())]
    for scene in scenes:
        rng = random.Random(scene.index)
        texts += [partial_caption(scene, rng) for _ in range(4)]
        texts += complete_captions(scene)
        texts += blip2_answers(scene)
        texts += [f"{q} {a}" for q, a in llava_pairs(scene)]
        texts += [q.question for q in vqa_questions(scene, rng, len(QUESTION_KINDS))]
    return texts
