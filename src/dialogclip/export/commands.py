"""Commands of the export stage.

- ``dialogclip export-dataset``: the dialogue-enriched CC3M as a dataset folder with its card
  (rule ``export_dataset``; :mod:`dialogclip.export.dataset`).
- ``dialogclip export-models``: a training run's weight blends and DRAFT tower as open_clip
  checkpoints, a third tower with its manifest (rule ``export_models``;
  :mod:`dialogclip.export.models`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dialogclip.core.cli_utils import add_dialogue_argument, add_params_argument, dialogue_shards
from dialogclip.core.config import ConfigError, section_from_dict


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's commands to the `dialogclip` parser."""
    dataset = subparsers.add_parser(
        "export-dataset",
        help="the dialogue-enriched CC3M as a dataset folder (Parquet shards + dataset card)",
    )
    add_params_argument(dataset, "export.dataset")
    dataset.add_argument(
        "--ingested", required=True, nargs="+", type=Path, help="the ingested shards (Parquet)"
    )
    add_dialogue_argument(dataset)
    dataset.add_argument("--output", required=True, type=Path, help="the dataset folder")
    dataset.set_defaults(func=_export_dataset)

    models = subparsers.add_parser(
        "export-models",
        help="a training run's models as files open_clip (and CLIP_benchmark) load",
    )
    add_params_argument(models, "the run (name, method) and its evaluation entries")
    models.add_argument("--tower", required=True, type=Path, help="the run's final.safetensors")
    models.add_argument("--weights-dir", type=Path, help="config weights_dir (pretrained tags)")
    models.add_argument("--output", required=True, type=Path, help="the folder to write")
    models.set_defaults(func=_export_models)


def _export_dataset(args: argparse.Namespace) -> int:
    from dialogclip.export.dataset import export_dataset
    from dialogclip.export.settings import DatasetExport

    settings = section_from_dict(DatasetExport, args.params, "export.dataset")
    export_dataset(args.ingested, dialogue_shards(args.dialogue), args.output, settings)
    return 0


def _export_models(args: argparse.Namespace) -> int:
    from dialogclip.export.models import export_run
    from dialogclip.models.eval_entry import EvalEntry

    params = args.params
    for key in ("run", "method", "entries"):
        if key not in params:
            raise ConfigError(f"export-models --params: missing {key!r}")
    entries = [
        section_from_dict(EvalEntry, entry, f"evaluation entry {entry.get('name')}")
        for entry in params["entries"]
    ]
    export_run(params["run"], params["method"], entries, args.tower, args.output, args.weights_dir)
    return 0
