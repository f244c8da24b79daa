"""The ``compress`` stage: quantization-aware training with the absolute-cosine regularizer and
gradual magnitude pruning of the distilled student (``data/distill/model.pt``).

* Baseline (``baseline``): post-training quantization + one-shot magnitude pruning of the same
  student at the same bits, sparsity and mask rule (``pruning.scope``, ``block``, ``n_m``), no
  training: ``ptq/wer/<split>``.
* QAT: fake-quantized weights (STE) from step 0, the regularizer ramping in, the cubic pruning
  schedule over ``pruning.start_step .. end_step``; then fine-tuning at the final masks.

Outputs: ``data/compress/model.pt`` (pruned entries exactly 0, the rest on the ``bits`` grid; its
meta records the :class:`~edgeasr.quantspec.CompressionSpec` as ``compression``), ``data/compress/results/`` (recogs/errs, per-layer sparsity table,
schedule plot), ``reports/compress.json``.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from edgeasr.compression import (Compression, activation_spec, attach_activation_quant, calibrate, float_view,
                                 is_quantized, prune_masks, quant_points)
from edgeasr.compression.callbacks import GradualPruning, QuantRegularizer
from edgeasr.models.io import load_model, save_model
from edgeasr.quantspec import CompressionSpec

from .common import decoding_meta, default_lit, finish_stage, report_model, stage_datamodule, train_transducer
from .prologue import open_stage

log = logging.getLogger(__name__)

STAGE = "compress"


def attach_activations(model, section: DictConfig, dm) -> None:
    """Activation fake-quant at the integer runtime's requantization points, calibrated on the
    first ``calibration_batches`` training batches (a fixed, seeded slice)."""
    act = section.activations
    attach_activation_quant(model, bits=int(act.bits), residual_bits=int(act.residual_bits),
                            momentum=float(act.momentum), weight_bits=int(section.bits))
    dm.setup("fit")
    batches = itertools.islice(iter(dm.train_dataloader()), int(act.calibration_batches))
    calibrate(model, batches)


def pruning_structure(pr: DictConfig) -> dict:
    """``compress.pruning``'s mask rule (scope, block, N:M) as :func:`prune_masks` and
    :class:`GradualPruning` take it."""
    return {"scope": str(pr.scope), "block": int(pr.block), "n_m": tuple(pr.n_m) if pr.n_m else None}


def ptq_baseline(student, bits: int, sparsity: float, section: DictConfig, dm):
    """PTQ + one-shot magnitude pruning (+ calibrated activation quantization): a compressed copy
    of ``student``, no training. The masks follow the same rule as the gradual pruning
    (``section.pruning``: scope, block, N:M), in one shot at ``sparsity``."""
    model = copy.deepcopy(student)
    comp = Compression(model, bits=bits)
    comp.set_masks(prune_masks([t.effective() for t in comp.targets], sparsity, **pruning_structure(section.pruning)))
    comp.materialize()
    if section.activations.enabled:
        attach_activations(model, section, dm)
    return model.eval()


def run(cfg: DictConfig, job_dir: Path | None = None) -> dict[str, float]:
    """``job_dir``: the Hydra multirun job's folder (a sweep), which then holds the outputs."""
    section = cfg[STAGE]
    bits, sparsity = int(section.bits), float(section.sparsity)
    pr = section.pruning

    with open_stage(STAGE, cfg, job_dir=job_dir, threads=cfg.trainer.num_threads, distributed=True) as stage:
        data_dir, out, results, tracker = stage.data_dir, stage.out, stage.results, stage.tracker
        src = data_dir / "distill" / "model.pt"
        student, meta = load_model(src)
        model_cfg = meta["model_cfg"]
        dm = stage_datamodule(cfg, section)
        metrics: dict[str, float] = {}

        if stage.ranks.main:  # the references rank zero reports (the other ranks go on to train)
            fp32_metrics, _ = report_model(cfg, student, dm, section, results / "fp32", bits=32)
            metrics.update({f"fp32/{k}": v for k, v in fp32_metrics.items() if k.startswith("wer")})
        if section.baseline and stage.ranks.main:
            ptq = ptq_baseline(student, bits, sparsity, section, dm)
            ptq_metrics, _ = report_model(cfg, ptq, dm, section, results / "ptq", bits=bits)
            metrics.update({f"ptq/{k}": v for k, v in ptq_metrics.items() if k.startswith("wer") or k == "sparsity"})
            del ptq

        model = student.train()
        comp = Compression(model, bits=bits)
        if section.activations.enabled:
            attach_activations(model, section, dm)
        pruning = GradualPruning(comp, final=sparsity, initial=float(pr.initial), start=int(pr.start_step),
                                 end=int(pr.end_step), update_every=int(pr.update_every), **pruning_structure(pr))
        reg = section.regularizer
        regularizer = QuantRegularizer(comp, weight=float(reg.weight), start=int(reg.start_step),
                                       ramp_steps=int(reg.ramp_steps))
        src_fp = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
        model, dm, curve, speed, trainer = train_transducer(
            cfg, STAGE, OmegaConf.create(model_cfg), section, tracker, out, datamodule=dm, model=model,
            lit_factory=lambda m, d, sec: default_lit(m, d, sec, best_after_step=int(pr.end_step)),
            callbacks=[pruning, regularizer], fingerprint_extra=src_fp)
        if not stage.ranks.main:  # trained its share; rank zero saves, evaluates and reports
            return {}
        comp.refresh()
        table = comp.layer_table()
        grid = regularizer.mean_grid_distance()
        comp.materialize()
        for _, q in quant_points(model):
            q.frozen = True
        target = 1.0 - pr.n_m[0] / pr.n_m[1] if pr.n_m else sparsity  # N:M fixes the sparsity
        spec = CompressionSpec(bits, target, str(pr.scope), activation_spec(model) if is_quantized(model) else None)
        with float_view(model) as plain:
            save_model(out / "model.pt", plain, model_cfg,
                       meta={"stage": STAGE, "steps": trainer.global_step, "compression": spec.to_dict(),
                             **decoding_meta(section)})

        # WER of the fake-quantized model (what the integer runtime computes); cost of its weights
        qat_metrics, cost = report_model(cfg, model, dm, section, results, bits=bits)
        metrics.update(qat_metrics)
        metrics["grid_distance"] = round(grid, 6)
        if metrics.get("fp32/wer/test"):
            metrics["wer_ratio_to_fp32"] = round(metrics["wer/test"] / metrics["fp32/wer/test"], 4)
        (results / "layer_sparsity.json").write_text(json.dumps(table, indent=1))
        tracker.log_figure(pruning.figure(), "sparsity_schedule.png")
        finish_stage(STAGE, tracker, metrics, results, out / "model.pt", curve, cost, speed, trainer)
    return metrics
