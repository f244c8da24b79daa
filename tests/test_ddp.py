"""Training stages in two processes (Lightning DDP over gloo, on CPU): the same command with
``trainer.devices=2 trainer.strategy=ddp``, against the single-process run of the same stage."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import REPO, compose, copy_project, stage_env

pytestmark = pytest.mark.slow

DDP = ["trainer.devices=2", "trainer.strategy=ddp"]
# each rank takes half a batch: the same audio per optimizer step as the single process
HALF = {"train_teacher": "train_teacher.batch_max_duration=15", "distill": "distill.batch_max_duration=15"}
TIMING = {"train_audio_s_per_s", "pseudo_label_s", "teacher_targets_s"}
# Tolerance on the last validation loss, relative: the two runs draw other batches (each rank gets
# every other one of its own bucketing) from the same start, 30 steps on the tiny corpus.
LOSS_TOL = 0.05


def _shares(rank: int, world: int, init: str, root: str, out: str) -> None:
    from edgeasr.data.datamodule import AsrDataModule

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        prep = Path(root) / "data" / "prepare"
        dm = AsrDataModule(prep / "manifests", prep / "tokenizer" / "bpe.model", train_splits=["train"],
                           max_duration=10.0, num_buckets=2, seed=5)
        train = dm.train_dataloader()
        train.sampler.set_epoch(0)
        batches = [[c.id for c in cuts] for cuts in train.sampler]
        val = [cid for b in dm.val_dataloader() for cid in b["cut_ids"]]
        Path(out, f"{rank}.json").write_text(json.dumps({"train": batches, "val": val}))
    finally:
        dist.destroy_process_group()


def test_rank_samplers_share_out_the_cuts(tiny_prepared, tmp_path, monkeypatch):
    """Two gloo ranks: training batches from disjoint cuts covering the split (lhotse shards by the
    process group; only a short last round may repeat cuts), validation on disjoint halves of dev."""
    root, _, _ = tiny_prepared
    monkeypatch.chdir(root)
    mp.spawn(_shares, args=(2, f"file://{tmp_path / 'rendezvous'}", str(root), str(tmp_path)), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    from lhotse import CutSet

    train_ids = {c.id for c in CutSet.from_file(root / "data/prepare/manifests/cuts_train.jsonl.gz")}
    dev_ids = [c.id for c in CutSet.from_file(root / "data/prepare/manifests/cuts_dev.jsonl.gz")]
    a, b = ([c for batch in g["train"][:-1] for c in batch] for g in got)
    assert a and b and not set(a) & set(b)
    assert len(got[0]["train"]) == len(got[1]["train"])  # the same number of steps, or DDP hangs
    assert {c for g in got for batch in g["train"] for c in batch} == train_ids
    assert not set(got[0]["val"]) & set(got[1]["val"])
    assert sorted(got[0]["val"] + got[1]["val"]) == sorted(dev_ids)


def _run(root: Path, stage: str, *extra: str) -> dict:
    cmd = [sys.executable, str(REPO / "pipelines" / f"{stage}.py"), "experiment=tiny", "trainer.progress=false",
           "trainer.num_threads=1", "hydra.run.dir=.", "hydra.output_subdir=null", *extra]
    res = subprocess.run(cmd, cwd=root, env=stage_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{stage} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return json.loads((root / "reports" / f"{stage}.json").read_text())


def _runs(root: Path, name: str) -> list[tuple[str, str]]:
    """``(run id, status)`` of every MLflow run named ``name``, read from the sqlite store."""
    with closing(sqlite3.connect(root / "mlflow.db")) as con:
        return con.execute("SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                           "WHERE t.key = 'mlflow.runName' AND t.value = ?", (name,)).fetchall()


def _last_val_loss(root: Path, run_id: str) -> float | None:
    with closing(sqlite3.connect(root / "mlflow.db")) as con:
        row = con.execute("SELECT value FROM metrics WHERE run_uuid = ? AND key = 'val/rnnt_loss' "
                          "ORDER BY step DESC LIMIT 1", (run_id,)).fetchone()
    return None if row is None else row[0]


def test_training_stages_in_two_processes_match_one(tiny_prepared, tmp_path):
    """The documented command on CPU: one MLflow child run per stage, one report, a model that
    loads; teacher and distill against the single process: the report's figures that do not depend
    on the batches drawn (pseudo-labels) equal, the validation loss within LOSS_TOL; then compress
    and mwer in two processes."""
    from edgeasr.models.io import load_model

    root_prepared, _, _ = tiny_prepared
    roots = {}
    for name in ("one", "two"):
        roots[name] = root = tmp_path / name
        copy_project(root)
        shutil.copytree(root_prepared / "data" / "prepare", root / "data" / "prepare")
    reports = {name: {} for name in roots}
    for stage in ("train_teacher", "distill"):
        reports["one"][stage] = _run(roots["one"], stage)
        reports["two"][stage] = _run(roots["two"], stage, *DDP, HALF[stage])
    for stage in ("train_teacher", "distill"):
        one, two = reports["one"][stage], reports["two"][stage]
        assert one.keys() == two.keys()
        runs = {name: _runs(roots[name], stage) for name in roots}
        # the stage's child run (and the by-hand parent named after the stage): none per extra rank
        assert len(runs["two"]) == len(runs["one"]) == 2 and all(s == "FINISHED" for _, s in runs["two"])
        losses = {name: next(v for v in (_last_val_loss(roots[name], rid) for rid, _ in runs[name]) if v is not None)
                  for name in roots}
        assert abs(losses["two"] - losses["one"]) <= LOSS_TOL * losses["one"], (stage, losses)
        shapes = {name: {k: v.shape for k, v in load_model(roots[name] / "data" / stage / "model.pt")[0].state_dict().items()}
                  for name in roots}
        assert shapes["two"] == shapes["one"]
        assert two["train_steps"] == one["train_steps"]
        assert two["train_audio_s_per_s"] > 0
    for stage in ("compress", "mwer"):  # the rest of the chain, in two processes only
        report = _run(roots["two"], stage, *DDP)
        assert report["train_steps"] > 0 and len(_runs(roots["two"], stage)) == 2
        load_model(roots["two"] / "data" / stage / "model.pt")
    pseudo = [k for k in reports["one"]["distill"] if k.startswith("pseudo/")]
    assert pseudo and all(reports["two"]["distill"][k] == reports["one"]["distill"][k] for k in pseudo)
    assert _runs(roots["two"], "distill/baseline")  # the in-stage baseline trained in the ranks too


def test_documented_gpu_command_composes_to_the_path_the_cpu_test_runs():
    """`python pipelines/train_teacher.py trainer.accelerator=gpu trainer.devices=2 trainer.strategy=ddp`
    asks for what the CPU test above runs with accelerator=cpu: two ranks of the same code."""
    from edgeasr.training.ranks import num_processes

    gpu = compose(["trainer.accelerator=gpu", *DDP])
    cpu = compose(["experiment=tiny", *DDP])
    assert num_processes(gpu.trainer) == num_processes(cpu.trainer) == 2
    assert gpu.trainer.accelerator == "gpu" and cpu.trainer.accelerator == "cpu"
    assert num_processes(compose([]).trainer) == 1
    assert num_processes(compose(["trainer.strategy=ddp", "trainer.devices=2", "trainer.num_nodes=2"]).trainer) == 4
    with pytest.raises(ValueError, match="use trainer.strategy=ddp"):
        num_processes(compose(["trainer.strategy=ddp_spawn", "trainer.devices=2"]).trainer)
    with pytest.raises(ValueError, match="number of processes"):
        num_processes(compose(["trainer.strategy=ddp", "trainer.devices=auto"]).trainer)
    assert torch.distributed.is_available()


def test_slurm_launcher_asks_for_one_task_per_training_process():
    """`hydra/launcher=slurm`: submitit's SLURM launcher with trainer.devices tasks (and GPUs) per
    node on trainer.num_nodes nodes: the processes the stage's ranks expect."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from edgeasr.training.ranks import num_processes

    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        cfg = hydra_compose("config", ["hydra/launcher=slurm", "trainer=gpu", "trainer.devices=4", "trainer.num_nodes=2"],
                            return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert launcher.tasks_per_node * launcher.nodes == num_processes(cfg.trainer) == 8


def test_ddp_inside_a_local_multirun_is_refused_naming_the_way_out(tiny_prepared, tmp_path):
    """Lightning's launcher reruns the command: inside `-m` on one machine that is the whole sweep."""
    root_prepared, _, _ = tiny_prepared
    copy_project(tmp_path)
    shutil.copytree(root_prepared / "data" / "prepare", tmp_path / "data" / "prepare")
    cmd = [sys.executable, str(REPO / "pipelines" / "train_teacher.py"), "-m", "experiment=tiny", *DDP,
           "trainer.num_threads=1", "trainer.progress=false", "hydra.sweep.dir=sweep"]
    res = subprocess.run(cmd, cwd=tmp_path, env=stage_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode != 0 and "hydra/launcher=slurm" in res.stdout + res.stderr
