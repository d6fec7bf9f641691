"""Generator weights fetched once at a pinned commit (dialogclip.models.vlm_weights), here from a
hub on 127.0.0.1 (tests/loopback_hub.py) serving a tiny BLIP-2: what is copied and checked, and
the one-line errors of a missing, foreign or corrupt fetch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback_hub import COMMITS, REPO, Hub, serve_model

from dialogclip.core.config import ConfigError
from dialogclip.models.vlm_weights import (
    FETCHED,
    fetch_vlm_weights,
    is_hub_id,
    model_of_folder,
    require_fetched,
    weights_folder,
)


@pytest.fixture
def hub(tiny_blip2: Path) -> Iterator[str]:
    with serve_model(tiny_blip2) as endpoint:
        yield endpoint


def _fetched(tmp_path: Path) -> Path:
    return weights_folder(REPO, COMMITS[0], tmp_path / "vlm_weights")


def test_fetch_copies_the_checkpoint_once_and_records_it(
    hub: str, tiny_blip2: Path, tmp_path: Path
) -> None:
    folder = _fetched(tmp_path)
    assert folder == tmp_path / "vlm_weights" / "loopback--tiny-blip2" / COMMITS[0]
    assert fetch_vlm_weights(REPO, COMMITS[0], folder, endpoint=hub) == folder
    wanted = sorted(p.name for p in tiny_blip2.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == sorted([*wanted, FETCHED])
    for name in wanted:
        assert (folder / name).read_bytes() == (tiny_blip2 / name).read_bytes(), name
    record = json.loads((folder / FETCHED).read_text())
    assert (record["model"], record["revision"], record["endpoint"]) == (REPO, COMMITS[0], hub)
    assert record["files"] == {name: (tiny_blip2 / name).stat().st_size for name in wanted}
    # The file list was paged; every kept file went through the hub's redirect; the pickled
    # weights and the README were never fetched.
    tree_pages = [hit for hit in Hub.hits if hit.startswith("/api/models/")]
    assert len(tree_pages) >= 3 and any("cursor=" in hit for hit in tree_pages)
    cdn = sorted(hit.rsplit("/", 1)[1] for hit in Hub.hits if hit.startswith("/cdn/"))
    assert cdn == wanted
    # Once: a second fetch asks the hub nothing.
    before = list(Hub.hits)
    fetch_vlm_weights(REPO, COMMITS[0], folder, endpoint=hub)
    assert Hub.hits == before
    assert require_fetched(folder, REPO, COMMITS[0]) == folder
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_a_corrupt_download_leaves_no_folder(hub: str, tmp_path: Path) -> None:
    Hub.served["config.json"] = Hub.files["config.json"].replace(b"{", b"[", 1)
    folder = _fetched(tmp_path)
    with pytest.raises(OSError, match=r"config\.json: download corrupt \(git blob id "):
        fetch_vlm_weights(REPO, COMMITS[0], folder, endpoint=hub)
    assert list(folder.parent.iterdir()) == []  # no half folder, no temporary one
    Hub.served["model.safetensors"] = Hub.files["model.safetensors"][:-10]
    Hub.served["config.json"] = Hub.files["config.json"]
    with pytest.raises(OSError, match=r"model\.safetensors: download corrupt \(\d+ bytes, not"):
        fetch_vlm_weights(REPO, COMMITS[0], folder, endpoint=hub)


def test_only_a_commit_pins_a_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'main' is not a commit: pin loopback/tiny-blip2 to a"):
        fetch_vlm_weights(REPO, "main", tmp_path / "x", endpoint="http://127.0.0.1:9")
    assert not (tmp_path / "x").exists()


def test_jobs_name_the_command_for_a_missing_or_foreign_folder(hub: str, tmp_path: Path) -> None:
    folder = _fetched(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        require_fetched(folder, REPO, COMMITS[0])
    assert str(err.value) == (
        f"generator weights not found: {folder} has no {FETCHED} ({REPO} at {COMMITS[0]}). "
        "Fetch them once on a machine with internet access: `snakemake --cores 1 vlm_weights` "
        f"(or `dialogclip fetch-vlm-weights --model {REPO} --revision {COMMITS[0]} --output "
        f"{folder}`)"
    )
    fetch_vlm_weights(REPO, COMMITS[0], folder, endpoint=hub)
    with pytest.raises(ConfigError, match=f"holds {REPO} at {COMMITS[0]}, but the config asks"):
        require_fetched(folder, REPO, COMMITS[1])


def test_hub_ids_and_folder_names() -> None:
    assert is_hub_id("llava-hf/llava-1.5-7b-hf") and is_hub_id("Salesforce/blip2-opt-2.7b")
    assert not is_hub_id("results/models/tiny/blip2") and not is_hub_id("a--b/c")
    assert model_of_folder(weights_folder("llava-hf/llava-1.5-7b-hf", "x").parent.name) == (
        "llava-hf/llava-1.5-7b-hf"
    )
