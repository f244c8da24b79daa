"""The ``train_teacher`` stage: a Conformer RNN-T trained with Lightning on ``train`` (+ its
augmented copies), evaluated on dev/test/test_noisy/test_rare.

Outputs: ``data/train_teacher/model.pt`` (best by dev WER), ``data/train_teacher/results/``
(recogs/errs per split, learning curve), ``data/train_teacher/checkpoints/`` (kept across runs so
a killed run resumes), ``reports/train_teacher.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from edgeasr.models.io import save_model

from .common import finish_stage, report_model, train_transducer
from .prologue import open_stage

log = logging.getLogger(__name__)

STAGE = "train_teacher"


def run(cfg: DictConfig, job_dir: Path | None = None) -> dict[str, float]:
    """``job_dir``: the Hydra multirun job's folder (the convergence harness), which then holds the outputs."""
    section = cfg[STAGE]
    with open_stage(STAGE, cfg, job_dir=job_dir, threads=cfg.trainer.num_threads, distributed=True) as stage:
        out, results, tracker = stage.out, stage.results, stage.tracker
        model, dm, curve, speed, trainer = train_transducer(cfg, STAGE, cfg.model.teacher, section, tracker, out)
        if not stage.ranks.main:  # trained its share; rank zero saves, evaluates and reports
            return {}
        model_cfg = {**OmegaConf.to_container(cfg.model.teacher, resolve=True), "vocab_size": dm.tokenizer.vocab_size}
        save_model(out / "model.pt", model, model_cfg, meta={"stage": STAGE, "steps": trainer.global_step})

        metrics, cost = report_model(cfg, model, dm, section, results)
        finish_stage(STAGE, tracker, metrics, results, out / "model.pt", curve, cost, speed, trainer)
    return metrics
