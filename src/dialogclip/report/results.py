"""Our evaluation results as the report reads them: percentages per dataset and metric.

Files (docs/architecture.md, "Evaluation"): ``eval/retrieval/{name}/{coco,flickr30k}.json``
(recall in [0, 1], CLIP_benchmark's convention) and ``eval/vqa/{name}/{vqa_real,vqa_abstract}.json``
(accuracy in percent, overall and per answer type). Everything is returned in percent, the
thesis' unit. A file that does not exist is simply no result (the table shows "-"); a file that
exists but cannot be read fails naming it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dialogclip.models.eval_entry import RETRIEVAL_SETS, result_path
from dialogclip.report.thesis import RETRIEVAL_METRICS, VQA_METRICS

log = logging.getLogger(__name__)

Metrics = dict[str, float]  # metric -> percent


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a valid metrics JSON ({err}); rerun its evaluation") from err
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise ValueError(f"{path}: no 'metrics' object; rerun its evaluation")
    return data


def read_metrics(results_dir: Path, name: str, dataset: str) -> Metrics | None:
    """Entry ``name``'s metrics on ``dataset`` in percent, or None when it has no result file."""
    path = result_path(results_dir, name, dataset)
    if not path.is_file():
        return None
    metrics = _read(path)["metrics"]
    if dataset in RETRIEVAL_SETS:
        missing = [m for m in RETRIEVAL_METRICS if m not in metrics]
        if missing:
            raise ValueError(f"{path}: metrics lack {missing}")
        return {metric: 100.0 * float(metrics[metric]) for metric in RETRIEVAL_METRICS}
    if "overall" not in metrics:
        raise ValueError(f"{path}: metrics lack 'overall'")
    per_type = metrics.get("per_answer_type") or {}
    values = {"overall": float(metrics["overall"])}
    values.update({kind: float(per_type[kind]) for kind in VQA_METRICS if kind in per_type})
    return values
