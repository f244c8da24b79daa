"""The compress stage on the tiny corpus (from a student saved where the distill stage puts it),
and a Hydra multirun sweep: one MLflow run per job under one parent, plus the Pareto plot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, compose, sweep_runs

pytestmark = pytest.mark.slow


def test_tiny_compress_reaches_target_sparsity_with_model_and_tables(student_root):
    from edgeasr.compression import Compression, attach_activation_quant
    from edgeasr.evaluation import evaluate_splits
    from edgeasr.models.io import load_model
    from edgeasr.stages.common import stage_datamodule
    from edgeasr.stages.compress import run

    cfg = compose(["experiment=tiny", "trainer.progress=false"])
    metrics = run(cfg)
    report = json.loads((student_root / "reports/compress.json").read_text())
    assert report == pytest.approx(metrics)
    for key in ("wer/test", "fp32/wer/test", "ptq/wer/test", "sparsity", "size_bytes", "emulated_latency_ms",
                "grid_distance"):
        assert key in report, key
    model, meta = load_model(student_root / "data/compress/model.pt")
    act = meta["compression"].pop("activation_quant")
    assert meta["compression"] == {"bits": 8, "sparsity": 0.5, "scope": "layer"}
    comp = Compression(model, bits=8, masks_from_zeros=True)
    assert abs(comp.sparsity() - 0.5) < 0.01
    # the saved weights + activation scales reproduce the reported fake-quantized WER exactly
    assert act["points"]["encoder.l0_c"]["pow2"] and act["points"]["encoder.res0"]["bits"] == 16
    attach_activation_quant(model, scales=act["amax"], frozen=True, weight_bits=8)
    dm = stage_datamodule(cfg, cfg.compress)
    again = evaluate_splits(model.eval(), dm, ["test"], student_root / "again")
    assert again["wer/test"] == report["wer/test"]
    table = json.loads((student_root / "data/compress/results/layer_sparsity.json").read_text())
    assert all(abs(row["sparsity"] - 0.5) < 0.02 for row in table if row["params"] > 100)
    # int8 + 50 % sparse costs well under half the fp32 bytes
    fp32_bytes = 4 * report["params"]
    assert report["size_bytes"] < 0.25 * fp32_bytes


def test_tiny_multirun_sweep_is_one_parent_with_a_run_per_job(student_root):
    cmd = [sys.executable, str(REPO / "pipelines/compress.py"), "-m", "experiment=tiny", "trainer.progress=false",
           "compress.baseline=false", "compress.max_steps=10", "compress.pruning.end_step=5",
           "compress.val_every_n_steps=10", "compress.sparsity=0.3,0.6", "compress.bits=8,4",
           "compress.eval_splits=[test]", "hydra.sweep.dir=sweep"]
    res = subprocess.run(cmd, cwd=student_root, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads((student_root / "sweep/sweep.json").read_text())
    assert len(rows) == 4 and (student_root / "sweep/pareto.png").stat().st_size > 1000
    assert not (student_root / "reports/compress.json").exists()  # jobs never write the DVC outputs
    client, parent, jobs = sweep_runs(student_root, "compress", 4)
    assert {(r.data.params["compress.sparsity"], r.data.params["compress.bits"]) for r in jobs} == \
        {("0.3", "8"), ("0.3", "4"), ("0.6", "8"), ("0.6", "4")}
    sparsities = sorted(round(r["sparsity"], 1) for r in rows)
    assert sparsities == [0.3, 0.3, 0.6, 0.6]
    assert "sweep/pareto.png" in [a.path for a in client.list_artifacts(parent.info.run_id, "sweep")]


def test_a_student_with_an_attention_biaser_compresses_and_mwer_trains(student_root):
    """The biaser goes through QAT + pruning and MWER like the rest (PyTorch); export refuses it."""
    import torch

    from edgeasr.export.container import ExportFormatError
    from edgeasr.models import build_transducer
    from edgeasr.models.io import load_model, save_model
    from edgeasr.stages.compress import run
    from edgeasr.stages.export import run as export_run
    from edgeasr.stages.mwer import run as mwer_run

    _, meta = load_model(student_root / "data/distill/model.pt")
    model_cfg = {**meta["model_cfg"], "biaser": {"dim": 16, "heads": 2}}
    torch.manual_seed(0)
    save_model(student_root / "data/distill/model.pt", build_transducer(model_cfg), model_cfg, meta={"stage": "distill"})
    cfg = compose(["experiment=tiny", "trainer.progress=false"])
    report = run(cfg)
    assert report["biaser_params"] > 0 and abs(report["sparsity"] - 0.5) < 0.01
    table = json.loads((student_root / "data/compress/results/layer_sparsity.json").read_text())
    biased = [row for row in table if row["layer"].startswith("biaser.")]
    assert {r["layer"] for r in biased} >= {"biaser.attn.out_proj.weight", "biaser.attn.in_proj_weight", "biaser.out.weight"}
    assert all(abs(r["sparsity"] - 0.5) < 0.05 for r in biased if r["params"] > 100)
    after = mwer_run(cfg)
    assert after["train_steps"] > 0 and after["biaser_params"] == report["biaser_params"]
    with pytest.raises(ExportFormatError, match="attention biaser"):
        export_run(cfg)
