"""Hydra multirun support: every job is an MLflow child run under one parent (the invocation's),
and at the end :class:`SweepReport` draws WER against size and emulated latency over all jobs with
the Pareto frontier, logged to that parent.

    python pipelines/compress.py -m compress.sparsity=0.3,0.5,0.7 compress.bits=8,6,4

Each job writes its outputs and ``reports/<stage>.json`` under its own ``multirun/.../<job>/``
folder, so a sweep never overwrites the DVC-tracked outputs in ``data/``. The parent run is named
``sweep:<stage>`` (the invocation variable set here marks it: ``edgeasr.tracking.parent``), and its
MLflow note lists every job's four metrics as the jobs finish (``edgeasr.tracking.note``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient

from edgeasr.tracking import INVOCATION_ENV, current_parent_run_id, invocation, tracking_uri

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


def job_overrides(job: Path) -> str:
    """The job's overrides as Hydra saved them (``.hydra/overrides.yaml``), or its folder name."""
    overrides_file = job / ".hydra" / "overrides.yaml"
    return overrides_file.read_text().strip() if overrides_file.is_file() else job.name


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job: its overrides and the metrics of every report it wrote."""
    rows = []
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / "reports").is_dir()):
        overrides = job_overrides(job)
        for report in sorted((job / "reports").glob("*.json")):
            rows.append({"job": job.name, "stage": report.stem, "overrides": overrides,
                         **json.loads(report.read_text())})
    return rows


def figure(rows: list[dict[str, Any]]):
    # matplotlib not at the top: Hydra imports this module at the start of every stage run
    # (conf/config.yaml callback), most never draw; matplotlib costs 0.37 s of CPU (measured).
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing global

    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
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


def collect_curves(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per validation of every job that trained: job, overrides and the learning-curve point."""
    rows = []
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        overrides = job_overrides(job)
        for curve in sorted(job.glob("data/*/results/learning_curve.json")):
            for point in json.loads(curve.read_text()):
                rows.append({"job": job.name, "stage": curve.parent.parent.name,
                             "overrides": " ".join(overrides.replace("- ", "").split()), **point})
    return rows


def curves_figure(rows: list[dict[str, Any]]):
    """Dev WER against wall-clock minutes and against audio hours trained on, one line per job."""
    from matplotlib.figure import Figure  # not at the top: see figure()

    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    jobs = sorted({r["job"] for r in rows}, key=lambda j: (len(j), j))
    overrides = {r["job"]: r["overrides"].split() for r in rows}
    shared = set.intersection(*(set(o) for o in overrides.values())) if len(overrides) > 1 else set()
    for job in jobs:
        pts = [r for r in rows if r["job"] == job]
        label = f"{job}: {' '.join(o for o in overrides[job] if o not in shared) or 'defaults'}"[:90]
        axes[0].plot([p["minutes"] for p in pts], [p["val_wer"] for p in pts], marker=".", label=label)
        axes[1].plot([p.get("audio_h", float("nan")) for p in pts], [p["val_wer"] for p in pts], marker=".")
    for ax, xlabel in zip(axes, ("wall-clock minutes (training + validation)", "audio hours trained on")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("dev WER (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def _log_to_parent(config, sweep_dir: Path, figures: dict[str, Any], files: list[Path]) -> None:
    try:
        parent = current_parent_run_id(str(config.get("tracking", {}).get("experiment", "edgeasr")))
        if parent is None:
            log.warning("sweep %s: no MLflow parent run found for this invocation", sweep_dir)
            return
        client = MlflowClient(tracking_uri=tracking_uri())
        for name, fig in figures.items():
            client.log_figure(parent, fig, f"sweep/{name}")
        for f in files:
            client.log_artifact(parent, str(f), "sweep")
        client.set_tag(parent, "edgeasr.sweep_dir", str(sweep_dir))
    except Exception as err:  # the sweep's own results are on disk either way
        log.warning("could not log the sweep report to MLflow: %s", err)


class SweepReport(Callback):
    """Hydra callback: after a multirun, in the sweep folder and on the sweep's MLflow parent run:
    ``pareto.png`` + ``sweep.json`` (jobs whose reports carry wer, size and latency) and
    ``curves.png`` + ``curves.csv`` (jobs that wrote a learning curve: the convergence harness)."""

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        # Worker processes (hydra/launcher=joblib) inherit the environment: every job then finds
        # the same parent run as the jobs of the in-process launcher do.
        os.environ.setdefault(INVOCATION_ENV, invocation()[0])

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        figures, files = {}, []
        curves = collect_curves(sweep_dir)
        if curves:
            with open(sweep_dir / "curves.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(curves[0]), extrasaction="ignore")
                writer.writeheader()
                writer.writerows(curves)
            figures["curves.png"] = curves_figure(curves)
            figures["curves.png"].savefig(sweep_dir / "curves.png", dpi=120)
            files.append(sweep_dir / "curves.csv")
        rows = [r for r in collect(sweep_dir) if "wer" in r and "size_bytes" in r and "emulated_latency_ms" in r]
        if rows:
            (sweep_dir / "sweep.json").write_text(json.dumps(rows, indent=1))
            figures["pareto.png"] = figure(rows)
            figures["pareto.png"].savefig(sweep_dir / "pareto.png", dpi=120)
            files.append(sweep_dir / "sweep.json")
        if not figures:
            log.warning("sweep %s: no job wrote a report with wer, size_bytes and emulated_latency_ms", sweep_dir)
            return
        _log_to_parent(config, sweep_dir, figures, files)
        log.info("sweep report: %s (%d jobs)", ", ".join(str(sweep_dir / n) for n in figures), len({r["job"] for r in rows + curves}))
