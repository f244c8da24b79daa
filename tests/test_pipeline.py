"""The real DVC pipeline on the tiny experiment: `dvc exp run`, caching, reruns, MLflow runs."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import sh as _sh

pytestmark = pytest.mark.slow


def test_dvc_exp_run_then_cached_repro_then_rerun(tiny_pipeline):
    # the session's `dvc exp run -S experiment=tiny` (conftest.tiny_pipeline); this test runs more in its root
    tmp_path, env, out = tiny_pipeline.root, tiny_pipeline.env, tiny_pipeline.output
    assert "Running stage 'prepare'" in out and "Running stage 'train_teacher'" in out
    report = json.loads((tmp_path / "reports/prepare.json").read_text())
    assert report["hours/train"] > 0 and "oov_rate_percent/test" in report  # tiny is too small for a realistic OOV rate

    out = _sh("dvc repro", tmp_path, env)
    assert "Running stage" not in out and "didn't change" in out  # every stage skipped

    out = _sh("dvc exp run -S experiment=tiny -S prepare.progress=false -S trainer.progress=false "
              "-S data.splits.dev.hours=0.012", tmp_path, env)
    assert "Running stage 'prepare'" in out  # a data-size key reruns prepare (and what depends on it)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("edgeasr")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("edgeasr.kind") == "stage"]
    parents = {r.info.run_id: r for r in runs if not r.data.tags.get("mlflow.parentRunId")}
    # runs nested inside a stage (the distill stage's labels-only baseline) hang off that stage's run
    nested = [r for r in runs if r.data.tags.get("edgeasr.kind") == "stage_part"]
    stage_ids = {r.info.run_id: r.info.run_name for r in children}
    assert sorted(r.info.run_name for r in nested) == ["distill/baseline"] * 2
    assert all(stage_ids[r.data.tags["mlflow.parentRunId"]] == "distill" for r in nested)
    stages = list(yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"])
    assert sorted(r.info.run_name for r in children) == sorted(stages * 2)  # the cached repro made none
    by_parent = {}
    for child in children:
        by_parent.setdefault(child.data.tags["mlflow.parentRunId"], []).append(child.info.run_name)
    assert len(by_parent) == 2 and all(sorted(v) == sorted(stages) for v in by_parent.values())
    for parent_id in by_parent:  # each invocation's parent carries every stage's report
        assert "prepare/hours/train" in parents[parent_id].data.metrics
    for child in children:
        if child.info.run_name == "reference":  # Whisper: no sparsity or emulated latency (see test_reference.py)
            assert {"wer", "wer_whisper_norm", "size_bytes", "rtf/test"} <= set(child.data.metrics)
            assert child.data.metrics["skipped"] == 0
            continue
        if child.info.run_name == "train_lm":  # the cloud's LM: perplexity, not WER; never on the device
            assert {"ppl_dev", "size_bytes", "params", "overlap_removed"} <= set(child.data.metrics)
            continue
        if child.info.run_name != "prepare":
            assert {"wer", "sparsity", "size_bytes", "emulated_latency_ms"} <= set(child.data.metrics)
            continue
        assert child.data.tags["mlflow.parentRunId"] in parents
        assert child.data.metrics["hours/train"] > 0
        assert "oov_rate_percent/test" in child.data.metrics
        assert "filtered/total" in child.data.metrics
        assert child.data.params["data.splits.train.hours"] == "0.05"

    # The whole-pipeline report: DVC plots over reports/pipeline.csv, and the notebook over MLflow
    import csv

    rows = list(csv.DictReader(open(tmp_path / "reports/pipeline.csv")))
    assert [r["stage"] for r in rows] == ["train_teacher", "distill", "compress", "mwer", "export", "reference"]
    assert all(float(r["wer_test"]) >= 0 and float(r["size_kb"]) > 0 for r in rows)
    assert float(rows[4]["size_kb"]) < float(rows[1]["size_kb"]) / 3  # int8 + 50 % sparse file << fp32 student
    assert float(rows[4]["wer_test_whisper_norm"]) >= 0 and float(rows[4]["size_ratio_reference"]) < 0.05
    evaluate = json.loads((tmp_path / "reports/evaluate.json").read_text())
    reference = json.loads((tmp_path / "reports/reference.json").read_text())
    assert evaluate["reference/wer"] == reference["wer"] and evaluate["size_ratio_reference"] < 0.05
    assert "wer_whisper_norm/test" in evaluate and "wer_ratio_reference" in evaluate
    # shallow fusion ran in the integer runtime and in the fake-quantized PyTorch student (issue 17)
    assert 0 <= evaluate["biasing/pytorch/identical/test_rare/sf10"] <= 1
    assert evaluate["biasing/test_rare/empty/wer"] == evaluate["biasing/test_rare/none/wer"]
    # ... and the teacher trained with its attention biaser, measured on lists in its own report
    teacher = json.loads((tmp_path / "reports/train_teacher.json").read_text())
    assert teacher["biaser_params"] > 0 and 0 <= teacher["attn/test_rare/list100/attn_sf/b_wer"] < 1000
    _sh("dvc plots show -o plots_html", tmp_path, env)
    html = (tmp_path / "plots_html/index.html").read_text()
    assert "wer_by_stage" in html and "exported (integer runtime)" in html

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(Path(__file__).resolve().parents[1] / "notebooks/compare_runs.ipynb", as_version=4)
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    with_wer = [c for c in children if {"wer", "size_bytes"} <= set(c.data.metrics)]  # not prepare, not train_lm
    assert len(with_wer) == len([c for c in children if c.info.run_name not in ("prepare", "train_lm")])
    assert f"{len(with_wer)} stage runs with WER and size from 2" in printed
    assert (tmp_path / "compare_runs.png").stat().st_size > 10_000


def test_dvc_remote_round_trip_fresh_clone_pulls_and_repro_runs_nothing(tiny_pipeline, tmp_path):
    """The shared-storage workflow: push data, models and reports to a DVC remote (a local folder
    here; S3/SSH in the README), commit, clone elsewhere, `dvc pull`: the pipeline is up to date and
    `dvc repro` runs no stage."""
    origin, remote, fresh = tmp_path / "origin", tmp_path / "remote", tmp_path / "fresh"
    env = tiny_pipeline.env
    shutil.copytree(tiny_pipeline.root, origin, symlinks=True)
    _sh(f"dvc remote add -d store {remote} && dvc push -q", origin, env)
    _sh("git add -A && git -c user.name=t -c user.email=t@t commit -qm results", origin, env)
    assert any(remote.rglob("*")) and not _sh("git status --porcelain", origin, env).strip()
    _sh(f"git clone -q {origin} {fresh}", tmp_path, env)
    assert not (fresh / "data").exists() and not (fresh / "reports").exists()  # only what git holds
    _sh("dvc pull -q", fresh, env)
    assert json.loads((fresh / "reports/train_teacher.json").read_text()) == \
        json.loads((origin / "reports/train_teacher.json").read_text())
    assert (fresh / "data/mwer/model.pt").read_bytes() == (origin / "data/mwer/model.pt").read_bytes()
    assert "up to date" in _sh("dvc status", fresh, env)
    out = _sh("dvc repro", fresh, env)
    assert "Running stage" not in out and "didn't change" in out
