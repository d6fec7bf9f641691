"""Generator (VLM) weights fetched once, at a pinned revision, so generation jobs never reach a hub.

``dialogclip fetch-vlm-weights`` (rule ``fetch_vlm_weights``; ``snakemake vlm_weights`` fetches
every configured generator) copies one Hugging Face model repository at one commit into
``resources/vlm_weights/<org>--<name>/<commit>/``, on a machine with internet access (the
controller: the rule is local). Generation jobs load that folder only (``dialogclip
generate-dialogue --model-dir``) and record the model id and commit in their Parquet metadata;
the workflow refuses to plan a generation job whose folder is missing, naming the command that
fetches it (``workflow/rules/generate_functions.smk``).

It speaks the hub's two documented HTTP endpoints, nothing else: the file list of a revision
(``GET {endpoint}/api/models/{repo}/tree/{revision}?recursive=true``) and each file
(``GET {endpoint}/{repo}/resolve/{revision}/{path}``, redirects followed). ``HF_ENDPOINT`` names
a mirror, ``HF_TOKEN`` is sent when set. Only what a safetensors checkpoint needs is copied
(:data:`KEPT`: configs, tokenizer and processor files, ``*.safetensors``; never pickled
``*.bin``); every file is checked against the hub's size and sha256 (git's blob id for small
files). The folder appears complete or not at all (a temporary sibling, then a rename), with a
record of what was fetched (:data:`FETCHED`), which jobs check.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dialogclip.core.config import ConfigError

log = logging.getLogger(__name__)

WEIGHTS_ROOT = Path("resources") / "vlm_weights"  # under the working directory
FETCHED = "dialogclip-fetched.json"  # the record a complete folder holds
DEFAULT_ENDPOINT = "https://huggingface.co"
# What loading a safetensors checkpoint with its tokenizer and processor reads.
KEPT = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken")
COMMIT = re.compile(r"[0-9a-f]{40}")
# owner/name of a hub repository; the hub allows neither "--" nor ".." in either part.
HUB_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.]|-(?!-))*/[A-Za-z0-9](?:[A-Za-z0-9_.]|-(?!-))*")
TIMEOUT_S = 60
CHUNK = 1 << 20


def is_hub_id(model: str) -> bool:
    """Whether ``model`` names a hub repository (``owner/name``) rather than a local folder."""
    return HUB_ID.fullmatch(model) is not None and not Path(model).exists()


def folder_name(model: str) -> str:
    """``owner--name``: the hub id as one path component (reversible: ids never hold "--")."""
    return model.replace("/", "--", 1)


def model_of_folder(name: str) -> str:
    """The hub id whose :func:`folder_name` is ``name``."""
    return name.replace("--", "/", 1)


def weights_folder(model: str, revision: str, root: str | os.PathLike[str] = WEIGHTS_ROOT) -> Path:
    """Where ``model`` at ``revision`` is kept."""
    return Path(root) / folder_name(model) / revision


def fetch_command(model: str, revision: str, folder: str | os.PathLike[str]) -> str:
    """The command that fetches one model (shown in errors)."""
    return f"dialogclip fetch-vlm-weights --model {model} --revision {revision} --output {folder}"


def revision_problem(key: str, model: str, revision: str | None) -> str | None:
    """Why ``revision`` does not pin ``model`` (config key ``key``); None when it does."""
    if revision is None:
        return (
            f"{key}.revision is not set: a hub model ({model}) must be pinned to a commit "
            "(docs/gpu.md, 'Generator weights')"
        )
    if COMMIT.fullmatch(revision) is None:
        return (
            f"{key}.revision {revision!r} is not a commit: pin {model} to a 40-character commit "
            "hash (a branch or tag moves)"
        )
    return None


def read_record(folder: Path) -> dict | None:
    """The fetch record of ``folder`` (None when there is none)."""
    try:
        return json.loads((folder / FETCHED).read_text())
    except (OSError, ValueError):
        return None


def require_fetched(folder: str | os.PathLike[str], model: str, revision: str | None) -> Path:
    """``folder`` when it holds ``model`` at ``revision`` as fetched here.

    Raises:
        FileNotFoundError: no complete fetch there (names the command that makes one).
        ConfigError: it holds another model or revision than the config says.
    """
    folder = Path(folder)
    record = read_record(folder)
    if record is None:
        raise FileNotFoundError(
            f"generator weights not found: {folder} has no {FETCHED} ({model} at {revision}). "
            "Fetch them once on a machine with internet access: `snakemake --cores 1 "
            f"vlm_weights` (or `{fetch_command(model, revision or '<commit>', folder)}`)"
        )
    if (record.get("model"), record.get("revision")) != (model, revision):
        raise ConfigError(
            f"{folder} holds {record.get('model')} at {record.get('revision')}, but the config "
            f"asks for {model} at {revision}"
        )
    return folder


def write_record(
    folder: Path, model: str, revision: str, endpoint: str | None, files: dict[str, int]
) -> None:
    """Write the fetch record of ``folder``: what it holds (file name -> bytes) and whence.
    (A dry run of a config needs only the records: bench/bench_dryrun.py writes them alone.)"""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"model": model, "revision": revision, "endpoint": endpoint, "files": files}
    (folder / FETCHED).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


@dataclass(frozen=True)
class HubFile:
    """One file of a repository revision, as the hub lists it."""

    path: str
    size: int
    sha256: str | None  # LFS files: the sha256 of the content
    git_oid: str | None  # other files: git's blob id (sha1 of "blob <size>\0" + content)


def _request(url: str) -> urllib.request.Request:
    headers = {"User-Agent": "dialogclip-fetch-vlm-weights"}
    token = os.environ.get("HF_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(url, headers=headers)


def _next_link(header: str | None) -> str | None:
    match = re.search(r'<([^>]+)>\s*;\s*rel="next"', header or "")
    return match[1] if match else None


def list_files(model: str, revision: str, endpoint: str) -> list[HubFile]:
    """Every file of ``model`` at ``revision`` (the tree endpoint, pages followed)."""
    url: str | None = (
        f"{endpoint}/api/models/{model}/tree/{urllib.parse.quote(revision)}?recursive=true"
    )
    files = []
    while url:
        with urllib.request.urlopen(_request(url), timeout=TIMEOUT_S) as response:
            entries = json.load(response)
            url = _next_link(response.headers.get("Link"))
        for entry in entries:
            if entry.get("type") != "file":
                continue
            lfs = entry.get("lfs") or {}
            files.append(
                HubFile(
                    path=entry["path"],
                    size=int(lfs.get("size", entry.get("size", 0))),
                    sha256=lfs.get("oid"),
                    git_oid=None if lfs else entry.get("oid"),
                )
            )
    return files


def kept(files: list[HubFile]) -> list[HubFile]:
    """The files a safetensors checkpoint needs (:data:`KEPT`)."""
    return [f for f in files if any(fnmatch.fnmatch(Path(f.path).name, p) for p in KEPT)]


def _chunks(response) -> Iterator[bytes]:
    while block := response.read(CHUNK):
        yield block


def download(url: str, target: Path, expected: HubFile) -> None:
    """Copy ``url`` to ``target``, checking size and hash against ``expected``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    sha256, size = hashlib.sha256(), 0
    git = hashlib.sha1(f"blob {expected.size}\0".encode())  # git's blob id, not a security hash
    with (
        urllib.request.urlopen(_request(url), timeout=TIMEOUT_S) as response,
        open(target, "wb") as out,
    ):
        for block in _chunks(response):
            out.write(block)
            sha256.update(block)
            git.update(block)
            size += len(block)
    problems = []
    if size != expected.size:
        problems.append(f"{size} bytes, not {expected.size}")
    if expected.sha256 and sha256.hexdigest() != expected.sha256:
        problems.append(f"sha256 {sha256.hexdigest()}, not {expected.sha256}")
    if expected.git_oid and git.hexdigest() != expected.git_oid:
        problems.append(f"git blob id {git.hexdigest()}, not {expected.git_oid}")
    if problems:
        raise OSError(f"{url}: download corrupt ({'; '.join(problems)})")


