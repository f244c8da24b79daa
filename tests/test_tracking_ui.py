"""What the MLflow UI shows of edgeasr's runs, against real sqlite stores (no mocks): the
experiment's kind and saved view, parent runs named for their invocation, the parent's note with
every stage's four metrics. The browser's view of the same: tests/test_mlflow_ui.py."""

from __future__ import annotations

import json

import pytest
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from edgeasr.tracking import INVOCATION_ENV, stage_run, tracking_uri
from edgeasr.tracking.note import fmt, stage_order
from edgeasr.tracking.parent import get_or_create_experiment, parent_run_name
from edgeasr.tracking.ui import MODEL_TRAINING, TAG_EXPERIMENT_KIND, TAG_VIEW, VIEW_STATE, runs_url

SCRUB = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "DVC_ROOT",
         "DVC_STAGE", "DVC_EXP_NAME", "EDGEASR_PARENT_RUN_ID", INVOCATION_ENV)
FOUR = {"wer": 12.5, "sparsity": 0.5, "size_bytes": 374123, "emulated_latency_ms": 3.25}


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A tmp repo root (cwd + DVC_ROOT) with a two-stage dvc.yaml, logging to its own sqlite store."""
    for name in SCRUB:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    (tmp_path / "dvc.yaml").write_text("stages:\n  prepare:\n    cmd: x\n  distill:\n    cmd: y\n  compress:\n    cmd: z\n")
    return tmp_path


def test_parent_run_names(monkeypatch):
    for name in SCRUB:
        monkeypatch.delenv(name, raising=False)
    git = {"git.commit": "0123456789abcdef"}
    assert parent_run_name("distill", None, git) == "distill"  # a stage run by hand
    assert parent_run_name("distill", "dvc repro", git) == "repro@0123456"
    assert parent_run_name("distill", "dvc repro", {}) == "repro"  # no git repository
    monkeypatch.setenv("DVC_EXP_NAME", "bushy-tuba")
    assert parent_run_name("distill", "dvc exp run", git) == "bushy-tuba"
    monkeypatch.setenv(INVOCATION_ENV, "proc:1-2@3")
    assert parent_run_name("compress", None, git) == "sweep:compress"


def test_fmt():
    assert [fmt(v) for v in (374123.0, 0.5, 12.345678901, 0.0, None, 1e-7)] == [
        "374123", "0.5", "12.3457", "0", "", "1e-07"]


def test_experiment_created_and_existing_ones_tagged(repo):
    client = MlflowClient(tracking_uri())
    uri = tracking_uri()
    new = client.get_experiment(get_or_create_experiment(client, "fresh", uri))
    assert new.tags[TAG_EXPERIMENT_KIND] == MODEL_TRAINING
    view = json.loads(new.tags[TAG_VIEW])
    assert view["name"] and view["createdAt"] > 0 and json.loads(view["state"]) == VIEW_STATE
    assert VIEW_STATE["selectedColumns"] == ["metrics.`wer`", "metrics.`sparsity`", "metrics.`size_bytes`",
                                             "metrics.`emulated_latency_ms`"]

    old = client.create_experiment("old")  # made before edgeasr tagged experiments
    chosen = client.create_experiment("chosen", tags={TAG_EXPERIMENT_KIND: "genai_development",
                                                      TAG_VIEW: json.dumps({"name": "x", "state": "{}"})})
    for exp_id, name in ((old, "old"), (chosen, "chosen")):
        assert get_or_create_experiment(client, name, uri) == exp_id
    tags = {e: client.get_experiment(e).tags for e in (old, chosen)}
    assert tags[old][TAG_EXPERIMENT_KIND] == MODEL_TRAINING
    assert tags[chosen][TAG_EXPERIMENT_KIND] == "genai_development"  # someone's choice is kept
    assert all(json.loads(json.loads(t[TAG_VIEW])["state"]) == VIEW_STATE for t in tags.values())
    assert runs_url(uri, "7") == ("http://127.0.0.1:5000/#/experiments/7/runs"
                                  "?workflowType=machine_learning&viewStateShareKey=edgeasr-four-metrics")
    assert runs_url("http://h:8/", "7").startswith("http://h:8/#/experiments/7/runs?")


def _note(client, run) -> str:
    return client.get_run(run.parent_run_id).data.tags[MLFLOW_RUN_NOTE]


def test_by_hand_parent_named_for_the_stage_and_its_note_grows(repo):
    assert stage_order(repo) == ["prepare", "distill", "compress"]
    (repo / "reports").mkdir()
    (repo / "reports" / "prepare.json").write_text('{"hours/train": 1.5}\n')  # cached: no run here
    client = MlflowClient(tracking_uri())
    with stage_run("compress", {}) as compress:
        compress.log_report({**FOUR, "wer": 14.0})
    parent = client.get_run(compress.parent_run_id)
    assert parent.info.run_name == "compress"
    exp = parent.info.experiment_id
    row = "| [compress](#/experiments/{}/runs/{}) | 14 | 0.5 | 374123 | 3.25 |".format(exp, compress.run_id)
    assert _note(client, compress).splitlines()[2:] == [
        "| stage | wer | sparsity | size_bytes | emulated_latency_ms |", "|---|---:|---:|---:|---:|",
        "| prepare (cached) |  |  |  |  |", row]

    # a second stage in the same invocation: its row joins in pipeline order, the name stays
    with stage_run("distill", {}) as distill:
        distill.log_report(FOUR)
    note = _note(client, distill)
    assert note.startswith("**compress**: ")
    assert note.splitlines()[4:] == [
        "| prepare (cached) |  |  |  |  |",
        f"| [distill](#/experiments/{exp}/runs/{distill.run_id}) | 12.5 | 0.5 | 374123 | 3.25 |", row]
    assert "get-artifact" not in note  # no pipeline plot on the parent yet

    # a failed stage says so and shows no metrics; the plot, once on the parent, is in the note
    with pytest.raises(RuntimeError):
        with stage_run("prepare", {}) as prepare:
            prepare.log_report({"wer": 1.0})
            prepare.log_figure(Figure(figsize=(1, 1)), "pipeline.png", on_parent=True)
            raise RuntimeError("boom")
    lines = _note(client, prepare).splitlines()
    assert lines[4] == f"| [prepare](#/experiments/{exp}/runs/{prepare.run_id}) (FAILED) |  |  |  |  |"
    assert lines[-1] == ("![the pipeline: WER against size and emulated latency]"
                         f"(get-artifact?path=pipeline.png&run_uuid={prepare.parent_run_id})")
    assert {a.path for a in client.list_artifacts(prepare.run_id)} >= {"pipeline.png"}


def test_sweep_parent_named_and_every_job_in_its_note(repo, monkeypatch):
    monkeypatch.setenv(INVOCATION_ENV, "proc:sweep-under-test")  # as edgeasr.sweep sets it
    runs = []
    for i, job in enumerate(("0", "1")):
        with stage_run("compress", {}, report_dir=repo / "multirun" / job / "reports") as run:
            run.log_report({**FOUR, "sparsity": 0.3 + 0.4 * i})
        runs.append(run)
    client = MlflowClient(tracking_uri())
    assert runs[0].parent_run_id == runs[1].parent_run_id
    assert client.get_run(runs[0].parent_run_id).info.run_name == "sweep:compress"
    rows = [line for line in _note(client, runs[1]).splitlines() if line.startswith("| [compress]")]
    assert [r.split(" | ")[2] for r in rows] == ["0.3", "0.7"]


def test_explicit_parent_keeps_its_own_note(repo, monkeypatch):
    client = MlflowClient(tracking_uri())
    exp_id = client.create_experiment("owner")
    owner = client.create_run(exp_id, run_name="mine", tags={MLFLOW_RUN_NOTE: "my words"})
    monkeypatch.setenv("EDGEASR_PARENT_RUN_ID", owner.info.run_id)
    with stage_run("distill", {}) as run:
        run.log_report(FOUR)
    assert client.get_run(owner.info.run_id).data.tags[MLFLOW_RUN_NOTE] == "my words"
