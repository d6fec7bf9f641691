"""Typed view of the ``ingest`` config section (see workflow/schemas/config.schema.yaml)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from dialogclip.core.config import ConfigError, section_from_dict

# Failure kinds worth a second try: the server or the network may behave differently later.
# Permanent ones (http_404, decode_error, file_not_found, robots_disallowed, ...) are not retried.
TRANSIENT_ERROR_KINDS = (
    "timeout",
    "connection",
    "dns",
    "http_408",
    "http_429",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "missing_result",
    "other_download_error",
)

RESIZE_MODES = ("no", "keep_ratio", "center_crop", "border", "keep_ratio_largest")


@dataclass(frozen=True)
class RetrySettings:
    """The optional second pass over the rows whose download failed."""

    activate: bool = False  # run the pass; its shards then become the ingested shards
    # error_kind values to re-try; None = every row with status failed_to_download
    error_kinds: list[str] | None = field(default_factory=lambda: list(TRANSIENT_ERROR_KINDS))


@dataclass(frozen=True)
class IngestSettings:
    """How img2dataset fetches, checks and re-encodes the images of one shard."""

    image_size: int = 336  # target size in px (shortest side for keep_ratio)
    resize_mode: str = "keep_ratio"  # img2dataset resize mode
    resize_only_if_bigger: bool = True  # never upscale small images
    encode_quality: int = 95  # JPEG quality of the stored image
    timeout: float = 10.0  # seconds without data before a download is abandoned
    download_retries: int = 0  # img2dataset's immediate per-URL retries
    max_image_pixels: int = 178_956_970  # decoded-size cap (Pillow's decompression-bomb limit)
    allow_file_urls: bool = False  # accept file:// URLs (local files); off for untrusted TSVs
    user_agent_token: str | None = None  # appended to img2dataset's User-Agent
    retry_failed: RetrySettings = field(default_factory=RetrySettings)

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(
                f"ingest.resize_mode: {self.resize_mode!r} is not one of {list(RESIZE_MODES)}"
            )

    def download_options(self) -> dict[str, Any]:
        """The settings that change what the first download pass produces (not retry_failed)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "retry_failed"}


def ingest_settings(params: Mapping[str, Any]) -> IngestSettings:
    """Build :class:`IngestSettings` from the ``ingest`` section (``--params`` JSON)."""
    return section_from_dict(IngestSettings, params, "ingest")
