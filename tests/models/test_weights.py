"""Pretrained weights fetched once (open_clip's downloader, here from a loopback server) and
loaded from the project's folder; a missing file names itself and the fetch command."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import open_clip
import pytest
import torch
from open_clip.pretrained import _pcfg
from safetensors import safe_open

from dialogclip.models.openclip import ClipSpec, load_clip, register_model_configs
from dialogclip.models.weights import fetch_clip_weights, local_weights, weights_file

TAG = "loopback"


class _Handler(http.server.SimpleHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def served_tiny_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """A tiny-clip state dict (torch.save, as open_clip's release files) served on 127.0.0.1
    and registered as the pretrained tag `loopback` of tiny-clip."""
    register_model_configs()
    torch.manual_seed(3)
    state = open_clip.create_model("tiny-clip").state_dict()
    served = tmp_path / "served"
    served.mkdir()
    torch.save(state, served / "tiny_clip-loopback.pt")
    _Handler.hits = []
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/tiny_clip-loopback.pt"
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny-clip", {TAG: _pcfg(url=url)})
    try:
        yield state
    finally:
        server.shutdown()


def test_fetch_stores_safetensors_and_loads_without_network(
    served_tiny_clip: dict, tmp_path: Path
) -> None:
    weights_dir = tmp_path / "weights"
    path = fetch_clip_weights("tiny-clip", TAG, weights_dir)
    assert path == weights_dir / f"tiny-clip__{TAG}.safetensors" and path.is_file()
    assert _Handler.hits == ["/tiny_clip-loopback.pt"]
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["quick_gelu"] == "false"
        assert handle.metadata()["pretrained"] == TAG
        for name, tensor in served_tiny_clip.items():
            assert torch.equal(handle.get_tensor(name), tensor), name
    # Fetched once: a second call downloads nothing.
    fetch_clip_weights("tiny-clip", TAG, weights_dir)
    assert _Handler.hits == ["/tiny_clip-loopback.pt"]
    # Jobs load the tag from the file.
    clip = load_clip(ClipSpec("tiny-clip", TAG), weights_dir=weights_dir)
    for name, tensor in clip.model.state_dict().items():
        assert torch.equal(tensor, served_tiny_clip[name]), name


def test_a_missing_weights_file_names_itself_and_the_command(tmp_path: Path) -> None:
    expected = weights_file(tmp_path, "ViT-B-32", "laion2b_s34b_b79k")
    with pytest.raises(FileNotFoundError) as info:
        load_clip(ClipSpec("ViT-B-32", "laion2b_s34b_b79k"), weights_dir=tmp_path)
    message = str(info.value)
    assert f"open_clip weights not found: {expected}" in message
    assert (
        "dialogclip fetch-clip-weights --architecture ViT-B-32 --pretrained laion2b_s34b_b79k "
        f"--weights-dir {tmp_path}" in message
    )
    with pytest.raises(FileNotFoundError, match="snakemake clip_weights"):
        local_weights(tmp_path, "ViT-B-32", "laion2b_s34b_b79k")
