"""The ``distill`` stage: a small streaming LSTM student learns from the frozen teacher on
labeled and unlabeled audio (Panchapagesan et al., 2021).

1. Pseudo-labels: the teacher's modified beam search on ``unlabeled``; a hypothesis is kept when
   its posterior within the N-best is at least ``pseudo_labels.min_confidence``. Their WER against
   the scoring-only transcripts is logged (the training code never reads those).
2. Teacher targets: the collapsed {next label, blank, rest} distribution at every (t, u) node
   along each training target (ground truth on labeled cuts, the pseudo-label on unlabeled ones),
   computed ONCE and cached in memory. Why cached: features are fixed (no SpecAugment, the
   augmented copies are pre-rendered) so targets never change, and the student sees each cut more
   than once in its budget; one teacher pass over the data costs less than a teacher forward per
   student step (both timings are reported: ``teacher_targets_s`` against ``student step`` time).
3. A labels-only baseline (``kd_weight`` 0, no unlabeled audio, same steps) when ``baseline``.
4. The distilled student: RNN-T (+CTC) + ``kd_weight`` x KL on batches mixing labeled and
   pseudo-labeled audio at ``unlabeled_ratio``; the KL pairs student frame t with teacher frame
   t - ``kd_delay`` (the full-context teacher emits early) and weights nodes by the teacher's
   alignment occupancy when ``kd_nodes: occupancy`` (README: measured variants).

Outputs: ``data/distill/model.pt``, ``data/distill/results/`` (recogs/errs per split, pseudo-label
recogs/errs, learning curves), ``data/distill/checkpoints/``, ``reports/distill.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch
from lhotse import CutSet, SupervisionSet
from lhotse.utils import fastcopy
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress

from edgeasr.data.datamodule import DistillDataModule
from edgeasr.data.disk import write_manifest
from edgeasr.decoding import modified_beam_search
from edgeasr.metrics import WerAccumulator
from edgeasr.models.io import load_model, save_model
from edgeasr.training.distill import teacher_targets
from edgeasr.training.ranks import Ranks, num_processes

from .common import decoding_meta, finish_stage, report_model, stage_datamodule, train_transducer
from .distill_baseline import BaselineProcess, distill_lit, train_baseline
from .prologue import open_stage

log = logging.getLogger(__name__)

STAGE = "distill"


def _label(teacher, dm, cuts, beam: int, max_duration: float, progress: bool) -> list[tuple[str, list[int], float]]:
    """The teacher's best hypothesis on each cut: ``(cut id, token ids, N-best posterior)``."""
    teacher.eval()
    labels = []
    with Progress(disable=not progress, transient=True) as bar, torch.inference_mode():
        task = bar.add_task("pseudo-labels (teacher beam search)", total=sum(c.duration for c in cuts))
        device = next(teacher.parameters()).device
        for b in dm.cuts_dataloader(cuts, max_duration):
            enc, enc_lens = teacher.encode(b["features"].to(device), b["feature_lens"].to(device))
            for cut_id, nbest in zip(b["cut_ids"], modified_beam_search(teacher, enc, enc_lens, beam=beam)):
                lse = torch.logsumexp(torch.tensor([h.log_prob for h in nbest]), 0).item()
                labels.append((cut_id, list(nbest[0].tokens), math.exp(nbest[0].log_prob - lse)))
            bar.advance(task, float(b["feature_lens"].sum()) * 0.01)
    return labels


