"""The dataset folder on small shards written with the pipeline's own schemas: the join on key,
its checks (a shard of another run, mixed science), the card, and the readers users have
(`datasets.load_dataset`, pandas)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from enriched_helpers import SCIENCE, dialogue_shard, enriched_world

from dialogclip import cli
from dialogclip.core.io import InputFileError
from dialogclip.export.card import hf_features, size_category
from dialogclip.export.dataset import export_dataset
from dialogclip.export.settings import DatasetExport


def _card_header(folder: Path) -> dict[str, Any]:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_the_folder_joins_each_generator_on_key_and_loads(tmp_path: Path) -> None:
    ingested, dialogue = enriched_world(tmp_path)
    output = tmp_path / "dataset"
    summary = export_dataset(ingested, dialogue, output, DatasetExport(), progress=False)

    assert sorted(p.name for p in (output / "data").iterdir()) == ["00000.parquet", "00001.parquet"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging
    assert summary.n_rows == 8  # 9 rows, one failed download
    loaded = datasets.load_dataset(str(output), split="train")
    assert loaded.num_rows == 8
    assert loaded["key"] == [f"{i:09d}" for i in range(9) if i != 1]
    row = loaded[2]  # key 3: BLIP-2 and LLaVA could not use the image
    assert row["blip2"]["status"] == "image_error" and row["blip2"]["answers"] is None
    row = loaded[3]  # key 4
    assert row["caption"] == "caption of 000000004"
    assert row["image_sha256"] == f"{4:064x}"
    assert row["blip2"]["answers"] == ["blip2 answer 000000004"]
    assert row["llava"]["questions"] == ["llava question 000000004"]
    assert row["llava"]["model"] == "llava-hf/llava-1.5-7b-hf"
    assert row["llava"]["revision"] == "b" * 40
    # The card's features are the shards' types, exactly.
    expected = datasets.Features.from_arrow_schema(
        pq.read_schema(output / "data" / "00000.parquet")
    )
    assert loaded.features == expected
    # pandas reads the shards directly.
    frame = pd.read_parquet(output / "data")
    assert len(frame) == 8 and frame.loc[3, "llava"]["answers"].tolist() == [
        "llava answer 000000004"
    ]


def test_the_card_states_what_was_made_and_how(tmp_path: Path) -> None:
    ingested, dialogue = enriched_world(tmp_path)
    output = tmp_path / "dataset"
    settings = DatasetExport(pretty_name="World dialogue", licence_note="Shared for research.")
    export_dataset(ingested, dialogue, output, settings, progress=False)
    header = _card_header(output)
    assert header["pretty_name"] == "World dialogue"
    assert header["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}
    ]
    assert header["dataset_info"]["splits"][0]["num_examples"] == 8
    assert header["size_categories"] == ["n<1K"]
    body = (output / "README.md").read_text()
    assert "`Salesforce/blip2-opt-6.7b` at revision `" + "a" * 40 + "`" in body
    assert "What do you see in this image?" in body  # the prompts, once
    assert "rows: 8; generated: 7; image errors: 1; parsed `ok`: 7 (100.0 %)" in body
    assert "- parse status: ok 7\n" in body
    assert body.rstrip().endswith("Shared for research.")


def test_a_dialogue_shard_of_other_rows_is_refused_naming_it(tmp_path: Path) -> None:
    ingested, dialogue = enriched_world(tmp_path)
    # LLaVA's second shard holds the first shard's rows: a broken join.
    dialogue_shard(dialogue["llava"][1], "llava", ["000000000", "000000002"], SCIENCE["llava"])
    with pytest.raises(InputFileError) as error:
        export_dataset(ingested, dialogue, tmp_path / "dataset", DatasetExport(), progress=False)
    message = str(error.value)
    assert f"dialogue shard {dialogue['llava'][1]} does not hold the downloaded rows of" in message
    assert f"{ingested[1]} in order (2 rows vs 4 downloaded; first difference at row 0)" in message
    assert not (tmp_path / "dataset").exists()


def test_shards_of_two_experiments_are_refused_naming_the_key(tmp_path: Path) -> None:
    ingested, dialogue = enriched_world(tmp_path)
    other = {**SCIENCE["blip2"], "sampling": {"temperature": 0.7}}
    dialogue_shard(
        dialogue["blip2"][1], "blip2", ["000000005", "000000006", "000000007", "000000008"], other
    )
    with pytest.raises(InputFileError, match=r"was generated with another sampling than"):
        export_dataset(ingested, dialogue, tmp_path / "dataset", DatasetExport(), progress=False)


def test_the_command_writes_the_folder(tmp_path: Path) -> None:
    ingested, dialogue = enriched_world(tmp_path)
    output = tmp_path / "dataset"
    argv = ["export-dataset", "--params", '{"pretty_name": "From the CLI"}']
    argv += ["--ingested", *map(str, ingested), "--output", str(output)]
    argv += ["--dialogue", "blip2", *map(str, dialogue["blip2"])]
    assert cli.main([*argv, "--dialogue", "llava", *map(str, dialogue["llava"])]) == 0
    assert _card_header(output)["pretty_name"] == "From the CLI"
    assert list(pq.read_schema(output / "data" / "00000.parquet").names[-2:]) == [
        "blip2",
        "llava",
    ]
    # Shards that do not match the ingested ones by name: one line, exit status 2.
    swapped = [*argv, "--dialogue", "llava", *map(str, reversed(dialogue["llava"]))]
    assert cli.main(swapped) == 2


def test_feature_types_and_size_categories() -> None:
    schema = pa.schema(
        [
            ("key", pa.string()),
            ("n", pa.int32()),
            ("g", pa.struct([("answers", pa.list_(pa.string())), ("ok", pa.bool_())])),
        ]
    )
    assert hf_features(schema) == [
        {"name": "key", "dtype": "string"},
        {"name": "n", "dtype": "int32"},
        {
            "name": "g",
            "struct": [{"name": "answers", "list": "string"}, {"name": "ok", "dtype": "bool"}],
        },
    ]
    assert [size_category(n) for n in (999, 1000, 3_318_333)] == ["n<1K", "1K<n<10K", "1M<n<10M"]
