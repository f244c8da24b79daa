"""Hydra multirun support: every job is an MLflow child run under one parent (the invocation's),
and at the end :class:`SweepReport` draws WER against size and emulated latency over all jobs with
the Pareto frontier, logged to that parent.

    python pipelines/compress.py -m compress.sparsity=0.3,0.5,0.7 compress.bits=8,6,4

Each job writes its outputs and ``reports/<stage>.json`` under its own ``multirun/.../<job>/``
folder, so a sweep never overwrites the DVC-tracked outputs in ``data/``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower is better), sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job: its overrides and the metrics of every report it wrote."""
    rows = []
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / "reports").is_dir()):
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = overrides_file.read_text().strip() if overrides_file.is_file() else job.name
        for report in sorted((job / "reports").glob("*.json")):
            rows.append({"job": job.name, "stage": report.stem, "overrides": overrides,
                         **json.loads(report.read_text())})
    return rows


def figure(rows: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label in ((axes[0], "size_bytes", "size (KB)"), (axes[1], "emulated_latency_ms", "emulated latency (ms)")):
        pts = [(r[key] / (1000 if key == "size_bytes" else 1), r["wer"]) for r in rows]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18)
        for r, p in zip(rows, pts):
            ax.annotate(r["job"], p, fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "r--", lw=1, label="Pareto frontier")
        ax.set_xlabel(label)
        ax.set_ylabel("test WER (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


class SweepReport(Callback):
    """Hydra callback: after a multirun, ``pareto.png`` + ``sweep.json`` in the sweep folder and on
    the sweep's MLflow parent run."""

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = [r for r in collect(sweep_dir) if "wer" in r and "size_bytes" in r and "emulated_latency_ms" in r]
        if not rows:
            log.warning("sweep %s: no job wrote a report with wer, size_bytes and emulated_latency_ms", sweep_dir)
            return
        (sweep_dir / "sweep.json").write_text(json.dumps(rows, indent=1))
        fig = figure(rows)
        fig.savefig(sweep_dir / "pareto.png", dpi=120)
        try:
            from mlflow.tracking import MlflowClient

            from edgeasr.tracking import current_parent_run_id, tracking_uri

            parent = current_parent_run_id(str(config.get("tracking", {}).get("experiment", "edgeasr")))
            if parent is None:
                log.warning("sweep %s: no MLflow parent run found for this invocation", sweep_dir)
                return
            client = MlflowClient(tracking_uri=tracking_uri())
            client.log_figure(parent, fig, "sweep/pareto.png")
            client.log_artifact(parent, str(sweep_dir / "sweep.json"), "sweep")
            client.set_tag(parent, "edgeasr.sweep_dir", str(sweep_dir))
        except Exception as err:  # the sweep's own results are on disk either way
            log.warning("could not log the sweep report to MLflow: %s", err)
        log.info("sweep report: %s (%d jobs)", sweep_dir / "pareto.png", len(rows))
