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

from .common import finish_stage, report_model, train_transducer

log = logging.getLogger(__name__)

STAGE = "train_teacher"


def run(cfg: DictConfig) -> dict[str, float]:
    from edgeasr.config import sweep_job_dir
    from edgeasr.models.io import save_model
    from edgeasr.tracking import stage_run

    section = cfg[STAGE]
    job = sweep_job_dir()  # a Hydra multirun job (the convergence harness) writes into its own folder
    out = (job / "data" if job else Path(cfg.paths.data_dir)) / STAGE
    params = OmegaConf.to_container(OmegaConf.masked_copy(cfg, ["seed", "model", "trainer", "hw", STAGE]), resolve=True)
    params.get("model", {}).pop("student", None)
    with stage_run(STAGE, cfg, params=params, report_dir=job / "reports" if job else None) as tracker:
        model, dm, curve, speed, trainer = train_transducer(cfg, STAGE, cfg.model.teacher, section, tracker, out)
        model_cfg = {**OmegaConf.to_container(cfg.model.teacher, resolve=True), "vocab_size": dm.tokenizer.vocab_size}
        save_model(out / "model.pt", model, model_cfg, meta={"stage": STAGE, "steps": trainer.global_step})

        results = out / "results"
        metrics, cost = report_model(cfg, model, dm, section, results)
        finish_stage(STAGE, tracker, metrics, results, out / "model.pt", curve, cost, speed, trainer)
    return metrics
