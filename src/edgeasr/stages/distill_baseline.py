"""The ``distill`` stage's labels-only baseline, in this process or in a second one beside the student.

Why a second process (``distill.baseline_process``): the 0.75 M LSTM student does not keep two
threads busy (README "Distillation": two 1-thread trainings side by side run ~1.3x the audio of one
2-thread training), and the baseline needs neither pseudo-labels nor teacher targets, so on 2 cores
it trains from the stage's first second while this process labels, computes the targets and trains
the student, each on one thread. Same seed, data, steps and schedule as the sequential baseline.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from edgeasr.data.datamodule import DistillDataModule
from edgeasr.tracking import StageRun
from edgeasr.training.distill import DistillLitModule
from edgeasr.training.ranks import Ranks

from .common import default_lit, log_training, report_model, stage_datamodule, train_transducer

log = logging.getLogger(__name__)

STAGE = "distill"


def distill_lit(kd_weight: float):
    """``lit_factory`` for :func:`train_transducer`: a :class:`DistillLitModule` at ``kd_weight``."""
    return lambda m, d, sec: default_lit(m, d, sec, cls=DistillLitModule, kd_weight=kd_weight,
                                         kd_delay=int(sec.kd_delay))


def train_baseline(cfg: DictConfig, tracker: StageRun, out: Path, results: Path) -> dict[str, float]:
    """Train and evaluate the labels-only baseline; its curve and metrics go to ``tracker`` (the
    stage's nested ``baseline`` run). Returns its metrics (``wer``, ``wer/<split>``, ...)."""
    section = cfg[STAGE]
    dm = stage_datamodule(cfg, section, DistillDataModule)
    model, _, curve, _, _ = train_transducer(cfg, STAGE, cfg.model.student, section, tracker, out, datamodule=dm,
                                             lit_factory=distill_lit(0.0), name="baseline", run_id=tracker.run_id)
    if not Ranks.current().main:  # under DDP rank zero evaluates it
        return {}
    metrics, _ = report_model(cfg, model, dm, section, results / "baseline")
    tracker.log_metrics(metrics)
    log_training(STAGE, tracker, curve, results, "baseline")
    return metrics


@dataclass(frozen=True)
class _Job:
    """What the second process needs, as plain values (it is started with ``spawn``)."""

    cfg: dict
    uri: str
    run_id: str
    parent_run_id: str
    experiment_id: str
    invocation: str | None
    root: str
    out: str
    results: str
    result_file: str
    parent_pid: int


def _exit_with_parent(parent_pid: int, every_s: float = 1.0) -> None:
    """End this process once its parent is gone. A SIGKILLed stage (kill -9, the OOM killer) runs
    no cleanup: an orphaned baseline would train on and race the rerun's baseline over
    checkpoints/baseline and results/ (tests/test_drills_resume.py)."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _child(job: _Job) -> None:
    _exit_with_parent(job.parent_pid)
    torch.set_num_threads(1)
    cfg = OmegaConf.create(job.cfg)
    tracker = StageRun(MlflowClient(job.uri), job.run_id, job.parent_run_id, f"{STAGE}.baseline", uri=job.uri,
                       experiment_id=job.experiment_id, invocation_key=job.invocation, root=Path(job.root))
    metrics = train_baseline(cfg, tracker, Path(job.out), Path(job.results))
    Path(job.result_file).write_text(json.dumps(metrics))


class BaselineProcess:
    """The baseline trained in a spawned process with one torch thread; :meth:`result` joins it."""

    def __init__(self, cfg: DictConfig, tracker: StageRun, out: Path, results: Path):
        child_cfg = OmegaConf.to_container(cfg, resolve=True)
        child_cfg["trainer"]["num_threads"] = 1
        child_cfg["trainer"]["progress"] = False  # one progress bar on the terminal: the student's
        self._result = out / "baseline_metrics.json"
        self._result.unlink(missing_ok=True)
        job = _Job(child_cfg, tracker.tracking_uri, tracker.run_id, tracker.parent_run_id, tracker.experiment_id,
                   tracker.invocation, str(tracker.root), str(out), str(results), str(self._result), os.getpid())
        self._proc = mp.get_context("spawn").Process(target=_child, args=(job,), name="distill-baseline")
        self._proc.start()
        log.info("labels-only baseline training in process %d (1 thread)", self._proc.pid)

    def result(self) -> dict[str, float]:
        self._proc.join()
        if self._proc.exitcode != 0 or not self._result.is_file():
            raise RuntimeError(f"the distill stage's labels-only baseline process failed (exit code "
                               f"{self._proc.exitcode}; its traceback is above); set distill.baseline_process=false "
                               "to train it in the stage's own process")
        metrics = json.loads(self._result.read_text())
        self._result.unlink()
        return metrics

    def stop(self) -> None:
        """Terminate the process if it still runs (the stage failed or was interrupted)."""
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(10)
