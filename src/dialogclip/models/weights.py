"""Pretrained open_clip weights fetched once into the project, so jobs never reach a hub.

``fetch_clip_weights`` (rule ``fetch_clip_weights``, command ``dialogclip fetch-clip-weights``)
downloads the weights of an open_clip pretrained tag with open_clip's own downloader (the
Hugging Face hub, or the tag's URL) on a machine with network, and stores them as one
safetensors file per (architecture, tag) under the weights folder (config ``weights_dir``):
``<weights_dir>/<architecture>__<tag>.safetensors``, with the tag's QuickGELU record in the
metadata. Evaluation and training jobs load that file (:func:`local_weights`); when it is
missing they fail at once naming it and the command that fetches it, instead of downloading
multi-GB weights mid-run on a GPU node that may have no network.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from dialogclip.core.config import ConfigError
from dialogclip.models.naming import is_checkpoint_path
from dialogclip.models.openclip import QUICKGELU_METADATA_KEY, register_model_configs

log = logging.getLogger(__name__)


def weights_file(weights_dir: str | Path, architecture: str, tag: str) -> Path:
    """Where the weights of ``architecture`` + pretrained ``tag`` are kept."""
    return Path(weights_dir) / f"{architecture}__{tag}.safetensors"


def fetch_command(architecture: str, tag: str, weights_dir: str | Path) -> str:
    """The command that fetches one tag's weights (shown in errors)."""
    return (
        f"dialogclip fetch-clip-weights --architecture {architecture} --pretrained {tag} "
        f"--weights-dir {weights_dir}"
    )


def local_weights(weights_dir: str | Path, architecture: str, pretrained: str) -> Path:
    """The fetched weights file of a pretrained tag; FileNotFoundError naming the file and the
    command that fetches it when it is missing."""
    if is_checkpoint_path(pretrained):
        raise ValueError(f"{pretrained} is a checkpoint path, not a pretrained tag")
    path = weights_file(weights_dir, architecture, pretrained)
    if not path.is_file():
        raise FileNotFoundError(
            f"open_clip weights not found: {path} ({architecture}, pretrained {pretrained}). "
            "Fetch them once on a machine with network: "
            f"`{fetch_command(architecture, pretrained, weights_dir)}` "
            "(or `snakemake clip_weights` for every configured model)"
        )
    return path


def tag_config(architecture: str, tag: str) -> dict:
    """open_clip's record of a pretrained tag (download location, preprocessing, QuickGELU)."""
    from open_clip.pretrained import get_pretrained_cfg

    register_model_configs()
    config = get_pretrained_cfg(architecture, tag)
    if not config:
        raise ConfigError(
            f"{architecture}: unknown pretrained tag {tag!r}; see open_clip.list_pretrained()"
        )
    return config


def fetch_clip_weights(architecture: str, tag: str, weights_dir: str | Path) -> Path:
    """Download the weights of ``architecture`` + ``tag`` and store them as safetensors.

    The download goes through ``open_clip.pretrained.download_pretrained`` (hub or URL, with
    its checksum checks) into a temporary cache; the state dict is read with
    ``weights_only=True`` and written atomically. Nothing is downloaded when the file exists.
    """
    from open_clip.factory import load_state_dict
    from open_clip.pretrained import download_pretrained
    from safetensors.torch import save_file

    from dialogclip.core.io import atomic_path
    from dialogclip.models.openclip import trained_with_quickgelu

    output = weights_file(weights_dir, architecture, tag)
    if output.is_file():
        log.info("already fetched: %s", output)
        return output
    config = tag_config(architecture, tag)
    with tempfile.TemporaryDirectory(prefix="clip-weights-") as cache:
        downloaded = download_pretrained(config, cache_dir=cache)
        if not downloaded:
            raise FileNotFoundError(f"open_clip has no download for {architecture} {tag}")
        state = load_state_dict(downloaded, weights_only=True)
        state = {name: tensor.contiguous() for name, tensor in state.items()}
        metadata = {
            "architecture": architecture,
            "pretrained": tag,
            QUICKGELU_METADATA_KEY: json.dumps(trained_with_quickgelu(architecture, tag)),
            "source": config.get("hf_hub") or config.get("url", ""),
        }
        with atomic_path(output) as tmp:
            save_file(state, str(tmp), metadata=metadata)
    log.info("fetched %s %s -> %s", architecture, tag, output)
    return output
