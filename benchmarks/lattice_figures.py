"""Lattice figures on a finished run's outputs, read-only: the evaluate stage's lattice step
(:func:`edgeasr.stages.evaluate_lattice.lattice_metrics`) on ``<run>/data``, files into ``--out``.

Usage: python benchmarks/lattice_figures.py /path/to/run --out /tmp/lattices [overrides...]
e.g. ``evaluate.lattice.max_utts=100`` or ``'evaluate.lattice.splits=[test,dev]'``. Prints the
metrics as JSON (the same keys the stage reports). Manifests name feature and audio files relative
to the run's root, so this runs from there.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from conf_loader import compose
from edgeasr.runtime import load_student
from edgeasr.stages.common import stage_datamodule
from edgeasr.stages.evaluate_lattice import lattice_metrics, pytorch_student


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a repository root whose data/ holds a finished pipeline run")
    ap.add_argument("--out", type=Path, required=True, help="where results/lattices/ goes (not inside the run)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()
    run, out = args.run.resolve(), args.out.resolve()
    cfg = compose(list(args.overrides) + [f"paths.data_dir={run / 'data'}"])
    torch.set_num_threads(int(cfg.evaluate.num_threads))
    os.chdir(run)
    lc, data = cfg.evaluate.lattice, run / "data"
    rt = load_student(data / "export" / "student.edgeasr")
    fq = pytorch_student(data / str(cfg.export.source) / "model.pt") if lc.compare_pytorch else None
    out.mkdir(parents=True, exist_ok=True)
    metrics, _ = lattice_metrics(rt, stage_datamodule(cfg, cfg.evaluate), lc, out, fq)
    print(json.dumps(metrics, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
