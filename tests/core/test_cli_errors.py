"""Every command fails with one line naming the file (exit status 2, no traceback) when an input
is a corrupt JSON, Parquet or safetensors file, when --params is not a JSON object, and when the
CC3M TSV is empty; the workflow refuses an empty TSV when it plans the DAG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from workflow_helpers import copy_demo, demo_tsv, snakemake

from dialogclip.cli import main
from dialogclip.core.io import CORRUPT_HINT, write_json_atomic, write_parquet_atomic

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_EVAL = REPO_ROOT / "resources" / "demo" / "eval"
COCO_FILES = {"annotations": str(DEMO_EVAL / "coco" / "dataset_coco.json"),
              "images": str(DEMO_EVAL / "coco")}  # fmt: skip
VQA_FILES = {
    "questions": str(DEMO_EVAL / "MultipleChoice_abstract_v002_val2015_questions.json"),
    "annotations": str(DEMO_EVAL / "abstract_v002_val2015_annotations.json"),
    "images": str(DEMO_EVAL / "scene_img_abstract_v002_val2015"),
}
JSON_DETAIL = "Expecting ',' delimiter: line 1 column 14 (char 13)"  # of CORRUPT_JSON
CORRUPT_JSON = '{"n_rows": 3 "n_success": 1}'


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one ERROR line the command logged (its message part); nothing else went wrong."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1, err
    return errors[0].split(" dialogclip: ", 1)[1]


def _corrupt_json(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CORRUPT_JSON)
    return path


def _truncated_parquet(path: Path, columns: dict[str, list]) -> Path:
    write_parquet_atomic(pa.table(columns), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # the footer is lost
    return path


def _garbage_safetensors(path: Path) -> Path:
    # A plausible header length followed by a header cut short.
    path.write_bytes((64).to_bytes(8, "little") + b'{"image_emb": {"dtype": "F32", ')
    return path


# --- corrupt JSON ------------------------------------------------------------------------------


def test_ingest_summary_names_the_corrupt_stats_file(tmp_path: Path, capsys) -> None:
    good = tmp_path / "stats" / "00000.json"
    write_json_atomic({"n_rows": 3}, good)
    bad = _corrupt_json(tmp_path / "stats" / "00001.json")
    output = tmp_path / "summary.json"
    argv = ["ingest-summary", "--stats", str(good), str(bad), "--output", str(output)]
    assert main(argv) == 2
    assert _error_line(capsys) == f"corrupt JSON file: {bad} ({JSON_DETAIL}); {CORRUPT_HINT}"
    assert not output.exists()


def test_dialogue_summary_names_the_corrupt_stats_file(tmp_path: Path, capsys) -> None:
    bad = _corrupt_json(tmp_path / "00000.json")
    output = tmp_path / "summary.json"
    assert main(["dialogue-summary", "--stats", str(bad), "--output", str(output)]) == 2
    assert _error_line(capsys) == f"corrupt JSON file: {bad} ({JSON_DETAIL}); {CORRUPT_HINT}"
    assert not output.exists()


def test_vqa_score_names_a_corrupt_results_file(tmp_path: Path, capsys) -> None:
    results = _corrupt_json(tmp_path / "results.json")
    argv = ["vqa-score", "--questions", VQA_FILES["questions"]]
    argv += ["--annotations", VQA_FILES["annotations"], "--results", str(results)]
    assert main(argv) == 2
    assert _error_line(capsys) == (
        f"corrupt VQA results JSON file: {results} ({JSON_DETAIL}); {CORRUPT_HINT}"
    )


def test_vqa_score_names_a_corrupt_published_file(tmp_path: Path, capsys) -> None:
    questions = _corrupt_json(tmp_path / "questions.json")
    argv = ["vqa-score", "--questions", str(questions)]
    argv += ["--annotations", VQA_FILES["annotations"], "--results", str(tmp_path / "r.json")]
    assert main(argv) == 2
    assert _error_line(capsys) == (
        f"corrupt VQA JSON file: {questions} ({JSON_DETAIL}); "
        "download it again (https://visualqa.org/vqa_v1_download.html)"
    )


def _eval_params(pretrained: str, dataset: str = "coco", files: dict | None = None) -> str:
    files = files or (COCO_FILES if dataset == "coco" else VQA_FILES)
    model = {"name": "tiny", "architecture": "tiny-clip", "pretrained": pretrained}
    return json.dumps({"model": model, "dataset": dataset, "files": files})


def test_embed_images_names_a_corrupt_dataset_json(tmp_path: Path, capsys) -> None:
    annotations = _corrupt_json(tmp_path / "dataset_coco.json")
    params = _eval_params(
        str(tmp_path / "unused.safetensors"),
        files={**COCO_FILES, "annotations": str(annotations)},
    )
    output = tmp_path / "emb.safetensors"
    assert main(["embed-images", "--params", params, "--output", str(output)]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"corrupt coco JSON file: {annotations} ({JSON_DETAIL}); ")
    assert "download it again (Karpathy's dataset_coco.json" in line
    assert not output.exists()


# --- corrupt Parquet ---------------------------------------------------------------------------


def _ingested_columns(n: int) -> dict[str, list]:
    return {
        "key": [f"{i:09d}" for i in range(n)],
        "url": [f"http://x/{i}.jpg" for i in range(n)],
        "status": ["success"] * n,
        "jpg": [b"\xff\xd8" * 64] * n,
    }


def _generate_argv(shard: Path, tmp_path: Path) -> list[str]:
    argv = ["generate-dialogue", "--generator", "blip2", "--shard", str(shard)]
    return [*argv, "--output", str(tmp_path / "o.parquet"), "--stats", str(tmp_path / "s.json")]


def test_generate_dialogue_names_a_corrupt_shard(tmp_path: Path, capsys) -> None:
    shard = _truncated_parquet(tmp_path / "00000.parquet", _ingested_columns(50))
    assert main(_generate_argv(shard, tmp_path)) == 2
    line = _error_line(capsys)
    assert line.startswith(f"corrupt ingested shard (Parquet) file: {shard} (")
    assert "magic bytes not found" in line and line.endswith(CORRUPT_HINT)
    assert not (tmp_path / "o.parquet").exists()


def test_generate_dialogue_names_a_shard_without_the_image_column(tmp_path: Path, capsys) -> None:
    shard = tmp_path / "00000.parquet"
    columns = _ingested_columns(3)
    del columns["jpg"]
    write_parquet_atomic(pa.table(columns), shard)
    assert main(_generate_argv(shard, tmp_path)) == 2
    assert _error_line(capsys) == f"ingested shard (Parquet) file {shard} lacks column(s) ['jpg']"


def test_generate_dialogue_names_a_missing_shard(tmp_path: Path, capsys) -> None:
    shard = tmp_path / "none.parquet"
    assert main(_generate_argv(shard, tmp_path)) == 2
    assert _error_line(capsys) == f"ingested shard (Parquet) file not found: {shard}"


def test_ingest_retry_names_a_corrupt_first_pass_shard(tmp_path: Path, capsys) -> None:
    tsv = tmp_path / "cc3m.tsv"
    tsv.write_text("a cat\tfile:cat.jpg\n")
    shard = _truncated_parquet(tmp_path / "shards" / "00000.parquet", _ingested_columns(20))
    argv = ["ingest-retry", "--tsv", str(tsv), "--shard", "00000", "--input", str(shard)]
    argv += ["--output", str(tmp_path / "r.parquet"), "--stats", str(tmp_path / "r.json")]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith(f"corrupt Parquet file: {shard} (") and line.endswith(CORRUPT_HINT)
    assert not (tmp_path / "r.parquet").exists()


# --- corrupt safetensors -----------------------------------------------------------------------


def test_embed_images_names_a_corrupt_checkpoint(tmp_path: Path, capsys) -> None:
    checkpoint = _garbage_safetensors(tmp_path / "clip.safetensors")
    output = tmp_path / "emb.safetensors"
    argv = ["embed-images", "--params", _eval_params(str(checkpoint)), "--output", str(output)]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith(f"corrupt CLIP checkpoint file: {checkpoint} (")
    assert "deserializing header" in line and line.endswith(CORRUPT_HINT)
    assert not output.exists()


@pytest.mark.parametrize("command", ["eval-retrieval", "eval-vqa"])
def test_eval_commands_name_a_corrupt_image_embedding_cache(
    tmp_path: Path, capsys, command: str
) -> None:
    cache = tmp_path / "emb.safetensors"
    # A complete cache cut short: its header no longer covers the file.
    import torch
    from safetensors.torch import save_file

    save_file({"image_emb": torch.zeros(10, 16)}, str(cache))
    cache.write_bytes(cache.read_bytes()[:-100])
    dataset = "coco" if command == "eval-retrieval" else "vqa_abstract"
    argv = [command, "--params", _eval_params("x.safetensors", dataset), "--image-emb", str(cache)]
    argv += ["--output", str(tmp_path / "metrics.json")]
    if command == "eval-vqa":
        argv += ["--results", str(tmp_path / "results.json")]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith(f"corrupt image-embedding cache (safetensors) file: {cache} (")
    assert "incomplete metadata" in line and line.endswith(CORRUPT_HINT)
    assert not (tmp_path / "metrics.json").exists()


def test_text_tower_checkpoint_is_checked_before_use(tmp_path: Path) -> None:
    from dialogclip.core.io import CorruptFileError
    from dialogclip.models.openclip import load_text_tower

    checkpoint = _garbage_safetensors(tmp_path / "tower.safetensors")
    with pytest.raises(CorruptFileError, match="corrupt text tower checkpoint file: "):
        load_text_tower(None, checkpoint)


# --- --params ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["ingest-shard", "--tsv", "t.tsv", "--shard", "00000", "--rows", "0:1"],
        ["ingest-retry", "--tsv", "t.tsv", "--shard", "00000", "--input", "s.parquet"],
        ["generate-dialogue", "--generator", "llava", "--shard", "s.parquet"],
        ["embed-images"],
        ["eval-retrieval", "--image-emb", "e.safetensors"],
        ["eval-vqa", "--image-emb", "e.safetensors", "--results", "r.json"],
    ],
    ids=lambda argv: argv[0],
)
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ('{"chunk_size": 4,}', "--params is not valid JSON (Expecting property name enclosed in "
         "double quotes: line 1 column 18 (char 17)): '{\"chunk_size\": 4,}'"),
        ("[1, 2]", "--params must be a JSON object, got: '[1, 2]'"),
    ],
    ids=["corrupt", "not-an-object"],
)  # fmt: skip
def test_bad_params_are_one_line(argv: list[str], params: str, message: str, capsys) -> None:
    outputs = ["--output", "o", "--stats", "s"] if argv[0].startswith(("ingest", "gen")) else []
    if argv[0].startswith(("embed", "eval")):
        outputs = ["--output", "o"]
    assert main([*argv, "--params", params, *outputs]) == 2
    assert _error_line(capsys) == message


# --- the CC3M TSV ------------------------------------------------------------------------------


def _ingest_shard_argv(tsv: Path, rows: str, tmp_path: Path) -> list[str]:
    argv = ["ingest-shard", "--tsv", str(tsv), "--shard", "00000", "--rows", rows]
    return [*argv, "--output", str(tmp_path / "s.parquet"), "--stats", str(tmp_path / "s.json")]


def test_empty_tsv_is_one_clear_line(tmp_path: Path, capsys) -> None:
    tsv = tmp_path / "Train_GCC-training.tsv"
    tsv.write_bytes(b"")
    assert main(_ingest_shard_argv(tsv, "0:32", tmp_path)) == 2
    assert _error_line(capsys) == (
        f"CC3M TSV is empty: {tsv.resolve()}; it must hold one 'caption<TAB>url' line per image "
        "(download it again, or point cc3m.tsv at the right file)"
    )
    assert not (tmp_path / "s.parquet").exists()


def test_tsv_shorter_than_planned_is_one_clear_line(tmp_path: Path, capsys) -> None:
    tsv = tmp_path / "cc3m.tsv"
    tsv.write_text("".join(f"caption {i}\tfile:{i}.jpg\n" for i in range(3)))
    assert main(_ingest_shard_argv(tsv, "0:5", tmp_path)) == 2
    assert _error_line(capsys) == (
        f"{tsv} has only 3 lines but rows up to 5 were planned; did the TSV change? "
        "Rerun snakemake to re-plan the shards."
    )
    assert main(_ingest_shard_argv(tsv, "4:6", tmp_path)) == 2
    assert _error_line(capsys) == (
        f"{tsv} has only 3 complete lines; row 4 does not exist. Did the TSV change? "
        "Rerun snakemake to re-plan the shards."
    )


@pytest.mark.dag
def test_empty_tsv_stops_the_workflow_when_the_dag_is_built(tmp_path: Path) -> None:
    workdir = copy_demo(tmp_path / "demo")
    tsv = demo_tsv(workdir)
    tsv.write_bytes(b"")
    result = snakemake(workdir, "--dry-run", timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        f"CC3M TSV is empty: {tsv.resolve()}; it must hold one 'caption<TAB>url' line per image"
        in output
    )
    assert "Job stats" not in output  # nothing was planned


# --- the real process --------------------------------------------------------------------------


def test_the_installed_command_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = _corrupt_json(tmp_path / "00000.json")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dialogclip.cli",
            "ingest-summary",
            "--stats",
            str(bad),
            "--output",
            str(tmp_path / "summary.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.endswith(
        f"ERROR   dialogclip: corrupt JSON file: {bad} ({JSON_DETAIL}); {CORRUPT_HINT}"
    )
