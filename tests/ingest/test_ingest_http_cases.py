"""End to end through the real command and img2dataset: every case a crawl meets, one row each.

One module-scoped run of ``dialogclip ingest-shard`` over a TSV pointing at the loopback image
server (plus malformed lines); the tests then check each row, the stats and the retry pass.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ingest_helpers import TEST_TIMEOUT, VENV_BIN, ImageServer, run_command, write_tsv
from PIL import Image

from dialogclip.core.io import read_parquet_metadata
from dialogclip.core.shards import make_key
from dialogclip.ingest.shard import SHARD_SCHEMA

pytestmark = pytest.mark.jobs

# (route, expected status, expected error_kind) in TSV order.
HTTP_CASES = [
    ("/good.jpg", "success", None),
    ("/good.png", "success", None),
    ("/good.webp", "success", None),
    ("/alpha.png", "success", None),
    ("/cmyk.jpg", "success", None),
    ("/gray.jpg", "success", None),
    ("/truncated.jpg", "failed_to_resize", "decode_error"),
    ("/not-an-image.jpg", "failed_to_resize", "decode_error"),
    ("/missing.jpg", "failed_to_download", "http_404"),
    ("/error.jpg", "failed_to_download", "http_500"),
    ("/slow.jpg", "failed_to_download", "timeout"),
    ("/redirect.jpg", "success", None),
    ("/giant.png", "failed_to_resize", "image_too_large"),
    ("/large-area.jpg", "failed_to_resize", "image_too_large"),
    ("/flaky.jpg", "failed_to_download", "http_503"),
]
# Lines that never reach img2dataset: (raw line, status, error_kind).
LOCAL_CASES = [
    (b"a local file\tfile:///etc/hostname", "disallowed_url", "disallowed_scheme"),
    (b"only one column", "malformed_row", "wrong_column_count"),
    (b"\thttp://127.0.0.1:9/x.jpg", "malformed_row", "empty_caption"),
    (b"caption with no url\t  ", "malformed_row", "empty_url"),
    (b"caf\xe9 latin-1\thttp://127.0.0.1:9/x.jpg", "malformed_row", "invalid_utf8"),
]
SETTINGS = {"timeout": TEST_TIMEOUT, "max_image_pixels": 10_000_000}


def _params(**overrides: object) -> str:
    return json.dumps({**SETTINGS, **overrides})


@pytest.fixture(scope="module")
def first_pass(image_server: ImageServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the shard command once over every case; returns its folder."""
    folder = tmp_path_factory.mktemp("http_cases")
    lines = [f"caption for {route}\t{image_server.url(route)}" for route, _, _ in HTTP_CASES]
    lines += [line for line, _, _ in LOCAL_CASES]
    tsv = write_tsv(folder / "cases.tsv", lines)
    result = run_command(
        [
            str(VENV_BIN / "dialogclip"),
            "ingest-shard",
            *("--tsv", str(tsv), "--shard", "00000", "--rows", f"0:{len(lines)}"),
            *("--params", _params(), "--download-threads", "8"),
            *("--output", "shards/00000.parquet", "--stats", "stats/00000.json"),
        ],
        cwd=folder,
        timeout=180,
    )
    assert result.returncode == 0, result.output
    return folder


@pytest.fixture(scope="module")
def rows(first_pass: Path) -> list[dict]:
    return pq.read_table(first_pass / "shards" / "00000.parquet").to_pylist()


def test_schema_is_the_contract(first_pass: Path) -> None:
    table = pq.read_table(first_pass / "shards" / "00000.parquet")
    assert table.schema.remove_metadata() == SHARD_SCHEMA
    metadata = read_parquet_metadata(first_pass / "shards" / "00000.parquet")["ingest"]
    assert metadata["rows"] == [0, len(HTTP_CASES) + len(LOCAL_CASES)]
    assert metadata["settings"]["timeout"] == TEST_TIMEOUT


def test_one_row_per_tsv_line_sorted_by_key(rows: list[dict]) -> None:
    n_lines = len(HTTP_CASES) + len(LOCAL_CASES)
    assert [row["key"] for row in rows] == [make_key(i) for i in range(n_lines)]


@pytest.mark.parametrize(
    ("position", "case"),
    list(enumerate([(c[0], c[1], c[2]) for c in HTTP_CASES] + [c for c in LOCAL_CASES])),
    ids=[c[0] for c in HTTP_CASES] + [c[2] for c in LOCAL_CASES],
)
def test_every_row_has_the_expected_status(
    rows: list[dict], position: int, case: tuple[object, str, str | None]
) -> None:
    _, status, kind = case
    row = rows[position]
    assert (row["status"], row["error_kind"]) == (status, kind), row["error_message"]
    if status == "success":
        assert row["error_message"] is None
        assert row["jpg"] and row["sha256"] and row["width"] and row["original_height"]
    else:
        assert row["error_message"]
        assert row["jpg"] is None and row["width"] is None and row["sha256"] is None


