"""The roll-up onto the pipeline's parent run: every stage report as ``<stage>/<key>`` metrics
(cached stages make no child run but keep their report), ``params.yaml`` and ``dvc.lock`` as
artifacts."""

from __future__ import annotations

import json
import logging
import numbers
from collections.abc import Mapping
from pathlib import Path

from mlflow.tracking import MlflowClient

from .values import metric_batches, safe_key

log = logging.getLogger(__name__)


def report_metrics(reports: Path) -> dict[str, float]:
    """``<stage>/<key>`` -> value over every ``<stage>.json`` in ``reports`` (numbers only)."""
    metrics: dict[str, float] = {}
    for report in sorted(reports.glob("*.json")):
        try:
            data = json.loads(report.read_text())
        except (OSError, ValueError) as err:
            log.warning("skipping unreadable report %s: %s", report, err)
            continue
        if not isinstance(data, Mapping):
            continue
        prefix = safe_key(report.stem)
        for key, value in data.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            metrics[safe_key(f"{prefix}/{key}")] = float(value)
    return metrics


def rollup(client: MlflowClient, parent_run_id: str, root: Path) -> None:
    """Reports -> ``<stage>/<key>`` parent metrics; params.yaml, dvc.lock -> parent artifacts."""
    for batch in metric_batches(report_metrics(root / "reports")):
        client.log_batch(parent_run_id, metrics=batch, synchronous=True)
    for name in ("params.yaml", "dvc.lock"):
        path = root / name
        if path.is_file():
            client.log_artifact(parent_run_id, str(path))
