"""The grounding checker: what a text states about a scene, and whether it is true."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dialogclip.cli import main
from dialogclip.generate.generators import Dialogue
from dialogclip.generate.parsing import PARSE_OK, PARSE_UNPARSED, parse_qa_pairs
from dialogclip.generate.schema import RowContext, dialogue_row, error_row, rows_to_table
from dialogclip.world import language
from dialogclip.world.grounding import check_pair, check_pairs, check_text, claims_in_text
from dialogclip.world.scenes import Scene, SceneObject, draw_scenes

SCENE = Scene(
    scene_id="t-000000",
    split="t",
    index=0,
    seed=0,
    background="black",
    objects=(
        SceneObject("circle", "red", "small", "left", 12, 30, 12),
        SceneObject("square", "blue", "large", "right", 52, 30, 20),
    ),
)


def test_a_description_states_each_attribute_it_names() -> None:
    claims = claims_in_text("a small red circle on the left and a blue shape on a black background")
    assert [(c.about, c.attributes) for c in claims] == [
        ("object", {"size": "small", "colour": "red", "shape": "circle", "position": "left"}),
        ("object", {"colour": "blue"}),
        ("background", {"background": "black"}),
    ]
    assert [(c.about, c.attributes) for c in claims_in_text("three shapes")] == [
        ("count", {"count": "3"})
    ]


@pytest.mark.parametrize(
    ("text", "true", "stated"),
    [
        ("a small red circle on the left and a large blue square on the right", 8, 8),
        ("a small red circle in the middle", 3, 4),  # the position is wrong
        ("a large green triangle on the left", 1, 4),  # only the position fits an object
        ("two shapes on a black background", 2, 2),
        ("three shapes on a white background", 0, 2),
        # Each object is matched once: a second red circle finds only the square left.
        ("a red circle and a red circle", 2, 4),
        ("nothing the world has words for", 0, 0),
    ],
)
def test_check_text_counts_true_attributes(text: str, true: int, stated: int) -> None:
    check = check_text(text, SCENE)
    assert (check.true, check.stated) == (true, stated)
    assert check.texts_stating_nothing == int(stated == 0)


@pytest.mark.parametrize(
    ("question", "answer", "true"),
    [
        ("How many shapes are there?", "2", 1),
        ("How many shapes are there?", "Three.", 0),
        ("How many circles are there?", "1", 1),
        ("What color is the circle?", "Red.", 1),
        ("What color is the circle?", "Blue.", 0),
        ("What color is the triangle?", "Red.", 0),  # no triangle: the answer cannot be true
        ("What color is the background?", "Black.", 1),
        ("Where is the blue square?", "On the right.", 1),
        ("Where is the blue square?", "On the left.", 0),
        ("What shape is on the left?", "A circle.", 1),
        ("What shape is in the middle?", "A circle.", 0),
        ("Is there a red circle?", "Yes.", 1),
        ("Is there a red square?", "Yes.", 0),
        ("Is there a red square?", "No.", 1),
    ],
)
def test_check_pair(question: str, answer: str, true: int) -> None:
    check = check_pair(question, answer, SCENE)
    assert (check.true, check.stated) == (true, 1)


def test_true_dialogue_is_grounded_and_another_scenes_is_not() -> None:
    scenes = draw_scenes(0, "cc3m", 400)
    own = [check_pairs(*zip(*language.llava_pairs(s), strict=True), s) for s in scenes]
    shuffled = [
        check_pairs(*zip(*language.llava_pairs(o), strict=True), s)
        for s, o in zip(scenes, scenes[1:] + scenes[:1], strict=True)
    ]
    assert sum(c.true for c in own) == sum(c.stated for c in own) == 3 * len(scenes)
    assert sum(c.true for c in shuffled) < 0.5 * sum(c.stated for c in shuffled)
    blip2 = [check_text(" ".join(language.blip2_answers(o)), s) for s, o in
             zip(scenes, scenes[1:] + scenes[:1], strict=True)]  # fmt: skip
    assert sum(c.true for c in blip2) < 0.7 * sum(c.stated for c in blip2)


def _shard(path: Path, generator: str, rows: list[dict]) -> Path:
    pq.write_table(rows_to_table(rows), path)
    return path


def test_check_grounding_reads_dialogue_shards(tmp_path: Path) -> None:
    """The command over shards in the generation stage's schema: BLIP-2 per turn, LLaVA pairs
    and parse rate; image errors and grey images left out."""
    scenes = draw_scenes(0, "cc3m", 4)
    records = tmp_path / "scenes.jsonl"
    lines = []
    for i, scene in enumerate(scenes):
        encoding = "png-grey" if i == 3 else "jpeg"
        lines.append(json.dumps({**scene.to_record(), "key": f"{i:09d}", "encoding": encoding}))
    records.write_text("\n".join(lines) + "\n")
    ctx = {name: RowContext(name, "m", None, "transformers") for name in ("blip2", "llava")}

    def blip2(i: int, answers: list[str]) -> dict:
        questions = ["What do you see in this image?", "What makes this image unique?"]
        dialogue = Dialogue(questions=questions, answers=answers, parse_status=PARSE_OK)
        return dialogue_row(f"{i:09d}", None, dialogue, ctx["blip2"])

    def llava(i: int, reply: str) -> dict:
        parsed = parse_qa_pairs(reply)
        dialogue = Dialogue(
            responses=[reply],
            questions=parsed.questions,
            answers=parsed.answers,
            parse_status=parsed.status,
        )
        return dialogue_row(f"{i:09d}", None, dialogue, ctx["llava"])

    truth = [language.blip2_answers(s) for s in scenes]
    _shard(tmp_path / "b.parquet", "blip2", [
        blip2(0, list(truth[0])),
        blip2(1, [truth[2][0], truth[1][1]]),  # turn 1 describes another scene
        error_row(f"{2:09d}", None, "truncated", ctx["blip2"]),
        blip2(3, ["nonsense", "more nonsense"]),  # grey image: left out
    ])  # fmt: skip
    output = tmp_path / "blip2.json"
    shard = str(tmp_path / "b.parquet")
    argv = ["world", "check-grounding", "--generator", "blip2", "--shards", shard,
            "--records", str(records), "--output", str(output)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(output.read_text())
    assert summary["replies"] == 2
    first_turn = [check_text(truth[0][0], scenes[0]), check_text(truth[2][0], scenes[1])]
    assert summary["per_turn"][0]["stated"] == sum(check.stated for check in first_turn)
    assert summary["per_turn"][0]["true"] == sum(check.true for check in first_turn)
    assert summary["per_turn"][1]["rate"] == 1.0
    assert summary["grounding"]["true"] < summary["grounding"]["stated"]

    replies = [" " + language.llava_reply(language.llava_pairs(s)) for s in scenes[:2]]
    _shard(tmp_path / "l.parquet", "llava", [
        llava(0, replies[0]), llava(1, replies[0]), llava(2, "I cannot tell.")
    ])  # fmt: skip
    argv[3], argv[5] = "llava", str(tmp_path / "l.parquet")
    assert main(argv) == 0
    summary = json.loads(output.read_text())
    assert summary["replies"] == 3
    assert summary["parse_ok_rate"] == round(2 / 3, 4)
    assert parse_qa_pairs("I cannot tell.").status == PARSE_UNPARSED
    own = check_pairs(*zip(*language.llava_pairs(scenes[0]), strict=True), scenes[0])
    other = check_pairs(*zip(*language.llava_pairs(scenes[0]), strict=True), scenes[1])
    assert summary["grounding"]["true"] == own.true + other.true
    assert summary["grounding"]["stated"] == own.stated + other.stated


def test_a_key_without_a_scene_record_names_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = tmp_path / "scenes.jsonl"
    records.write_text(json.dumps({**SCENE.to_record(), "key": "000000000"}) + "\n")
    ctx = RowContext("blip2", "m", None, "transformers")
    row = dialogue_row("000000007", None, Dialogue(questions=["q"], answers=["a"]), ctx)
    shard = _shard(tmp_path / "s.parquet", "blip2", [row])
    argv = ["world", "check-grounding", "--generator", "blip2", "--shards", str(shard),
            "--records", str(records), "--output", str(tmp_path / "o.json")]  # fmt: skip
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"key 000000007 of {shard} has no scene record in {records}" in line
