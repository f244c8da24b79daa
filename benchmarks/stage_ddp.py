"""Each training stage's throughput in one process against several (Lightning DDP on the CPU):
the real stage, run by its pipelines/ entry with a short step budget, its report's
``train_audio_s_per_s`` (audio seconds trained per wall second, all ranks together). Each rank
takes 1/processes of the stage's ``batch_max_duration``: the same audio per optimizer step, so the
figures compare the same training.

Run in a workspace whose earlier stages have outputs (``dvc repro prepare`` and a teacher at
least; each stage's short run leaves the model the next one reads). It overwrites those stages'
outputs there: use a scratch clone.

Usage: python benchmarks/stage_ddp.py [--stages train_teacher distill compress mwer] [--steps 120]
           [--layouts 1x2 2x1]     # processes x threads each
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
HYDRA = ["--config-dir", ".", "--config-name", "params", "hydra.run.dir=.", "hydra.output_subdir=null",
         "hydra/job_logging=stdout", "hydra/hydra_logging=none"]


def run_stage(stage: str, steps: int, procs: int, threads: int) -> tuple[float, float]:
    """``(train_audio_s_per_s, wall seconds)`` of ``stage`` for ``steps`` steps in ``procs`` x ``threads``."""
    over = [f"{stage}.max_steps={steps}", f"{stage}.val_every_n_steps={steps}", f"{stage}.resume=false",
            f"{stage}.eval_splits=[dev]", "trainer.progress=false", f"trainer.num_threads={threads}"]
    if stage == "distill":
        over += ["distill.baseline=false"]
    if stage == "compress":
        over += ["compress.baseline=false"]
    if procs > 1:  # the same audio per optimizer step: each rank takes its share of the batch
        batch = yaml.safe_load(Path("params.yaml").read_text())[stage]["batch_max_duration"]
        over += [f"trainer.devices={procs}", "trainer.strategy=ddp", f"{stage}.batch_max_duration={batch / procs}"]
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, str(ROOT / "pipelines" / f"{stage}.py"), *HYDRA, *over],
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"{stage} ({procs}x{threads}) failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    report = json.loads(Path("reports", f"{stage}.json").read_text())
    return float(report["train_audio_s_per_s"]), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", nargs="+", default=["train_teacher", "distill", "compress", "mwer"])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--layouts", nargs="+", default=["1x2", "2x1"], help="processes x threads")
    args = ap.parse_args()
    layouts = [tuple(int(v) for v in lay.split("x")) for lay in args.layouts]
    print(f"{'stage':14s} " + " ".join(f"{p}x{t} audio-s/s (wall s)".rjust(26) for p, t in layouts) + "   speed-up")
    for stage in args.stages:
        # the layouts in reverse for the last stage's inputs: the single-process run's model stays
        steps = args.steps // 3 if stage == "mwer" else args.steps  # an MWER step decodes an N-best first
        figures = {lay: run_stage(stage, steps, *lay) for lay in reversed(layouts)}
        first, last = figures[layouts[0]][0], figures[layouts[-1]][0]
        cells = " ".join(f"{figures[lay][0]:12.1f} ({figures[lay][1]:6.0f} s)".rjust(26) for lay in layouts)
        print(f"{stage:14s} {cells}   {last / first:.2f}x", flush=True)


if __name__ == "__main__":
    main()
