"""The whole-pipeline report: every model stage's test WER, size, sparsity and emulated latency in
one table (``reports/pipeline.csv``, drawn by ``dvc plots show``) and one figure (an MLflow artifact).

Rows follow the model through the pipeline: teacher -> distilled student -> compressed -> MWER ->
exported (the integer runtime's WER, the file's size, and the evaluate stage's emulated latency
when it has run); then the reference recognizer (the ``reference`` stage: Whisper, no emulated
latency), omitted with a log line when its report is missing or says it was skipped.
``wer_test_whisper_norm`` is the test WER under Whisper's English normalizer (the reference, and the
exported student as the evaluate stage re-scores it); ``size_ratio_reference`` each row's bytes over
the reference's.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing global

log = logging.getLogger(__name__)

COLUMNS = ["stage", "model", "wer_test", "size_kb", "sparsity", "emulated_latency_ms", "wer_test_whisper_norm",
           "size_ratio_reference"]
ROWS = [("train_teacher", "teacher (fp32)"), ("distill", "student (fp32)"), ("compress", "compressed (QAT)"),
        ("mwer", "MWER"), ("export", "exported (integer runtime)")]
REFERENCE = ("reference", "reference (Whisper)")


def _read(reports: Path, stage: str) -> dict[str, Any]:
    p = reports / f"{stage}.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def collect(reports_dir: str | Path) -> list[dict[str, Any]]:
    """One row per model stage that has a report, in pipeline order, then the reference."""
    reports = Path(reports_dir)
    evaluate = _read(reports, "evaluate")
    reference = _read(reports, REFERENCE[0])
    if not reference:
        log.info("no reference row: %s not found (run the reference stage)", reports / f"{REFERENCE[0]}.json")
    elif reference.get("skipped") or "size_bytes" not in reference:
        log.info("no reference row: the reference stage was skipped (see data/reference/results/skipped.txt)")
        reference = {}
    ref_bytes = reference.get("size_bytes")
    rows = []
    for stage, label in ROWS:
        r = _read(reports, stage)
        if not r:
            continue
        latency = r.get("emulated_latency_ms")
        if stage == "export" and "emulated_latency_ms" in evaluate:
            latency = evaluate["emulated_latency_ms"]  # measured on the integer runtime's executed MACs
        wn = evaluate.get("wer_whisper_norm/test") if stage == "export" else None
        rows.append({"stage": stage, "model": label, "wer_test": r.get("wer/test", r.get("wer")),
                     "size_kb": round(r["size_bytes"] / 1000, 3) if "size_bytes" in r else None,
                     "sparsity": r.get("sparsity"), "emulated_latency_ms": latency, "wer_test_whisper_norm": wn,
                     "size_ratio_reference": float(f"{r['size_bytes'] / ref_bytes:.6g}")
                     if ref_bytes and "size_bytes" in r else None})
    if reference:
        rows.append({"stage": REFERENCE[0], "model": REFERENCE[1],
                     "wer_test": reference.get("wer/test", reference.get("wer")),
                     "size_kb": round(ref_bytes / 1000, 3), "sparsity": None, "emulated_latency_ms": None,
                     "wer_test_whisper_norm": reference.get("wer_whisper_norm/test"), "size_ratio_reference": 1.0})
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
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "size_kb", "size (KB)"), (axes[1], "emulated_latency_ms", "emulated latency (ms)")):
        pts = [r for r in rows if r.get(key) and r.get("wer_test") is not None]
        ours = [r for r in pts if r["stage"] != REFERENCE[0]]
        ax.plot([r[key] for r in ours], [r["wer_test"] for r in ours], "o-", color="tab:blue")
        for r in pts:
            if r["stage"] == REFERENCE[0]:  # not part of the pipeline's line
                ax.plot([r[key]], [r["wer_test"]], "*", color="tab:red", markersize=11)
            ax.annotate(r["model"], (r[key], r["wer_test"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test WER (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("edgeasr pipeline: teacher -> exported student")
    fig.tight_layout()
    return fig
