"""Helpers of the ingestion tests: a loopback HTTP image server and command runners."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

VENV_BIN = Path(sys.executable).parent
# The slow route answers after SLOW_SECONDS; downloads time out after TEST_TIMEOUT. Generous
# enough that a busy 2-core machine never times out on the other routes.
SLOW_SECONDS = 6.0
TEST_TIMEOUT = 3


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


def make_images() -> dict[str, bytes]:
    """The bytes of every static route, built from seeded random images."""
    rng = np.random.default_rng(0)
    # A smooth 800x600 picture (a few tens of kB, unlike noise) and a small noisy one.
    ramp = np.linspace(0, 255, 800, dtype=np.float32)[None, :, None]
    photo = Image.fromarray(np.broadcast_to(ramp, (600, 800, 3)).astype(np.uint8))
    small = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    # Left half fully transparent: img2dataset mattes it onto white.
    alpha = np.full((90, 120), 255, dtype=np.uint8)
    alpha[:, :60] = 0
    rgba = Image.fromarray(np.dstack([np.asarray(small), alpha]), "RGBA")
    good_jpeg = _jpeg(small, quality=90)
    return {
        "/good.jpg": _jpeg(photo, quality=90),  # 800x600: downscaled to a 336 px short side
        "/good.png": _encode(small, "PNG"),
        "/good.webp": _encode(small, "WEBP"),
        "/alpha.png": _encode(rgba, "PNG"),
        "/cmyk.jpg": _jpeg(small.convert("CMYK")),
        "/gray.jpg": _jpeg(small.convert("L")),
        "/truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "/not-an-image.jpg": b"<html><body>This is not an image</body></html>\n" * 4,
        "/giant.png": _png_claiming(100_000, 100_000),
        # 12 Mpx, above the tests' max_image_pixels of 10 Mpx (uniform: a small file)
        "/large-area.jpg": _jpeg(Image.new("RGB", (4000, 3000), (90, 140, 200))),
        "/trickle.jpg": good_jpeg,
        "/flaky.jpg": good_jpeg,
    }


@dataclass
class ImageServer:
    """A running loopback server; ``url(path)`` gives the address of a route."""

    base_url: str
    images: dict[str, bytes]
    hits: dict[str, int] = field(default_factory=dict)
    # /trickle.jpg: once requested it sets trickle_started, then sends one byte per 0.2 s (never
    # idle long enough to time out) until trickle_release is set.
    trickle_started: threading.Event = field(default_factory=threading.Event)
    trickle_release: threading.Event = field(default_factory=threading.Event)
    # /flaky.jpg answers 503 to its first ``flaky_failures`` requests, then the image.
    flaky_failures: int = 1

    def url(self, path: str) -> str:
        return self.base_url + path

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.images[path]).hexdigest()


def _handler(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            path = self.path
            with lock:
                server.hits[path] = server.hits.get(path, 0) + 1
                hits = server.hits[path]
            # The client may give up (timeout) or be killed mid-answer.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._route(path, hits)

        def _route(self, path: str, hits: int) -> None:
            if path == "/missing.jpg":
                self.send_error(HTTPStatus.NOT_FOUND)
            elif path == "/error.jpg":
                self.send_error(HTTPStatus.INTERNAL_SERVER_ERROR)
            elif path == "/redirect.jpg":
                self.send_response(HTTPStatus.FOUND)
                self.send_header("Location", "/good.png")
                self.end_headers()
            elif path == "/slow.jpg":
                time.sleep(SLOW_SECONDS)
                self._send(server.images["/good.png"], "image/png")
            elif path == "/flaky.jpg" and hits <= server.flaky_failures:
                self.send_error(HTTPStatus.SERVICE_UNAVAILABLE)
            elif path == "/trickle.jpg":
                self._trickle(server.images[path])
            elif path in server.images:
                self._send(server.images[path], "image/jpeg")  # also for non-images
            else:
                self.send_error(HTTPStatus.NOT_FOUND)

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _trickle(self, body: bytes) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            server.trickle_started.set()
            sent = 0
            while sent < len(body) and not server.trickle_release.is_set():
                self.wfile.write(body[sent : sent + 1])
                self.wfile.flush()
                sent += 1
                time.sleep(0.2)
            self.wfile.write(body[sent:])

    return Handler


def start_image_server() -> tuple[ImageServer, ThreadingHTTPServer]:
    """Start a threaded HTTP server on 127.0.0.1 serving every case the ingestion must handle."""
    server = ImageServer(base_url="", images=make_images())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    httpd.daemon_threads = True
    server.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return server, httpd


def command_env() -> dict[str, str]:
    """Environment for subprocesses: the venv's commands (dialogclip) first on PATH."""
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


@dataclass(frozen=True)
class Completed:
    returncode: int
    output: str  # stdout and stderr together


def run_command(args: Sequence[str], cwd: Path, timeout: float) -> Completed:
    """Run ``args`` in its own process group; kill the whole group if it exceeds ``timeout``."""
    process = subprocess.Popen(
        list(args),
        cwd=cwd,
        env=command_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{args[0]} timed out after {timeout} s:\n{output[-4000:]}")
    return Completed(process.returncode, output)


def write_tsv(path: Path, lines: Sequence[bytes | str]) -> Path:
    """Write TSV lines (str lines are UTF-8 encoded; a newline is added to each)."""
    data = b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines)
    path.write_bytes(data)
    return path