def pseudo_label(teacher, dm, cuts, beam: int, min_confidence: float, max_duration: float, results: Path,
                 scoring: dict[str, str] | None = None, progress: bool = True, ranks: Ranks = Ranks()):
    """Teacher N-best on ``cuts``; returns ``(pseudo_cuts, metrics)``.

    A kept cut's supervision gets the best hypothesis as ``text`` and its ids in
    ``custom["tokens"]`` (with ``custom["confidence"]``). Empty hypotheses and those under
    ``min_confidence`` are dropped and counted. ``scoring`` (supervision id -> transcript) gives
    the pseudo-label WER, over all cuts and over the kept ones. Under DDP each rank labels its
    share and every rank gets all labels (in ``cuts``' order); rank zero writes the recogs.
    """
    if ranks.world_size == 1:
        labels = _label(teacher, dm, cuts, beam, max_duration, progress)
    else:
        order = {c.id: i for i, c in enumerate(cuts)}
        shares = ranks.gather(_label(teacher, dm, CutSet.from_cuts(ranks.shard(list(cuts))), beam, max_duration, progress and ranks.main))
        labels = sorted((x for share in shares for x in share), key=lambda x: order[x[0]])
    by_id = {c.id: c for c in cuts}
    kept, acc_all, acc_kept = [], WerAccumulator(), WerAccumulator()
    dropped = {"empty": 0, "low_confidence": 0}
    for cut_id, tokens, conf in labels:
        text = dm.tokenizer.decode(tokens)
        cut = by_id[cut_id]
        sup = cut.supervisions[0]
        ref = (scoring or {}).get(sup.id)
        if ref is not None:
            acc_all.update([ref], [text], ids=[cut_id])
        if not tokens:
            dropped["empty"] += 1
            continue
        if conf < min_confidence:
            dropped["low_confidence"] += 1
            continue
        if ref is not None:
            acc_kept.update([ref], [text], ids=[cut_id])
        custom = {**(sup.custom or {}), "tokens": tokens, "confidence": round(conf, 4)}
        kept.append(fastcopy(cut, supervisions=[fastcopy(sup, text=text, custom=custom)]))
    metrics = {"pseudo/kept": len(kept), "pseudo/dropped_empty": dropped["empty"],
               "pseudo/dropped_low_confidence": dropped["low_confidence"],
               "pseudo/kept_hours": round(sum(c.duration for c in kept) / 3600, 4)}
    if acc_all.words:
        if ranks.main:
            acc_all.write_recogs(results / "recogs-pseudo.txt")
            acc_all.write_errs(results / "errs-pseudo.txt")
        metrics["pseudo/wer"] = round(acc_all.wer, 4)
    if acc_kept.words:
        metrics["pseudo/wer_kept"] = round(acc_kept.wer, 4)
    log.info("pseudo-labels: kept %d of %d unlabeled cuts (%s dropped)", len(kept), len(cuts), dropped)
    return CutSet.from_cuts(kept), metrics


def _scoring_transcripts(prep: Path) -> dict[str, str] | None:
    path = prep / "scoring" / "supervisions_unlabeled.jsonl.gz"
    if not path.is_file():
        return None
    return {s.id: s.text for s in SupervisionSet.from_file(path) if s.text}


def _teacher_targets(teacher, dm, cuts, max_duration: float, progress: bool, occupancy: bool, ranks: Ranks = Ranks()):
    """Every cut's targets on every rank (each rank computes its share: the samplers draw from all)."""
    share = cuts if ranks.world_size == 1 else CutSet.from_cuts(ranks.shard(list(cuts)))
    with Progress(disable=not (progress and ranks.main), transient=True) as bar:
        task = bar.add_task("teacher targets", total=sum(c.duration for c in share))
        targets = teacher_targets(teacher, dm.cuts_dataloader(share, max_duration), lambda s: bar.advance(task, s),
                                  occupancy=occupancy)
    if ranks.world_size == 1:
        return targets
    return {k: v for part in ranks.gather(targets) for k, v in part.items()}


