"""A model hub on 127.0.0.1 for the tests of dialogclip.models.vlm_weights: the two endpoints it
uses, as the Hugging Face hub serves them (a revision's file list, paged; each file through a
redirect), over a folder of files. It records every request so that tests see what was fetched.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

REPO = "loopback/tiny-blip2"
COMMITS = ("0123456789abcdef0123456789abcdef01234567", "89abcdef0123456789abcdef0123456789abcdef")
PAGE = 3  # tree entries per page: the client must follow the Link header
LFS = (".safetensors", ".bin")  # stored in LFS on the hub: listed with their sha256


def tree_entry(path: str, data: bytes) -> dict:
    """A file as the hub's tree endpoint lists it."""
    entry = {"type": "file", "path": path, "size": len(data)}
    if path.endswith(LFS):
        entry["oid"] = "0" * 40  # git's id of the LFS pointer, not of the content
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}
    else:
        entry["oid"] = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
    return entry


class Hub(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    served: ClassVar[dict[str, bytes]] = {}  # what /cdn/ sends (a test may corrupt a file)
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        url = urllib.parse.urlsplit(self.path)
        tree = f"/api/models/{REPO}/tree/"
        resolve = f"/{REPO}/resolve/"
        if url.path.startswith(tree) and url.path[len(tree) :] in COMMITS:
            self._tree(url)
        elif url.path.startswith(resolve):
            revision, _, name = url.path[len(resolve) :].partition("/")
            name = urllib.parse.unquote(name)
            if revision not in COMMITS or name not in self.files:
                self.send_error(404)
                return
            self.send_response(302)  # the hub sends files from elsewhere
            self.send_header("Location", f"/cdn/{revision}/{urllib.parse.quote(name)}")
            self.end_headers()
        elif url.path.startswith("/cdn/"):
            name = urllib.parse.unquote(url.path.split("/", 3)[3])
            self._send(self.served[name], "application/octet-stream")
        else:
            self.send_error(404)

    def _tree(self, url: urllib.parse.SplitResult) -> None:
        entries = [{"type": "directory", "path": "docs"}] + [
            tree_entry(path, data) for path, data in sorted(self.files.items())
        ]
        start = int(urllib.parse.parse_qs(url.query).get("cursor", ["0"])[0])
        page = entries[start : start + PAGE]
        self.send_response(200)
        if start + PAGE < len(entries):
            query = f"recursive=true&cursor={start + PAGE}"
            self.send_header(
                "Link", f'<http://{self.headers["Host"]}{url.path}?{query}>; rel="next"'
            )
        body = json.dumps(page).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve_model(model_dir: Path) -> Iterator[str]:
    """Serve the files of ``model_dir`` (plus a pickled ``pytorch_model.bin`` and a README in a
    sub-folder, which a fetch must leave out) as :data:`REPO` at each of :data:`COMMITS`;
    yields the endpoint URL."""
    files = {p.relative_to(model_dir).as_posix(): p.read_bytes() for p in model_dir.rglob("*")}
    files = {name: data for name, data in files.items() if (model_dir / name).is_file()}
    files["pytorch_model.bin"] = b"pickled weights: never fetched"
    files["docs/README.md"] = b"# tiny\n"
    Hub.files, Hub.served, Hub.hits = files, dict(files), []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
