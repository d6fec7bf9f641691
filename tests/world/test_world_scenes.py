"""The world's scenes and language: seeded, deterministic, and split as the evaluation needs."""

from __future__ import annotations

import hashlib

import pytest

from dialogclip.core.prompts import clean_blip2_answer
from dialogclip.generate.parsing import PARSE_OK, parse_qa_pairs
from dialogclip.world import language
from dialogclip.world.grounding import check_pairs, check_text
from dialogclip.world.scenes import (
    IMAGE_SIZE,
    POSITIONS,
    Scene,
    draw_scene,
    draw_scenes,
    read_records,
    render,
    scene_rng,
    write_records,
)


def _pixels(scene: Scene) -> str:
    return hashlib.sha256(render(scene).tobytes()).hexdigest()


def test_same_seed_same_scenes_and_pixels() -> None:
    first, again = draw_scenes(7, "cc3m", 20), draw_scenes(7, "cc3m", 20)
    assert first == again
    assert [_pixels(s) for s in first] == [_pixels(s) for s in again]
    other_seed = draw_scenes(8, "cc3m", 20)
    assert [s.to_record() for s in other_seed] != [s.to_record() for s in first]
    other_split = draw_scenes(7, "coco", 20)
    assert [s.objects for s in other_split] != [s.objects for s in first]


def test_a_scene_does_not_depend_on_the_scenes_drawn_before_it() -> None:
    assert draw_scenes(3, "vqa_real", 5, start=10) == [
        draw_scene(3, "vqa_real", i) for i in range(10, 15)
    ]


def test_scenes_hold_one_to_three_objects_one_per_column_left_to_right() -> None:
    scenes = draw_scenes(0, "pretrain", 300)
    assert {s.count for s in scenes} == {1, 2, 3}
    for scene in scenes:
        positions = [obj.position for obj in scene.objects]
        assert positions == sorted(positions, key=POSITIONS.index)
        assert len(set(positions)) == len(positions)
        for obj in scene.objects:
            half = obj.extent / 2
            assert obj.x - half >= 0 and obj.x + half <= IMAGE_SIZE
    assert render(scenes[0]).size == (IMAGE_SIZE, IMAGE_SIZE)


def test_rendered_colours_are_where_the_record_says(tmp_path) -> None:
    scene = draw_scene(0, "cc3m", 4)
    image = render(scene)
    for obj in scene.objects:
        r, g, b = image.getpixel((obj.x, obj.y + obj.extent // 4))  # inside every shape
        background = image.getpixel((obj.x, 1 if obj.y > IMAGE_SIZE // 2 else IMAGE_SIZE - 2))
        assert (r, g, b) != background, obj


def test_records_round_trip(tmp_path) -> None:
    scenes = draw_scenes(2, "coco", 10)
    path = write_records(scenes, tmp_path / "scenes.jsonl")
    assert list(read_records(path)) == scenes
    (tmp_path / "bad.jsonl").write_text('{"scene_id": "x"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not a scene record"):
        list(read_records(tmp_path / "bad.jsonl"))


def test_partial_captions_never_describe_a_scene_completely() -> None:
    scenes = draw_scenes(0, "cc3m", 3000)
    captions = [language.partial_caption(s, scene_rng(0, "cc3m", s.index, "c")) for s in scenes]
    assert not any(
        language.is_complete_caption(c, s) for c, s in zip(captions, scenes, strict=True)
    )
    # ... but over the set every attribute kind is named, so the image tower learns each.
    text = " ".join(captions)
    for word in ("left", "middle", "right", "small", "large", "background", "two", "three"):
        assert word in text, word
    for caption, scene in zip(captions, scenes, strict=True):
        check = check_text(caption, scene)
        assert check.stated and check.true == check.stated, caption


def test_complete_captions_describe_every_object() -> None:
    for scene in draw_scenes(0, "coco", 200):
        captions = language.complete_captions(scene)
        assert len(captions) == len(set(captions)) == 5
        assert all(language.is_complete_caption(c, scene) for c in captions)


def test_dialogue_targets_survive_the_generation_stage_readers() -> None:
    """BLIP-2's answers come back through clean_blip2_answer, LLaVA's reply through the free-text
    parser, both unchanged and all true."""
    template = "Question: {question} Answer:"
    for scene in draw_scenes(0, "vlm", 300):
        for answer in language.blip2_answers(scene):
            assert clean_blip2_answer(f" {answer}\n", template) == answer
            check = check_text(answer, scene)
            assert check.stated and check.true == check.stated
        pairs = language.llava_pairs(scene)
        parsed = parse_qa_pairs(" " + language.llava_reply(pairs))
        assert parsed.status == PARSE_OK and parsed.method == "labels"
        assert list(zip(parsed.questions, parsed.answers, strict=True)) == pairs
        check = check_pairs(parsed.questions, parsed.answers, scene)
        assert check.stated == 3 and check.true == 3


def test_vqa_questions_cover_every_kind_with_true_answers() -> None:
    asked = []
    for scene in draw_scenes(0, "vqa_real", 200):
        rng = scene_rng(0, "vqa_real", scene.index, "q")
        for question in language.vqa_questions(scene, rng):
            assert check_pairs([question.question], [question.answer], scene).true == 1
            asked.append((question, language.human_answers(question, rng), rng))
    assert {q.kind for q, _, _ in asked} == set(language.QUESTION_KINDS)
    answers = [q.answer for q, _, _ in asked]
    assert {"yes", "no", "1", "2", "3", "left", "middle", "right"} <= set(answers)
    popular = language.popular_answers([humans for _, humans, _ in asked])
    assert len(popular) == language.N_POPULAR and {"yes", "no"} <= set(popular)
    for question, humans, rng in asked:
        choices = language.multiple_choices(question, rng, humans, popular, answers)
        assert len(choices) == len(set(choices)) == language.N_CHOICES
        assert {question.answer, language.majority(humans), *popular} <= set(choices)
