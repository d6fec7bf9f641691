"""Row statuses and the short ``error_kind`` derived from each failure message.

img2dataset reports a failure as free text (``str(exception)`` from urllib or OpenCV). For the
summary and for choosing what to re-try we map that text to a small vocabulary of kinds; the
full message stays in ``error_message``.
"""

from __future__ import annotations

import re

# Row statuses. The first three are img2dataset's own; the last two are decided before
# download by this package.
SUCCESS = "success"
FAILED_TO_DOWNLOAD = "failed_to_download"
FAILED_TO_RESIZE = "failed_to_resize"
DISALLOWED_URL = "disallowed_url"
MALFORMED_ROW = "malformed_row"
STATUSES = (SUCCESS, FAILED_TO_DOWNLOAD, FAILED_TO_RESIZE, DISALLOWED_URL, MALFORMED_ROW)

DISALLOWED_SCHEME = "disallowed_scheme"
MISSING_RESULT = "missing_result"  # img2dataset returned no row for a submitted URL
DECODE_ERROR = "decode_error"

_HTTP_STATUS = re.compile(r"HTTP Error (\d{3})")

# (kind, pattern) pairs tried in order on download error messages.
_DOWNLOAD_PATTERNS = (
    ("timeout", re.compile(r"timed out|timeout", re.IGNORECASE)),
    ("robots_disallowed", re.compile(r"X-Robots-Tag")),
    (
        "dns",
        re.compile(
            r"Name or service not known|nodename nor servname|name resolution|"
            r"No address associated|getaddrinfo failed",
            re.IGNORECASE,
        ),
    ),
    ("ssl", re.compile(r"SSL|CERTIFICATE", re.IGNORECASE)),
    ("file_not_found", re.compile(r"No such file or directory|Is a directory")),
    (
        "connection",
        re.compile(
            r"Connection (refused|reset|aborted)|Remote end closed|RemoteDisconnected|"
            r"IncompleteRead|Broken pipe|unreachable|No route to host|EOF occurred",
            re.IGNORECASE,
        ),
    ),
)

_RESIZE_PATTERNS = (
    ("image_too_large", re.compile(r"CV_IO_MAX_IMAGE_PIXELS|image area too large")),
    (DECODE_ERROR, re.compile(r"decoding error|imdecode|Invalid image", re.IGNORECASE)),
    ("image_too_small", re.compile(r"image too small")),
    ("aspect_ratio_too_large", re.compile(r"aspect ratio too large")),
)


def classify_error(status: str, message: str | None) -> str | None:
    """The ``error_kind`` of a download or resize failure (None for a success).

    Download failures: ``http_<code>``, ``timeout``, ``dns``, ``ssl``, ``connection``,
    ``file_not_found``, ``robots_disallowed``, ``missing_result`` or ``other_download_error``.
    Resize (decode) failures: ``image_too_large``, ``decode_error``, ``image_too_small``,
    ``aspect_ratio_too_large`` or ``other_resize_error``.
    """
    if status == SUCCESS:
        return None
    text = message or ""
    if status == FAILED_TO_DOWNLOAD:
        if match := _HTTP_STATUS.search(text):
            return f"http_{match.group(1)}"
        return _first_match(_DOWNLOAD_PATTERNS, text, "other_download_error")
    if status == FAILED_TO_RESIZE:
        return _first_match(_RESIZE_PATTERNS, text, "other_resize_error")
    raise ValueError(f"classify_error: status {status!r} carries its own kind")


def _first_match(patterns: tuple[tuple[str, re.Pattern[str]], ...], text: str, default: str) -> str:
    for kind, pattern in patterns:
        if pattern.search(text):
            return kind
    return default