def fetch_vlm_weights(
    model: str, revision: str, folder: str | os.PathLike[str], endpoint: str | None = None
) -> Path:
    """Fetch ``model`` at commit ``revision`` into ``folder`` (nothing when already there).

    Returns:
        the folder, holding :data:`KEPT` files and :data:`FETCHED`.
    """
    problem = revision_problem("--revision", model, revision)
    if problem:
        raise ConfigError(problem)
    folder = Path(folder)
    if read_record(folder) is not None:
        require_fetched(folder, model, revision)
        log.info("already fetched: %s", folder)
        return folder
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    started = time.monotonic()
    files = kept(list_files(model, revision, endpoint))
    if not any(f.path.endswith(".safetensors") for f in files):
        raise ConfigError(f"{model} at {revision} has no *.safetensors weights to fetch")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for hub_file in files:
            url = f"{endpoint}/{model}/resolve/{revision}/{urllib.parse.quote(hub_file.path)}"
            log.info("fetching %s (%d bytes)", hub_file.path, hub_file.size)
            download(url, tmp / hub_file.path, hub_file)
        write_record(tmp, model, revision, endpoint, {f.path: f.size for f in files})
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = sum(f.size for f in files)
    log.info(
        "fetched %s at %s: %d files, %.2f GB in %.0f s -> %s",
        model,
        revision,
        len(files),
        total / 1e9,
        time.monotonic() - started,
        folder,
    )
    return folder
