"""The whole-pipeline report: every model stage's test WER, size, sparsity and emulated latency in
one table (``reports/pipeline.csv``, drawn by ``dvc plots show``) and one figure (an MLflow artifact).

Rows follow the model through the pipeline: teacher -> distilled student -> compressed -> MWER ->
exported (the integer runtime's WER, the file's size, and the evaluate stage's emulated latency
when it has run).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

COLUMNS = ["stage", "model", "wer_test", "size_kb", "sparsity", "emulated_latency_ms"]
ROWS = [("train_teacher", "teacher (fp32)"), ("distill", "student (fp32)"), ("compress", "compressed (QAT)"),
        ("mwer", "MWER"), ("export", "exported (integer runtime)")]


def _read(reports: Path, stage: str) -> dict[str, Any]:
    p = reports / f"{stage}.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def collect(reports_dir: str | Path) -> list[dict[str, Any]]:
    """One row per model stage that has a report, in pipeline order."""
    reports = Path(reports_dir)
    evaluate = _read(reports, "evaluate")
    rows = []
    for stage, label in ROWS:
        r = _read(reports, stage)
        if not r:
            continue
        latency = r.get("emulated_latency_ms")
        if stage == "export" and "emulated_latency_ms" in evaluate:
            latency = evaluate["emulated_latency_ms"]  # measured on the integer runtime's executed MACs
        rows.append({"stage": stage, "model": label, "wer_test": r.get("wer/test", r.get("wer")),
                     "size_kb": round(r["size_bytes"] / 1000, 3) if "size_bytes" in r else None,
                     "sparsity": r.get("sparsity"), "emulated_latency_ms": latency})
    return rows


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
    return path


def figure(rows: list[dict[str, Any]]):
    """WER against size and against emulated latency, one labelled point per stage (log x axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], "size_kb", "size (KB)"), (axes[1], "emulated_latency_ms", "emulated latency (ms)")):
        pts = [r for r in rows if r.get(key) and r.get("wer_test") is not None]
        ax.plot([r[key] for r in pts], [r["wer_test"] for r in pts], "o-", color="tab:blue")
        for r in pts:
            ax.annotate(r["model"], (r[key], r["wer_test"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test WER (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("edgeasr pipeline: teacher -> exported student")
    fig.tight_layout()
    return fig