def run(cfg: DictConfig, job_dir: Path | None = None) -> dict[str, float]:
    section = cfg[STAGE]
    progress = bool(cfg.trainer.get("progress", True))

    if section.kd_nodes not in ("all", "occupancy"):  # checked before minutes of pseudo-labeling
        raise ValueError(f"distill.kd_nodes must be 'all' or 'occupancy', got {section.kd_nodes!r}")

    threads = int(cfg.trainer.num_threads)
    # (not beside DDP ranks: the baseline then trains after the pre-work, in the ranks, like the student)
    side_by_side = (bool(section.baseline) and bool(section.get("baseline_process", False)) and threads >= 2
                    and num_processes(cfg.trainer) == 1)
    # train_transducer sets torch's threads from the config it is given: with the baseline in its
    # own 1-thread process, this process keeps the other threads
    run_cfg = OmegaConf.merge(cfg, {"trainer": {"num_threads": threads - 1}}) if side_by_side else cfg

    with open_stage(STAGE, cfg, job_dir=job_dir, threads=int(run_cfg.trainer.num_threads), distributed=True) as stage, \
            contextlib.ExitStack() as parts:
        data_dir, out, results, tracker, ranks = stage.data_dir, stage.out, stage.results, stage.tracker, stage.ranks
        base_proc = None
        if side_by_side:  # first: it needs neither pseudo-labels nor teacher targets
            base_proc = BaselineProcess(run_cfg, parts.enter_context(tracker.nested("baseline")), out, results)
            parts.callback(base_proc.stop)
        teacher_path = data_dir / "train_teacher" / "model.pt"
        teacher, _ = load_model(teacher_path)
        teacher.to(ranks.device(run_cfg.trainer))  # its passes over the data on this rank's GPU, if any
        # Checkpoints of a student distilled from another teacher are never resumed.
        teacher_fp = hashlib.sha256(teacher_path.read_bytes()).hexdigest()[:16]
        dm = stage_datamodule(run_cfg, section)
        metrics: dict[str, float] = {}
        pl_cfg = section.pseudo_labels

        t0 = time.perf_counter()
        unlabeled = dm.cuts("unlabeled") if section.unlabeled_ratio > 0 else CutSet.from_cuts([])
        pseudo, pl_metrics = pseudo_label(teacher, dm, unlabeled, int(pl_cfg.beam), float(pl_cfg.min_confidence),
                                          float(pl_cfg.batch_max_duration), results,
                                          _scoring_transcripts(data_dir / "prepare"), progress, ranks)
        metrics.update(pl_metrics)
        metrics["pseudo_label_s"] = round(time.perf_counter() - t0, 2)
        if ranks.main:
            write_manifest(pseudo, out / "pseudo_labels.jsonl.gz")  # temp file, fsync, rename: whole or absent

        targets = None
        if section.kd_weight > 0:
            t0 = time.perf_counter()
            cuts = CutSet.from_cuts([*dm.train_cuts(), *pseudo])
            targets = _teacher_targets(teacher, dm, cuts, float(pl_cfg.batch_max_duration), progress,
                                       occupancy=section.kd_nodes == "occupancy", ranks=ranks)
            metrics["teacher_targets_s"] = round(time.perf_counter() - t0, 2)
            metrics["teacher_targets_mb"] = round(sum(t.numel() * 2 for t in targets.values()) / 2**20, 2)
        del teacher

        base_metrics = None
        if section.baseline and base_proc is None:
            with tracker.nested("baseline") as base_run:
                base_metrics = train_baseline(run_cfg, base_run, out, results)

        dm = stage_datamodule(run_cfg, section, DistillDataModule, pseudo_cuts=pseudo, targets=targets,
                              unlabeled_ratio=float(section.unlabeled_ratio))
        model, dm, curve, speed, trainer = train_transducer(
            run_cfg, STAGE, cfg.model.student, section, tracker, out, datamodule=dm,
            lit_factory=distill_lit(float(section.kd_weight)), name="student",
            fingerprint_extra=teacher_fp)
        if not ranks.main:  # trained its share; rank zero saves, evaluates and reports
            return {}
        model_cfg = {**OmegaConf.to_container(cfg.model.student, resolve=True), "vocab_size": dm.tokenizer.vocab_size}
        save_model(out / "model.pt", model, model_cfg, meta={"stage": STAGE, "steps": trainer.global_step, **decoding_meta(section)})

        student_metrics, cost = report_model(run_cfg, model, dm, section, results)
        metrics.update(student_metrics)
        if base_proc is not None:
            base_metrics = base_proc.result()
        if base_metrics is not None:
            metrics.update({f"baseline/{k}": v for k, v in base_metrics.items() if k.startswith("wer")})
        teacher_report = Path(tracker.root) / "reports" / "train_teacher.json"
        if teacher_report.is_file() and "wer/test" in metrics:
            t_wer = json.loads(teacher_report.read_text()).get("wer/test")
            if t_wer:
                metrics["teacher/wer/test"] = t_wer
                metrics["wer_ratio_to_teacher"] = round(metrics["wer/test"] / t_wer, 4)
        if "baseline/wer/test" in metrics and metrics["baseline/wer/test"] > 0:
            metrics["rel_improvement_over_baseline"] = round(1 - metrics["wer/test"] / metrics["baseline/wer/test"], 4)
        finish_stage(STAGE, tracker, metrics, results, out / "model.pt", curve, cost, speed, trainer)
    return metrics
