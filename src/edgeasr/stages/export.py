"""The ``export`` stage: the fine-tuned compressed student (``data/<source>/model.pt``, default the
``mwer`` stage's) as one versioned, checksummed container (``data/export/student.edgeasr``; format
in ``docs/export_format.md``), read back through the validating loader into the integer runtime.

Reports ``size_bytes`` (the file size) against the teacher's fp32 bytes, and the integer runtime
against the fake-quantized PyTorch model on ``agreement_splits``: WER of both, their absolute
difference, the share of identical transcripts and the largest logit difference on the first batch.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from edgeasr.compression import float_view, restore_fake_quant
from edgeasr.data.tokenizer import Tokenizer
from edgeasr.evaluation import add_test_totals, decode_loader, model_metrics, wer_metrics
from edgeasr.export import read_container
from edgeasr.export.sherpa import check_fp32_zeros, check_int8_zeros, export_sherpa_bundles
from edgeasr.export.student import export_student
from edgeasr.models.io import load_model
from edgeasr.quantspec import read_spec
from edgeasr.runtime import load_student, tokens_to_text

from .common import stage_datamodule
from .prologue import open_stage

log = logging.getLogger(__name__)

STAGE = "export"


def run(cfg: DictConfig, job_dir: Path | None = None) -> dict[str, float]:
    section = cfg[STAGE]

    with open_stage(STAGE, cfg, job_dir=job_dir, threads=section.num_threads) as stage:
        data_dir, out, results, tracker = stage.data_dir, stage.out, stage.results, stage.tracker
        src = data_dir / str(section.source) / "model.pt"
        model, meta = load_model(src)
        spec = read_spec(meta, str(src), need="the export stage")
        tok = Tokenizer(data_dir / "prepare" / "tokenizer" / "bpe.model")
        tokens = [tok.sp.id_to_piece(i) for i in range(tok.vocab_size)]
        path = out / "student.edgeasr"
        encoding = section.encoding if isinstance(section.encoding, str) else tuple(section.encoding)
        size = export_student(model, meta, tokens, path, encoding=encoding,
                              extra={"source": {"stage": str(section.source), "steps": meta.get("steps")},
                                     "decoding": {"max_sym_per_frame": int(section.decoding.max_sym_per_frame)}})
        budget = section.get("max_size_bytes")
        if budget and size > int(budget):
            raise ValueError(
                f"{path}: {size} bytes exceed export.max_size_bytes={int(budget)} (the device's budget for the "
                f"model file); shrink the student (model.student), prune more (compress.sparsity) or quantize to "
                f"fewer bits (compress.bits), or raise export.max_size_bytes")
        c = read_container(path)  # what a device would load: validated, then run in integers
        rt = load_student(path, c)
        weights = [r for r in c.tensors.values() if r.kind == "qweight"]
        n_weights = sum(r.values.size for r in weights)
        zeros = sum(int((r.values == 0).sum()) for r in weights)
        encodings: dict[str, int] = {}
        for r in weights:
            encodings[r.encoding] = encodings.get(r.encoding, 0) + 1
        metrics: dict[str, float] = {
            "size_bytes": size, "params": n_weights, "sparsity": round(zeros / max(1, n_weights), 6),
            "bits_per_weight": round(8 * size / max(1, n_weights), 4),
            **({"size_budget_bytes": int(budget)} if budget else {}),
            **{f"encoding/{k}": v for k, v in sorted(encodings.items())},
        }
        teacher_report = Path(cfg.paths.reports_dir) / "train_teacher.json"
        teacher = json.loads(teacher_report.read_text()) if teacher_report.is_file() else {}
        if teacher.get("size_bytes"):
            metrics["teacher/size_bytes"] = teacher["size_bytes"]
            metrics["size_pct_of_teacher"] = round(100 * size / teacher["size_bytes"], 4)

        if section.sherpa.enabled:
            metrics.update(sherpa_bundles(model, data_dir / "prepare" / "tokenizer", out / "sherpa", section.sherpa))

        # Integer runtime vs the fake-quantized PyTorch model it was trained as, in float64 (the
        # runtime's integers exactly; float32 rounding alone flips a few levels)
        fq = restore_fake_quant(model, spec).eval()
        ref = copy.deepcopy(fq).double()
        dm = stage_datamodule(cfg, section)
        for split in section.agreement_splits:
            loader = list(dm.split_dataloader(split))
            a_int = decode_loader(rt, loader, lambda ids: tokens_to_text(rt.tokens, ids),
                                  max_sym_per_frame=rt.max_sym_per_frame)
            a_fq = decode_loader(ref, loader, tok.decode, max_sym_per_frame=rt.max_sym_per_frame)
            a_int.write_recogs(results / f"recogs-{split}.txt")
            a_int.write_errs(results / f"errs-{split}.txt")
            same = sum(r1[2] == r2[2] for r1, r2 in zip(a_int.results, a_fq.results))
            metrics.update(wer_metrics(a_int, split))  # wer/<split>, and slot_/carrier_wer/<split> if known
            metrics[f"fakequant/wer/{split}"] = round(a_fq.wer, 4)
            metrics[f"wer_abs_diff_vs_fakequant/{split}"] = round(abs(a_int.wer - a_fq.wer), 4)
            metrics[f"identical_transcripts/{split}"] = round(same / max(1, len(a_int.results)), 4)
            if split == "test":
                add_test_totals(metrics)
                if "wer/test" in teacher:
                    metrics["teacher/wer/test"] = teacher["wer/test"]
                    metrics["wer_ratio_to_teacher"] = round(a_int.wer / teacher["wer/test"], 4)
        metrics["logit_max_abs_diff"] = round(logit_gap(ref, rt, loader[0]), 6)
        # Emulated latency of the exported weights (analytical roofline; the evaluate stage measures
        # it on the integer runtime's executed MACs). size_bytes stays the file size.
        with float_view(fq) as plain:
            cost, _ = model_metrics(plain, cfg.hw, dm.cuts("test"), dm.tokenizer, bits=spec.bits)
        metrics.update({k: cost[k] for k in ("emulated_latency_ms", "emulated_rtf")})

        tracker.log_report(metrics)
        for f in sorted(results.glob("*.txt")):
            tracker.log_artifact(f, "results")
        tracker.log_artifact(path, "model")
        log.info("%s: %s", STAGE, metrics)
    return metrics


def sherpa_bundles(model, tokenizer_dir: Path, out: Path, sc) -> dict[str, float]:
    """sherpa-onnx offline + streaming bundles (fp32 and ONNX Runtime int8) of the float student
    with the compressed weights; checks that every pruned weight is still exactly zero in them."""
    bundles = export_sherpa_bundles(model, tokenizer_dir, out, chunk_frames=int(sc.chunk_frames), int8=bool(sc.int8))
    metrics: dict[str, float] = {}
    for mode, b in bundles.items():
        fp32 = b.files(int8=False)
        parts = [fp32[p] for p in ("encoder", "decoder", "joiner")]
        zeros = check_fp32_zeros(model, parts)  # raises naming the tensor if a pruned weight moved
        metrics[f"sherpa/{mode}/fp32_bytes"] = sum(Path(f).stat().st_size for f in parts)
        if sc.int8:
            int8 = b.files(int8=True)
            for p in ("encoder", "decoder", "joiner"):
                check_int8_zeros(fp32[p], int8[p])
            metrics[f"sherpa/{mode}/int8_bytes"] = sum(Path(int8[p]).stat().st_size for p in ("encoder", "decoder", "joiner"))
    metrics["sherpa/sparsity"] = zeros["sparsity"]
    return metrics


def logit_gap(fq_model, rt, batch) -> float:
    """Largest |logit| difference between the fake-quantized model and the integer runtime over
    every frame of ``batch`` with the empty-history predictor output (relative to the logit range)."""
    with torch.no_grad():
        enc, lens = fq_model.encode(batch["features"], batch["feature_lens"])
        pred, _ = fq_model.predictor.init_decoder(enc.size(0))
        ienc, _ = rt.encode(batch["features"], batch["feature_lens"])
        ipred, _ = rt.predictor.init_decoder(enc.size(0))
        gap, span = 0.0, 0.0
        for t in range(int(lens.min())):
            a = fq_model.joiner.forward_frame(enc[:, t], pred).double()
            b = rt.joiner.forward_frame(ienc[:, t], ipred)
            gap = max(gap, float((a - b).abs().max()))
            span = max(span, float(a.max() - a.min()))
    return gap / max(span, 1e-9)
