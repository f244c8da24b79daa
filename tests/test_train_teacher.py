"""The train_teacher stage on the tiny corpus: real RNN-T training through Lightning, a finite WER
in the report and the MLflow run, resume after a kill, identical metrics for the same seed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, compose, stage_runs, sweep_runs

pytestmark = pytest.mark.slow

REPORT_KEYS = {"wer", "sparsity", "size_bytes", "emulated_latency_ms"}


@pytest.fixture
def teacher_root(tiny_prepared, tmp_path, monkeypatch):
    """A fresh repository root holding a copy of the tiny prepared data."""
    root = tiny_prepared[0]
    shutil.copytree(root / "data" / "prepare", tmp_path / "data" / "prepare")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _run(overrides=()):
    from edgeasr.stages.train_teacher import run

    return run(compose(["experiment=tiny", "trainer.progress=false", *overrides]))


def test_tiny_teacher_reports_and_is_deterministic(teacher_root):
    first = _run()
    report = json.loads((teacher_root / "reports/train_teacher.json").read_text())
    assert REPORT_KEYS <= set(report) and report == pytest.approx(first)
    for split in ("dev", "test", "test_noisy", "test_rare"):
        assert 0 <= report[f"wer/{split}"] < 1000
        assert (teacher_root / f"data/train_teacher/results/errs-{split}.txt").is_file()
    assert report["sparsity"] < 0.01 and report["size_bytes"] > 4 * 0.9 * report["params"]
    assert report["emulated_latency_ms"] > 0 and report["train_steps"] == 30
    client, (run, *_) = stage_runs(teacher_root, "train_teacher")
    assert REPORT_KEYS <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) >= 1
    assert client.get_metric_history(run.info.run_id, "val/wer")

    second = _run(["train_teacher.resume=false"])
    deterministic = {k: v for k, v in first.items() if k != "train_audio_s_per_s"}
    assert deterministic == {k: v for k, v in second.items() if k != "train_audio_s_per_s"}


def test_killed_training_resumes_from_last_checkpoint(teacher_root):
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, str(REPO / "pipelines/train_teacher.py"), "experiment=tiny", "trainer.progress=false",
           "train_teacher.max_steps=60", "train_teacher.checkpoint_every_n_steps=5", "hydra.run.dir=.",
           "hydra.output_subdir=null"]
    proc = subprocess.Popen(cmd, cwd=teacher_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    last = teacher_root / "data/train_teacher/checkpoints/last.ckpt"
    deadline = time.time() + 180
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    assert proc.poll() is None, "training finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    import torch

    killed_at = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < killed_at < 60
    res = subprocess.run(cmd, cwd=teacher_root, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert f"(step {killed_at})" in res.stdout + res.stderr
    report = json.loads((teacher_root / "reports/train_teacher.json").read_text())
    assert report["train_steps"] == 60

    # A different config never resumes a stale checkpoint.
    res = subprocess.run(cmd[:-2] + ["train_teacher.optimizer.lr=0.000123", "hydra.run.dir=.", "hydra.output_subdir=null"],
                         cwd=teacher_root, env=env, capture_output=True, text=True)
    assert res.returncode == 0 and "resuming" not in res.stdout + res.stderr


def test_convergence_harness_sweep_writes_curves_under_one_parent(teacher_root):
    """`-m experiment=convergence`: two trials side by side (joblib), each an MLflow child run of one
    sweep parent with its learning curve; curves.csv / curves.png on disk and on the parent."""
    import csv

    cmd = [sys.executable, str(REPO / "pipelines/train_teacher.py"), "-m", "experiment=[tiny,convergence]",
           "train_teacher.max_steps=12", "train_teacher.val_every_n_steps=4", "train_teacher.checkpoint_every_n_steps=4",
           "train_teacher.scheduler.warmup_steps=2", "train_teacher.optimizer.lr=1e-3,3e-3", "hydra.sweep.dir=sweep"]
    res = subprocess.run(cmd, cwd=teacher_root, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    with open(teacher_root / "sweep/curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["job"] for r in rows} == {"0", "1"}
    for job in ("0", "1"):
        steps = [int(r["step"]) for r in rows if r["job"] == job]
        assert steps == [4, 8, 12]
        assert all(0 <= float(r["val_wer"]) and float(r["audio_h"]) > 0 for r in rows if r["job"] == job)
        assert (teacher_root / f"sweep/{job}/data/train_teacher/results/learning_curve.csv").is_file()
    assert (teacher_root / "sweep/curves.png").stat().st_size > 1000
    assert not (teacher_root / "reports/train_teacher.json").exists()  # trials never write the DVC outputs
    client, parent, trials = sweep_runs(teacher_root, "train_teacher", 2)
    assert {r.data.params["train_teacher.optimizer.lr"] for r in trials} == {"0.001", "0.003"}
    assert {r.data.params["trainer.num_threads"] for r in trials} == {"1"}
    assert "sweep/curves.png" in [a.path for a in client.list_artifacts(parent.info.run_id, "sweep")]


def test_tiny_teacher_with_an_attention_biaser_trains_on_context_lists(teacher_root):
    import torch

    from edgeasr.models.biasing import PhraseBatch
    from edgeasr.models.io import load_model

    report = _run(["context_lists.max_distractors=5"])  # experiment=tiny: the teacher has a biaser
    assert 0 <= report["wer/test"] < 1000 and report["train_steps"] == 30
    # the cost model counts it: its bytes in the size, its MACs per frame and per list entry in the latency
    assert report["params"] > report["biaser_params"] > 0
    assert report["emulated_latency_ms/list100"] > report["emulated_latency_ms/list10"] > report["emulated_latency_ms"]
    # test_rare decoded four ways per list size, in the report, the CSV and MLflow; the attention drawn
    for n in (10, 100):
        for cond in ("none", "sf", "attn", "attn_sf"):
            assert 0 <= report[f"attn/test_rare/list{n}/{cond}/b_wer"] < 1000
            assert 0 <= report[f"attn/test_rare/list{n}/{cond}/recall"] <= 1
    assert report["attn/test_rare/list10/none/wer"] == report["attn/test_rare/list100/none/wer"]  # no list: same
    results = teacher_root / "data/train_teacher/results"
    assert len((results / "attention_biasing.csv").read_text().splitlines()) == 1 + 2 * 4
    client, (run, *_) = stage_runs(teacher_root, "train_teacher")
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "results")}
    assert {"results/attention.png", "results/attention_biasing.csv"} <= arts
    model, meta = load_model(teacher_root / "data/train_teacher/model.pt")
    assert meta["model_cfg"]["biaser"] == {"dim": 16, "heads": 2} and model.biaser is not None
    assert model.biaser.out.weight.abs().sum() > 0                 # it learned from zero
    x, lens = torch.randn(1, 60, 80), torch.tensor([60])
    assert not torch.equal(model.encode(x, lens)[0], model.encode(x, lens, PhraseBatch.collate([[[5, 6]]]))[0])
