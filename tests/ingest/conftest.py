"""Fixtures of the ingestion tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ingest_helpers import ImageServer, start_image_server


@pytest.fixture(scope="module")
def image_server() -> Iterator[ImageServer]:
    """The loopback image server (one per test module, so hit counts start at zero)."""
    server, httpd = start_image_server()
    yield server
    server.trickle_release.set()  # let a trickling handler finish
    httpd.shutdown()
    httpd.server_close()
