"""Which URLs a shard job may fetch, and how local ``file:`` URLs are resolved.

Only http(s) by default. img2dataset fetches with ``urllib``, which also opens ``file:``,
``ftp:`` and ``data:`` URLs; a TSV from an untrusted source could then pull any file the job can
read into the dataset (local file disclosure). ``file:`` URLs are therefore accepted only when
the config says so (``ingest.allow_file_urls``, on in the demo), and a relative one
(``file:images/0001.jpg``) is resolved against the TSV's folder so that a TSV and its images can
be moved together.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

WEB_SCHEMES = ("http", "https")


class DisallowedUrl(ValueError):
    """The URL's scheme is not allowed by the configuration; the message says why."""


def fetchable_url(url: str, *, allow_file_urls: bool, base_dir: Path) -> str:
    """The URL img2dataset should fetch for the TSV's ``url``, or raise :class:`DisallowedUrl`.

    http(s) URLs are returned unchanged; allowed ``file:`` URLs become absolute
    ``file:///...`` URLs (relative paths resolved against ``base_dir``).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in WEB_SCHEMES:
        return url
    allowed = ", ".join((*WEB_SCHEMES, "file") if allow_file_urls else WEB_SCHEMES)
    if not scheme:
        raise DisallowedUrl(f"URL has no scheme (allowed: {allowed})")
    if scheme != "file" or not allow_file_urls:
        hint = "" if scheme != "file" else "; set ingest.allow_file_urls to accept local files"
        raise DisallowedUrl(f"URL scheme '{scheme}' is not allowed (allowed: {allowed}){hint}")
    if parts.netloc not in ("", "localhost"):
        raise DisallowedUrl(f"file URL names a remote host '{parts.netloc}'")
    path = Path(url2pathname(parts.path))
    if not path.is_absolute():
        path = base_dir / path
    return path.resolve().as_uri()
