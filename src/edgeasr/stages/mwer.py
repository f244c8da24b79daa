"""The ``mwer`` stage: minimum word error rate fine-tuning (Guo et al., Interspeech 2020) of the
compressed student (``data/compress/model.pt``).

The loaded model's pruning masks are recovered from its exact zeros and stay FIXED (no pruning
callback), and its weights keep being fake-quantized at the compress stage's ``bits``: the
optimizer updates float master weights, every forward sees ``fake_quant(W_orig * mask)``. When
the compress stage also quantized activations (the spec's activations), the same requantization
points are re-attached with the saved scales, FROZEN: the fine-tuned model runs on the integer
runtime with exactly the scales the export stage reads from its meta. The
:class:`~edgeasr.quantspec.CompressionSpec` is carried unchanged: at the end the model is
materialized (pruned entries exactly 0, the rest on the per-channel grid) and checked against it
(:func:`check_compression`): same zero pattern as the loaded model, every weight on the grid, the
activation points as saved.

Training: :class:`edgeasr.training.mwer.MwerLitModule` (N-best decoded on the fly, full-sum
rescoring, MWER + RNN-T loss) over the labeled train splits.

Outputs: ``data/mwer/model.pt`` (meta ``compression``: the same spec), ``data/mwer/results/``
(recogs/errs per split before (``before/``) and after, learning curve, cost table),
``data/mwer/checkpoints/``, ``reports/mwer.json`` with ``before/wer/<split>``, ``wer/<split>``,
``wer_ratio_to_before``, ``sparsity``, ``size_bytes``, ``emulated_latency_ms``.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from edgeasr.compression import (Compression, activation_spec, float_view, is_quantized, restore_fake_quant,
                                 weight_targets)
from edgeasr.models.io import load_model, save_model
from edgeasr.quantspec import read_spec
from edgeasr.quantspec.levels import channel_scale
from edgeasr.training.mwer import MwerLitModule

from .common import decoding_meta, default_lit, finish_stage, report_model, stage_datamodule, train_transducer
from .prologue import open_stage

log = logging.getLogger(__name__)

STAGE = "mwer"


def keep_kept_weights_nonzero(comp) -> int:
    """Move every kept (mask = 1) master weight that would quantize to level 0 to level ±1.

    Training may drag an unpruned weight into the zero bin of the grid; materialized, it would be
    an exact 0 that the next stage (``masks_from_zeros``) and the size model count as pruned, so
    the sparsity pattern would silently change. One grid step is the smallest representable change
    that keeps the bitmap the compress stage produced. Returns how many weights moved.
    """
    moved = 0
    with torch.no_grad():
        for t in comp.targets:
            w = t.effective()
            scale = channel_scale(w, comp.bits).expand_as(w)
            fix = t.mask & (torch.round(w / scale) == 0)
            if fix.any():
                sign = torch.where(t.orig[fix] < 0, -1.0, 1.0).to(w.dtype)
                t.orig[fix] = sign * scale[fix]
                moved += int(fix.sum())
    comp.refresh()
    return moved


def check_compression(model, zero_masks: dict[str, torch.Tensor], spec, activations=None) -> None:
    """Raise ``RuntimeError`` unless every compressed weight of ``model`` has exactly the zeros in
    ``zero_masks`` (name -> bool, True = pruned) and lies on ``spec``'s per-channel grid
    (:class:`~edgeasr.quantspec.CompressionSpec`), and ``activations`` (the trained model's
    :func:`~edgeasr.compression.activation_spec`, when it has them) are still the spec's."""
    bits = spec.bits
    if activations != spec.activations:
        raise RuntimeError("mwer changed the activation quantization: its frozen points differ from the compression spec")

    params = dict(model.named_parameters())
    for name, pruned in zero_masks.items():
        w = params[name].detach()
        if not torch.equal(w == 0, pruned):
            new, revived = int(((w == 0) & ~pruned).sum()), int(((w != 0) & pruned).sum())
            raise RuntimeError(f"mwer changed the sparsity pattern of {name}: {revived} pruned weights are "
                               f"non-zero, {new} kept weights became 0")
        r = w / channel_scale(w, bits)
        off = float((r - torch.round(r)).abs().max())
        if off > 1e-3:
            raise RuntimeError(f"{name} is off the {bits}-bit grid after mwer (max {off:.4f} grid steps)")


def run(cfg: DictConfig, job_dir: Path | None = None) -> dict[str, float]:
    """``job_dir``: the Hydra multirun job's folder (a sweep), which then holds the outputs."""
    section = cfg[STAGE]

    with open_stage(STAGE, cfg, job_dir=job_dir, threads=cfg.trainer.num_threads, distributed=True) as stage:
        data_dir, out, results, tracker = stage.data_dir, stage.out, stage.results, stage.tracker
        src = data_dir / "compress" / "model.pt"
        model, meta = load_model(src)
        spec = read_spec(meta, str(src), need="mwer (it fine-tunes the compress stage's output)")
        bits = spec.bits
        model_cfg = meta["model_cfg"]
        dm = stage_datamodule(cfg, section)
        metrics: dict[str, float] = {}

        zero_masks = {name: (getattr(mod, attr).detach() == 0) for name, mod, attr in weight_targets(model)}

        # Before: the loaded compressed model exactly as compress shipped and reported it.
        if stage.ranks.main:  # (the other ranks go on to train)
            shipped = restore_fake_quant(copy.deepcopy(model), spec).eval()
            before, _ = report_model(cfg, shipped, dm, section, results / "before", bits=bits)
            metrics.update({f"before/{k}": v for k, v in before.items() if k.startswith("wer") or k == "sparsity"})
            del shipped

        model.train()
        # Masks from the exact zeros, fixed: no pruning callback, so pruned weights stay 0 (zero
        # gradient through the mask) and the fake quantizer keeps training on the deployed grid.
        # Weights first, then activations (the quantized encoder runs the weight hooks itself).
        comp = Compression(model, bits=bits, masks_from_zeros=True)
        restore_fake_quant(model, spec)
        src_fp = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
        model, dm, curve, speed, trainer = train_transducer(
            cfg, STAGE, OmegaConf.create(model_cfg), section, tracker, out, datamodule=dm, model=model,
            lit_factory=lambda m, d, sec: default_lit(m, d, sec, cls=MwerLitModule, nbest=int(sec.nbest),
                                                      mwer_weight=float(sec.mwer_weight)),
            fingerprint_extra=src_fp)
        if not stage.ranks.main:  # trained its share; rank zero saves, evaluates and reports
            return {}
        metrics["kept_weights_moved_off_zero"] = keep_kept_weights_nonzero(comp)
        comp.materialize()
        trained_act = activation_spec(model) if is_quantized(model) else None
        with float_view(model) as plain:
            check_compression(plain, zero_masks, spec, trained_act)
            save_model(out / "model.pt", plain, model_cfg,
                       meta={"stage": STAGE, "steps": trainer.global_step, "compression": spec.to_dict(),
                             **decoding_meta(section)})

        after, cost = report_model(cfg, model, dm, section, results, bits=bits)
        metrics.update(after)
        if after["sparsity"] != before["sparsity"]:
            raise RuntimeError(f"sparsity changed from {before['sparsity']} to {after['sparsity']}")
        if metrics.get("before/wer/test"):
            metrics["wer_ratio_to_before"] = round(metrics["wer/test"] / metrics["before/wer/test"], 4)
        finish_stage(STAGE, tracker, metrics, results, out / "model.pt", curve, cost, speed, trainer)
    return metrics
