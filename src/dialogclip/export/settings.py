"""The ``export`` section of the config, typed."""

from __future__ import annotations

from dataclasses import dataclass

from dialogclip.core.config import ConfigError


@dataclass(frozen=True)
class DatasetExport:
    """``export.dataset``: the dialogue-enriched CC3M as a dataset folder (rule
    ``export_dataset``, target ``dataset``)."""

    activate: bool = False  # part of the target `all` (else only `snakemake dataset` builds it)
    pretty_name: str = "Conceptual Captions 3M with VLM dialogue (DialogCLIP)"
    # Appended to the card's licence section: e.g. the terms a site adds to what it shares.
    licence_note: str = ""

    def __post_init__(self) -> None:
        if not self.pretty_name.strip():
            raise ConfigError("export.dataset.pretty_name must not be empty")


@dataclass(frozen=True)
class ModelsExport:
    """``export.models``: every training run's models as files open_clip loads (rule
    ``export_models``, one folder per run under results/export/models/, target ``models``)."""

    activate: bool = False  # part of the target `all` (else only `snakemake models` builds it)
