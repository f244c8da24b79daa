"""The start every stage shares: where it reads and writes, the MLflow run that logs the params it
reads (declared in :mod:`edgeasr.stages.params`), torch's thread count, and for a training stage
under ``trainer.strategy=ddp`` its other processes (:mod:`edgeasr.training.ranks`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from omegaconf import DictConfig

from edgeasr.tracking import QuietRun, StageRun, stage_run
from edgeasr.training.ranks import Ranks, launch

from .params import logged_params


@dataclass(frozen=True)
class Stage:
    """What a running stage needs from its prologue."""

    name: str
    data_dir: Path  # paths.data_dir: every stage's inputs
    out: Path  # <data_dir>/<name>, or <job>/data/<name> in a Hydra multirun job
    tracker: StageRun | QuietRun  # QuietRun in a training process other than rank zero
    ranks: Ranks = Ranks()

    @property
    def results(self) -> Path:
        return self.out / "results"


def _make_outputs(out: Path, fresh: Literal["out", "results"] | None, results: bool) -> None:
    """``fresh``: the folder emptied first, so a rerun never mixes old and new files."""
    stale = {"out": out, "results": out / "results", None: None}[fresh]
    if stale is not None and stale.exists():
        shutil.rmtree(stale)
    out.mkdir(parents=True, exist_ok=True)
    if results:
        (out / "results").mkdir(exist_ok=True)


@contextmanager
def open_stage(name: str, cfg: DictConfig, *, job_dir: Path | None = None, threads: int | None = None,
               fresh: Literal["out", "results"] | None = None, results: bool = True,
               distributed: bool = False) -> Iterator[Stage]:
    """Set up stage ``name`` and run the block inside its MLflow run (:func:`stage_run`).

    ``job_dir``: the Hydra multirun job folder (``edgeasr.config.sweep_job_dir()``, resolved by
    the ``pipelines/`` entry): outputs and the report go there instead of ``data/`` and
    ``reports/``. ``threads``: torch's intra-op threads for the stage (None leaves them).
    ``results``: whether the stage writes ``<out>/results/``. ``distributed``: a training stage
    whose ``trainer`` config may ask for several processes: they start here, each runs the block;
    rank zero alone makes the outputs and the MLflow run (the others get a :class:`QuietRun`).
    """
    data_dir = Path(cfg.paths.data_dir)
    out = (job_dir / "data" if job_dir else data_dir) / name
    ranks = launch(cfg.trainer) if distributed else Ranks()
    if not ranks.main:
        ranks.barrier()  # rank zero's outputs exist
        if threads is not None:
            torch.set_num_threads(int(threads))
        yield Stage(name, data_dir, out, QuietRun(name), ranks)
        return
    _make_outputs(out, fresh, results)
    ranks.barrier()
    report_dir = job_dir / "reports" if job_dir else None
    with stage_run(name, cfg, params=logged_params(name, cfg), report_dir=report_dir) as tracker:
        if threads is not None:
            torch.set_num_threads(int(threads))
        yield Stage(name, data_dir, out, tracker, ranks)
