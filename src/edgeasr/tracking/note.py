"""The parent run's description: MLflow's run note (the tag ``mlflow.note.content``, which the run
page renders as GitHub-flavoured markdown under "Description"), rewritten as each stage finishes.

It holds a table of every finished stage's four metrics (:data:`.ui.FOUR_METRICS`), each stage
linked to its run (a stage still running, or failed, is listed with its status and no metrics); a
stage DVC skipped as cached has no run in this invocation, and its row comes from its report rolled
up onto the parent (``<stage>/<key>``). Once the ``evaluate`` stage has
logged ``pipeline.png`` on the parent, the note shows that plot too. Links are relative to the
UI's address, so they work whatever host serves it.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from .tags import PARENT_RUN_TAG, TAG_KIND
from .ui import FOUR_METRICS
from .values import MAX_TAG_VAL_LENGTH, truncate

PIPELINE_PLOT = "pipeline.png"


def stage_order(root: Path | None) -> list[str]:
    """The stages of ``<root>/dvc.yaml`` in pipeline order (none without a readable file)."""
    try:
        stages = yaml.safe_load((Path(root) / "dvc.yaml").read_text())["stages"]
        return [str(s) for s in stages]
    except (OSError, TypeError, KeyError, yaml.YAMLError):
        return []


def fmt(value: float | None) -> str:
    """A metric as the table shows it: integers whole, others to 6 significant digits."""
    if value is None or not math.isfinite(value):
        return "" if value is None else str(value)
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else f"{value:.6g}"


def _row(label: str, metrics: dict[str, float]) -> str:
    return "| " + " | ".join([label, *(fmt(metrics.get(k)) for k in FOUR_METRICS)]) + " |"


def _rolled_up(parent: Run) -> dict[str, dict[str, float]]:
    """The parent's ``<stage>/<key>`` metrics (the roll-up of every report) by stage."""
    rolled: dict[str, dict[str, float]] = {}
    for key, value in parent.data.metrics.items():
        stage, _, name = key.partition("/")
        rolled.setdefault(stage, {})[name] = value
    return rolled


def render(parent: Run, children: list[Run], order: list[str], plot: bool) -> str:
    """The note's markdown: one row per stage run of ``parent`` (one not finished says its status
    and shows no metrics) and per stage whose report the parent has but no run here (cached), in
    pipeline ``order``."""
    rank = {stage: i for i, stage in enumerate(order)}
    experiment_id = parent.info.experiment_id
    rows = []  # (pipeline rank, start time, line)
    for run in children:
        label = f"[{run.info.run_name}](#/experiments/{experiment_id}/runs/{run.info.run_id})"
        finished = run.info.status == "FINISHED"
        rows.append((rank.get(run.info.run_name, len(rank)), run.info.start_time or 0,
                     _row(label if finished else f"{label} ({run.info.status})", run.data.metrics if finished else {})))
    rolled = _rolled_up(parent)
    for stage in set(rolled) - {r.info.run_name for r in children}:
        rows.append((rank.get(stage, len(rank)), 0, _row(f"{stage} (cached)", rolled[stage])))
    lines = [f"**{parent.info.run_name}**: each stage's test WER (%), sparsity, size (bytes) and emulated "
             "latency (ms).", "", "| stage | " + " | ".join(FOUR_METRICS) + " |",
             "|---|" + "---:|" * len(FOUR_METRICS), *(line for *_, line in sorted(rows))]
    if plot:
        lines += ["", f"![the pipeline: WER against size and emulated latency]"
                      f"(get-artifact?path={PIPELINE_PLOT}&run_uuid={parent.info.run_id})"]
    return truncate("\n".join(lines) + "\n", MAX_TAG_VAL_LENGTH)


def update_note(client: MlflowClient, parent_run_id: str, order: list[str]) -> str:
    """Rewrite the parent's note from its stage runs and rolled-up reports; returns it."""
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}' and tags.`{TAG_KIND}` = 'stage'",
        max_results=1000)
    plot = any(a.path == PIPELINE_PLOT for a in client.list_artifacts(parent_run_id))
    note = render(parent, children, order, plot)
    client.set_tag(parent_run_id, MLFLOW_RUN_NOTE, note)
    return note