def test_every_success_decodes_to_rgb(rows: list[dict]) -> None:
    successes = [row for row in rows if row["status"] == "success"]
    assert len(successes) == sum(status == "success" for _, status, _ in HTTP_CASES)
    for row in successes:
        with Image.open(io.BytesIO(row["jpg"])) as image:
            image.load()
            assert (image.format, image.mode) == ("JPEG", "RGB"), row["url"]
            assert image.size == (row["width"], row["height"])


def test_resize_policy_keeps_336_on_the_short_side(rows: list[dict]) -> None:
    photo = rows[0]  # 800 x 600 served
    assert (photo["original_width"], photo["original_height"]) == (800, 600)
    assert (photo["width"], photo["height"]) == (448, 336)
    small = rows[1]  # 120 x 90: never upscaled
    assert (small["width"], small["height"]) == (120, 90)


def test_sha256_is_of_the_served_bytes(rows: list[dict], image_server: ImageServer) -> None:
    for row, (route, status, _) in zip(rows, HTTP_CASES, strict=False):
        if status == "success" and route != "/redirect.jpg":
            assert row["sha256"] == image_server.sha256(route), route
    redirect = rows[11]
    assert redirect["sha256"] == image_server.sha256("/good.png")
    assert redirect["url"] == image_server.url("/redirect.jpg")  # the TSV's URL is kept


def test_alpha_is_matted_onto_white(rows: list[dict]) -> None:
    with Image.open(io.BytesIO(rows[3]["jpg"])) as image:
        left = image.convert("RGB").getpixel((10, 45))
    assert min(left) >= 245  # transparent half became white


def test_stats_count_every_status_and_malformed_line(first_pass: Path, rows: list[dict]) -> None:
    stats = json.loads((first_pass / "stats" / "00000.json").read_text())
    assert stats["n_rows"] == len(rows)
    expected: dict[str, int] = {}
    for _, status, _ in HTTP_CASES + [(None, c[1], c[2]) for c in LOCAL_CASES]:
        expected[status] = expected.get(status, 0) + 1
    assert stats["status_counts"] == dict(sorted(expected.items()))
    assert stats["n_success"] == expected["success"]
    assert stats["n_requested"] == len(HTTP_CASES)
    first_local_line = len(HTTP_CASES) + 1
    assert [(m["line"], m["reason"]) for m in stats["malformed_rows"]] == [
        (first_local_line + i, kind)
        for i, (_, status, kind) in enumerate(LOCAL_CASES)
        if status == "malformed_row"
    ]
    assert stats["error_kind_counts"]["http_404"] == 1
    assert stats["error_kind_counts"]["decode_error"] == 2


def test_retry_pass_retries_only_transient_failures(
    first_pass: Path, rows: list[dict], image_server: ImageServer
) -> None:
    """/flaky.jpg (503 once) is recovered; /slow.jpg and /error.jpg (500) are re-tried and fail
    again; the 404 and the decode errors are copied unchanged."""
    flaky_hits = image_server.hits["/flaky.jpg"]
    missing_hits = image_server.hits["/missing.jpg"]
    result = run_command(
        [
            str(VENV_BIN / "dialogclip"),
            "ingest-retry",
            *("--tsv", "cases.tsv", "--shard", "00000", "--input", "shards/00000.parquet"),
            *("--params", _params(retry_failed={"activate": True}), "--download-threads", "4"),
            *("--output", "retried/00000.parquet", "--stats", "retried/00000.json"),
        ],
        cwd=first_pass,
        timeout=120,
    )
    assert result.returncode == 0, result.output
    retried = pq.read_table(first_pass / "retried" / "00000.parquet").to_pylist()
    by_route = {route: retried[i] for i, (route, _, _) in enumerate(HTTP_CASES)}
    assert by_route["/flaky.jpg"]["status"] == "success"
    assert by_route["/flaky.jpg"]["attempts"] == 2
    assert (
        by_route["/flaky.jpg"]["sha256"]
        == hashlib.sha256(image_server.images["/flaky.jpg"]).hexdigest()
    )
    assert (by_route["/slow.jpg"]["error_kind"], by_route["/slow.jpg"]["attempts"]) == (
        "timeout",
        2,
    )
    assert (by_route["/error.jpg"]["error_kind"], by_route["/error.jpg"]["attempts"]) == (
        "http_500",
        2,
    )
    assert by_route["/missing.jpg"]["attempts"] == 1
    assert image_server.hits["/missing.jpg"] == missing_hits  # not re-tried
    assert image_server.hits["/flaky.jpg"] == flaky_hits + 1
    unchanged = [
        i
        for i, (r, _, _) in enumerate(HTTP_CASES)
        if r not in ("/flaky.jpg", "/slow.jpg", "/error.jpg")
    ]
    for i in [*unchanged, *range(len(HTTP_CASES), len(rows))]:
        assert retried[i] == rows[i]
    stats = json.loads((first_pass / "retried" / "00000.json").read_text())
    assert stats["retry"] == {"n_retried": 3, "n_recovered": 1}
    assert stats["pass"] == "retry_failed"
    assert stats["n_success"] == rows_success(rows) + 1


def rows_success(rows: list[dict]) -> int:
    return sum(row["status"] == "success" for row in rows)
