"""URL policy, error kinds, image normalisation, stats and the summary (no downloads)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from dialogclip.core.config import ConfigError
from dialogclip.ingest.errors import classify_error
from dialogclip.ingest.settings import TRANSIENT_ERROR_KINDS, ingest_settings
from dialogclip.ingest.shard import SHARD_SCHEMA, ensure_rgb_jpeg
from dialogclip.ingest.stats import format_summary, shard_stats, summarize
from dialogclip.ingest.urls import DisallowedUrl, fetchable_url

# --- URL policy -------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://e.org/a.jpg", "HTTPS://e.org/a.jpg?x=1"])
def test_web_urls_pass_unchanged(url: str, tmp_path: Path) -> None:
    assert fetchable_url(url, allow_file_urls=False, base_dir=tmp_path) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "'file' is not allowed.*allow_file_urls"),
        ("ftp://e.org/a.jpg", "'ftp' is not allowed"),
        ("data:image/png;base64,AAAA", "'data' is not allowed"),
        ("www.e.org/a.jpg", "no scheme"),
    ],
)
def test_other_schemes_are_refused_by_default(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(DisallowedUrl, match=message):
        fetchable_url(url, allow_file_urls=False, base_dir=tmp_path)


def test_file_urls_resolve_against_the_tsv_folder_when_allowed(tmp_path: Path) -> None:
    def fetch(url: str) -> str:
        return fetchable_url(url, allow_file_urls=True, base_dir=tmp_path)

    assert fetch("file:images/a%20b.jpg") == (tmp_path / "images" / "a b.jpg").as_uri()
    assert fetch("file:///srv/x.jpg") == "file:///srv/x.jpg"
    assert fetch("file://localhost/srv/x.jpg") == "file:///srv/x.jpg"
    with pytest.raises(DisallowedUrl, match="remote host"):
        fetch("file://elsewhere/srv/x.jpg")
    with pytest.raises(DisallowedUrl, match="'ftp' is not allowed"):
        fetch("ftp://e.org/a.jpg")


# --- error kinds (messages as urllib and OpenCV word them) -------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        ("success", None, None),
        ("failed_to_download", "HTTP Error 404: Not Found", "http_404"),
        ("failed_to_download", "HTTP Error 503: Service Unavailable", "http_503"),
        ("failed_to_download", "<urlopen error timed out>", "timeout"),
        ("failed_to_download", "The read operation timed out", "timeout"),
        ("failed_to_download", "<urlopen error [Errno -2] Name or service not known>", "dns"),
        ("failed_to_download", "<urlopen error [Errno 111] Connection refused>", "connection"),
        ("failed_to_download", "Remote end closed connection without response", "connection"),
        (
            "failed_to_download",
            "<urlopen error [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed>",
            "ssl",
        ),
        (
            "failed_to_download",
            "<urlopen error [Errno 2] No such file or directory: '/x.jpg'>",
            "file_not_found",
        ),
        (
            "failed_to_download",
            "Use of image disallowed by X-Robots-Tag directive",
            "robots_disallowed",
        ),
        ("failed_to_download", "something new", "other_download_error"),
        ("failed_to_resize", "Image decoding error", "decode_error"),
        (
            "failed_to_resize",
            "OpenCV(4.14.0) loadsave.cpp:79: error: (-215:Assertion failed) "
            "pixels <= CV_IO_MAX_IMAGE_PIXELS in function 'validateInputImageSize'",
            "image_too_large",
        ),
        ("failed_to_resize", "image area too large", "image_too_large"),
        ("failed_to_resize", "odd", "other_resize_error"),
    ],
)
def test_classify_error(status: str, message: str | None, kind: str | None) -> None:
    assert classify_error(status, message) == kind


def test_default_retry_kinds_are_transient_download_kinds() -> None:
    settings = ingest_settings({})
    assert settings.retry_failed.error_kinds == list(TRANSIENT_ERROR_KINDS)
    assert "http_404" not in TRANSIENT_ERROR_KINDS and "decode_error" not in TRANSIENT_ERROR_KINDS


def test_settings_reject_unknown_keys_and_modes() -> None:
    with pytest.raises(ConfigError, match=r"ingest: unknown key\(s\) \['image_sise'\]"):
        ingest_settings({"image_sise": 1})
    with pytest.raises(ConfigError, match="resize_mode"):
        ingest_settings({"resize_mode": "stretch"})
    nested = ingest_settings({"retry_failed": {"activate": True, "error_kinds": None}})
    assert nested.retry_failed.activate and nested.retry_failed.error_kinds is None


# --- image normalisation ----------------------------------------------------------------------


def _encoded(mode: str, fmt: str) -> bytes:
    # Smooth content, so that JPEG's loss stays small and pixels can be compared.
    x = np.linspace(0, 255, 30)[None, :]
    y = np.linspace(0, 255, 20)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_rgb_jpeg_is_kept_byte_for_byte() -> None:
    data = _encoded("RGB", "JPEG")
    assert ensure_rgb_jpeg(data, quality=95) is data


@pytest.mark.parametrize(("mode", "fmt"), [("L", "JPEG"), ("L", "PNG"), ("RGB", "PNG")])
def test_other_images_become_rgb_jpeg_with_the_same_pixels(mode: str, fmt: str) -> None:
    data = _encoded(mode, fmt)
    converted = Image.open(io.BytesIO(ensure_rgb_jpeg(data, quality=95)))
    assert (converted.format, converted.mode, converted.size) == ("JPEG", "RGB", (30, 20))
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
    assert np.abs(np.asarray(converted, dtype=np.int16) - reference).mean() < 3  # JPEG loss


# --- stats and summary ------------------------------------------------------------------------


def _table(statuses: list[tuple[str, str | None]], first: int = 0) -> pa.Table:
    rows = []
    for i, (status, kind) in enumerate(statuses):
        rows.append(
            {
                "key": f"{first + i:09d}",
                "status": status,
                "error_kind": kind,
                "error_message": None if kind is None else f"because {kind}",
                "attempts": 1,
            }
        )
    return pa.Table.from_pylist(rows, SHARD_SCHEMA)


def test_shard_stats_and_summary_match_hand_counts() -> None:
    first = _table(
        [
            ("success", None),
            ("failed_to_download", "http_404"),
            ("malformed_row", "invalid_utf8"),
            ("success", None),
        ]
    )
    second = _table(
        [
            ("disallowed_url", "disallowed_scheme"),
            ("success", None),
            ("malformed_row", "empty_url"),
        ],
        first=4,
    )
    common = {"n_requested": 2, "download_seconds": 2.0, "seconds": 3.0}
    stats_a = shard_stats(first, shard="00000", pass_name="download", rows=range(0, 4), **common)
    stats_b = shard_stats(
        second,
        shard="00001",
        pass_name="retry_failed",
        rows=range(4, 7),
        retry={"n_retried": 1, "n_recovered": 1},
        **common,
    )
    assert stats_a["status_counts"] == {"failed_to_download": 1, "malformed_row": 1, "success": 2}
    assert stats_a["success_rate"] == 0.5
    assert stats_a["malformed_rows"] == [
        {"line": 3, "key": "000000002", "reason": "invalid_utf8", "detail": "because invalid_utf8"}
    ]
    assert stats_a["images_per_second"] == 1.0

    summary = summarize([stats_b, stats_a])
    assert summary["n_rows"] == 7 and summary["n_success"] == 3
    assert summary["success_rate"] == pytest.approx(3 / 7)
    assert summary["download_success_rate"] == pytest.approx(3 / 4)  # 7 - 2 malformed - 1 refused
    assert summary["error_kind_counts"] == {
        "http_404": 1,
        "invalid_utf8": 1,
        "disallowed_scheme": 1,
        "empty_url": 1,
    }
    assert [(m["shard"], m["line"]) for m in summary["malformed_rows"]] == [
        ("00000", 3),
        ("00001", 7),
    ]
    assert summary["retry_failed"] == {"n_retried": 1, "n_recovered": 1}
    text = format_summary(summary)
    assert "3 of 7 rows usable (42.9%)" in text
    assert "malformed TSV lines: 2 (line 3, 7)" in text
    assert "1 rows re-tried, 1 recovered" in text


# --- command line -----------------------------------------------------------------------------


def test_missing_tsv_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dialogclip.cli import main

    status = main(
        [
            "ingest-shard",
            *("--tsv", str(tmp_path / "Train_GCC-training.tsv"), "--shard", "00000"),
            *("--rows", "0:10", "--output", str(tmp_path / "s.parquet")),
            *("--stats", str(tmp_path / "s.json")),
        ]
    )
    assert status == 2
    message = capsys.readouterr().err
    assert "CC3M TSV not found" in message and "ConceptualCaptions/download" in message
    assert not (tmp_path / "s.parquet").exists()
