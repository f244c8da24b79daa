"""The convergence harness's trials, read back from the MLflow store: one row per `train_teacher`
run that validated at least once, its config as overrides against the composed defaults, its dev
WER at every validation, and one figure with all curves.

The harness (`python pipelines/train_teacher.py -m experiment=convergence ...`) writes each sweep's
curves next to its jobs; this script gathers trials across sweeps (killed ones included: their
validations are in the store), which is what the README's "measured levers" table is made from.

Usage: python benchmarks/convergence_table.py [--runs ID_PREFIX ...] [--out docs/convergence]
       [--tracking-uri sqlite:///mlflow.db] [--baseline OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from conf_loader import compose
from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing global
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

# Params that describe the harness itself, not the trial.
IGNORED = ("trainer.progress", "train_teacher.val_every_n_steps", "train_teacher.checkpoint_every_n_steps",
           "train_teacher.eval_splits")


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out


def normalize(v) -> str:
    """MLflow stores params as strings; compare configs in one canonical text form."""
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return {"None": "null", "True": "true", "False": "false"}.get(v, v)
    try:
        return json.dumps(float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else json.dumps(v)
    except TypeError:
        return str(v)


ABBREV = (("model.teacher.encoder.", "enc."), ("model.teacher.", "teacher."), ("train_teacher.", ""),
          ("trainer.", "trainer."))


def short(override: str) -> str:
    for long, abbrev in ABBREV:
        if override.startswith(long):
            return abbrev + override[len(long):]
    return override


def trials(client, baseline: dict[str, str], prefixes: list[str]) -> list[dict]:
    exp = client.get_experiment_by_name("edgeasr")
    runs = client.search_runs([exp.experiment_id], "attributes.run_name = 'train_teacher'", max_results=5000,
                              order_by=["attributes.start_time ASC"])
    out = []
    for run in runs:
        rid = run.info.run_id
        if prefixes and not any(rid.startswith(p) for p in prefixes):
            continue
        wer = client.get_metric_history(rid, "val/wer")
        if not wer:
            continue
        minutes = {m.step: m.value for m in client.get_metric_history(rid, "val/minutes")}
        params = {k: v for k, v in run.data.params.items() if not k.startswith(IGNORED)}
        # keys the baseline lacks are differences too (e.g. a curriculum's flattened fields)
        diff = sorted(short(f"{k}={v}") for k, v in params.items()
                      if k not in baseline or normalize(v) != normalize(baseline[k]))
        out.append({"run": rid[:8], "config": " ".join(diff) or "defaults",
                    "threads": params.get("trainer.num_threads"),
                    "points": [(m.step, round(minutes.get(m.step + 1, minutes.get(m.step, float("nan"))), 2),
                                round(m.value, 2)) for m in sorted(wer, key=lambda m: m.step)],
                    "final": run.data.metrics.get("wer/dev")})
    return out


def figure(rows: list[dict], path: Path) -> None:
    fig = Figure(figsize=(13, 4.5 + 0.13 * len(rows)))
    axes = fig.subplots(1, 2)
    for r in rows:
        steps, mins, wers = zip(*r["points"])
        label = f"{r['run']}: {r['config']}"[:95]
        axes[0].plot(steps, wers, marker=".", label=label)
        axes[1].plot(mins, wers, marker=".")
    axes[0].set_xlabel("optimizer steps (20 s batches)")
    axes[1].set_xlabel("wall-clock minutes (threads per trial: trials.csv)")
    for ax in axes:
        ax.set_ylabel("dev WER (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.028 * len(rows) / 2 + 0.02, 1, 1))
    fig.legend(loc="lower center", ncol=2, fontsize=6, frameon=False)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="*", default=[], help="run id prefixes (default: every train_teacher run)")
    ap.add_argument("--out", default="docs/convergence")
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    ap.add_argument("--baseline", nargs="*", default=["model/teacher=conformer", "train_teacher.curriculum=null",
                                                      "train_teacher.optimizer.lr=5e-4", "train_teacher.max_steps=3000"],
                    help="Hydra overrides of the config the trials are described against")
    args = ap.parse_args()
    base = flat(OmegaConf.to_container(compose(args.baseline), resolve=True))
    rows = trials(MlflowClient(args.tracking_uri), base, args.runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "trials.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "config", "threads", "step", "minutes", "dev_wer"])
        for r in rows:
            for step, minutes, wer in r["points"]:
                w.writerow([r["run"], r["config"], r["threads"], step, minutes, wer])
    figure(rows, out / "curves.png")
    print("| run | config (against the old default) | dev WER (%) at step: value |")
    print("|---|---|---|")
    for r in rows:
        curve = ", ".join(f"{s}: {w}" for s, _, w in r["points"])
        print(f"| {r['run']} | `{r['config']}` | {curve} |")
    print(f"\n{len(rows)} trials -> {out / 'trials.csv'}, {out / 'curves.png'}")


if __name__ == "__main__":
    main()
