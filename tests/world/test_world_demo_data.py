"""The demo's data is the world's, as `dialogclip world write` writes it: rebuilt from the
seed and sizes in resources/demo/world.json, every file under cc3m/ and eval/ is the committed
one, byte for byte (so the demo's README and config describe what is committed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from workflow_helpers import REPO_ROOT

from dialogclip.cli import main

DEMO = REPO_ROOT / "resources" / "demo"
WRITTEN = ("cc3m", "eval")  # the folders write_world fills


def _digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in WRITTEN
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def test_world_write_rebuilds_the_demo_data(tmp_path: Path) -> None:
    manifest = json.loads((DEMO / "world.json").read_text())
    argv = ["world", "write", str(tmp_path), "--seed", str(manifest["seed"])]
    assert main([*argv, "--params", json.dumps(manifest["sizes"])]) == 0
    assert json.loads((tmp_path / "world.json").read_text()) == manifest
    rebuilt, committed = _digests(tmp_path), _digests(DEMO)
    assert len(committed) > 1300  # 610 TSV rows' images, 300 + 400 evaluation images, files
    assert rebuilt.keys() == committed.keys()
    assert [name for name in rebuilt if rebuilt[name] != committed[name]] == []
