"""What the model stages share: build and fit a transducer with resumable checkpoints, the
DataModule and LightningModule from a stage section, evaluation + NPU cost, and the common end
of a stage (report, learning curve, artifacts)."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger

from edgeasr.compression.actquant import float_view
from edgeasr.data.datamodule import AsrDataModule
from edgeasr.data.word_classes import cut_entities
from edgeasr.evaluation import evaluate_splits, model_metrics
from edgeasr.models import build_transducer
from edgeasr.tracking import StageRun
from edgeasr.training import TransducerLitModule
from edgeasr.training.contexts import TrainingContexts
from edgeasr.training.callbacks import LastCheckpoint, LearningCurve, RngState, Throughput
from edgeasr.training.ranks import Ranks

from .attention_report import attention_biasing

log = logging.getLogger(__name__)


def fingerprint(cfg: DictConfig, keys: list[str], model_cfg) -> str:
    """Hash of the config that determines a training run: checkpoints from another config are never resumed."""
    sub = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)
    sub["model"] = OmegaConf.to_container(model_cfg, resolve=True)
    return hashlib.sha256(json.dumps(sub, sort_keys=True).encode()).hexdigest()[:16]


def _checkpoint_step(path: Path) -> int:
    """The ``global_step`` of the Lightning checkpoint at ``path``; raises on a file that is not one.

    Lightning checkpoints hold pickles (optimizer and loop state), so ``weights_only=False``:
    these are our own files from an earlier run of the same stage."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("global_step"), int) or "state_dict" not in ckpt:
        raise ValueError("not a Lightning checkpoint (no global_step / state_dict)")
    return ckpt["global_step"]


def resumable_checkpoint(ckpt_dir: Path, fp: str, resume: bool) -> tuple[str, int] | None:
    """``(last.ckpt, its global step)`` if it belongs to this exact config and loads, else wipe the
    folder and start fresh (None). A corrupt ``last.ckpt`` (a crash or a full disk while
    Lightning wrote it) is a warning and a fresh start, not a failed stage."""
    stamp = ckpt_dir / "fingerprint.txt"
    last = ckpt_dir / "last.ckpt"
    if resume and last.is_file() and stamp.is_file() and stamp.read_text().strip() == fp:
        try:
            return str(last), _checkpoint_step(last)
        except Exception as err:
            log.warning("%s is unreadable (%s: %s); starting fresh instead of resuming",
                        last, type(err).__name__, str(err)[:200])
    if ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True)
    stamp.write_text(fp + "\n")
    return None


class StageLogger(MLFlowLogger):
    """Lightning's MLflow logger on a run of the stage, through the stage's guarded client: a
    tracking server that dies mid-training drops the logging, not the training (tracking.guard)."""

    def __init__(self, tracker: StageRun, run_id: str):
        super().__init__(tracking_uri=tracker.tracking_uri, run_id=run_id)
        # Lightning's own client and its first-use run lookup (a server call) replaced by the stage's
        self._mlflow_client, self._experiment_id, self._initialized = tracker.client, tracker.experiment_id, True


def train_transducer(cfg: DictConfig, stage: str, model_cfg, section: DictConfig, tracker, out: Path, *,
                     datamodule=None, lit_factory=None, name: str = "", run_id: str | None = None,
                     fingerprint_extra: str = "", model=None, callbacks=()):
    """Shared by the model stages: build, fit (resuming when possible).

    ``datamodule`` (default: an :class:`AsrDataModule` from ``section``) and ``lit_factory(model,
    datamodule, section) -> LightningModule`` (default: :class:`TransducerLitModule`) let a stage
    change what is trained on and how; ``name`` separates the checkpoints of several trainings in
    one stage; ``run_id`` is the MLflow run the Lightning logger writes to (default the stage's);
    ``model`` starts from given weights instead of a fresh ``model_cfg`` model; ``callbacks`` are
    added to the Trainer's (e.g. compression).

    Returns ``(model, datamodule, learning_curve, throughput, trainer)``; the model holds the best
    (by ``val/wer``) weights."""
    # Not only open_stage's job: under strategy=ddp Lightning's launcher sets torch's threads to
    # cpus / processes during a fit (and exports OMP_NUM_THREADS), so without this a second training
    # in one stage (distill: the baseline, then the student) would run at the launcher's count.
    torch.set_num_threads(int(cfg.trainer.num_threads))
    pl.seed_everything(int(cfg.seed), workers=True)
    dm = datamodule if datamodule is not None else stage_datamodule(cfg, section)
    if model is None:
        model = build_transducer({**OmegaConf.to_container(model_cfg, resolve=True), "vocab_size": dm.tokenizer.vocab_size})
    lit = (lit_factory or default_lit)(model, dm, section)
    if getattr(model, "biaser", None) is not None and lit.contexts is None:  # trained with the recognizer
        lit.contexts = training_contexts(dm, section, cfg.context_lists)

    ckpt_dir = out / "checkpoints" / name if name else out / "checkpoints"
    fp = fingerprint(cfg, ["seed", "data", "prepare", stage, "trainer", "context_lists"], model_cfg) + fingerprint_extra + name
    ranks = Ranks.current()  # several under trainer.strategy=ddp (open_stage launched them)
    # rank zero decides (and may wipe the folder); the others resume from what it chose
    resumable = ranks.broadcast(resumable_checkpoint(ckpt_dir, fp, bool(section.resume)) if ranks.main else None)
    resume_from, resumed_step = resumable if resumable else (None, 0)
    if resume_from:
        log.info("resuming %s%s from %s (step %d)", stage, f" ({name})" if name else "", resume_from, resumed_step)
        tracker.set_tags({f"resumed_from_step{'.' + name if name else ''}": resumed_step})
    # No best-v1.ckpt / last-v1.ckpt: a checkpoint whose state did not come back (the folder moved)
    # is overwritten, never versioned beside a stale last.ckpt that the next resume would read.
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/wer_select", mode="min", save_top_k=1,
                           save_on_train_epoch_end=False, enable_version_counter=False)
    # with the sampler position (the DataModule's state) and RngState: a resumed run trains as the
    # uninterrupted one would have (tests/test_drills_resume.py)
    last = LastCheckpoint(ckpt_dir, int(section.checkpoint_every_n_steps), int(section.val_every_n_steps))
    curve, speed = LearningCurve(), Throughput()
    t = cfg.trainer
    # An optional wall-clock cap on top of the step budget (the LR schedule still spans max_steps).
    max_minutes = section.get("max_minutes")
    trainer = pl.Trainer(
        max_time={"minutes": float(max_minutes)} if max_minutes else None,
        accelerator=t.accelerator, devices=t.devices, num_nodes=int(t.get("num_nodes", 1)), strategy=t.strategy,
        precision=t.precision,
        max_steps=int(section.max_steps), max_epochs=-1, val_check_interval=int(section.val_every_n_steps),
        check_val_every_n_epoch=None, gradient_clip_val=t.gradient_clip_val, log_every_n_steps=t.log_every_n_steps,
        logger=StageLogger(tracker, run_id or tracker.run_id) if ranks.main else False,
        callbacks=[best, last, curve, speed, RngState(), *callbacks], use_distributed_sampler=False,
        num_sanity_val_steps=0, enable_model_summary=False, enable_progress_bar=bool(t.get("progress", True)),
        default_root_dir=str(out), deterministic="warn",
    )
    trainer.fit(lit, datamodule=dm, ckpt_path=resume_from)
    if best.best_model_path:
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
        lit.load_state_dict(state)
    return model, dm, curve, speed, trainer


def stage_datamodule(cfg: DictConfig, section: DictConfig, cls=None, **kwargs):
    """The DataModule over the prepare stage's manifests with the section's batching."""
    prep = Path(cfg.paths.data_dir) / "prepare"
    return (cls or AsrDataModule)(prep / "manifests", prep / "tokenizer" / "bpe.model",
                                  train_splits=list(section.train_splits), max_duration=section.batch_max_duration,
                                  num_buckets=section.num_buckets, seed=int(cfg.seed),
                                  curriculum=OmegaConf.to_container(section.curriculum) if section.get("curriculum") else None,
                                  bpe_dropout=float(section.get("bpe_dropout") or 0.0), **kwargs)


def default_lit(model, dm, section: DictConfig, cls=None, **kwargs):
    """``cls`` (default :class:`TransducerLitModule`) with the section's optimizer, schedule and
    SpecAugment; ``kwargs`` go to ``cls`` (e.g. ``best_after_step``, distillation weights)."""
    return (cls or TransducerLitModule)(
        model, dm.tokenizer.decode, section.optimizer, {**section.scheduler, "total_steps": int(section.max_steps)},
        OmegaConf.to_container(section.specaug) if section.specaug else None, **kwargs)


def training_contexts(dm, section: DictConfig, lists: DictConfig) -> TrainingContexts:
    """Context lists (``lists``: the config's ``context_lists``) over the slot values of the
    section's training splits (the distractor pool)."""
    pool = sorted({p for split in section.train_splits for c in dm.cuts(split) for p in cut_entities(c) if c.supervisions})
    log.info("attention biaser: %d distinct slot values from %s as distractors", len(pool), list(section.train_splits))
    return TrainingContexts.from_config(lists, pool, dm.tokenizer.encode, dm.seed)


def decoding_meta(section: DictConfig) -> dict:
    """The model file's ``decoding`` meta: how its stage decoded it, so the CLI decodes it alike."""
    return {"decoding": {"max_sym_per_frame": int(section.decoding.max_sym_per_frame)}}


def report_model(cfg: DictConfig, model, dm, section: DictConfig, results: Path, bits: int = 32) -> tuple[dict, object]:
    """Evaluate ``section.eval_splits`` (recogs/errs into ``results``) and the cost model, and a model
    with an attention biaser on lists (:mod:`.attention_report`); returns ``(metrics, cost_report)``."""
    dec = section.decoding
    metrics = evaluate_splits(model, dm, section.eval_splits, results, dec.method, dec.beam, int(dec.max_sym_per_frame))
    # The MAC profiler hooks nn.LSTM calls, which the activation-quantized encoder replaces by its own loop.
    with float_view(model) as plain:
        cost_metrics, cost = model_metrics(plain, cfg.hw, dm.cuts("test"), dm.tokenizer, bits=bits)
    metrics.update(cost_metrics)
    if getattr(model, "biaser", None) is not None:
        attn, fig = attention_biasing(model, dm.tokenizer, Path(cfg.paths.data_dir) / "prepare" / "manifests",
                                      cfg.context_lists.report, int(cfg.seed), results)
        metrics.update(attn)
        if fig is not None:
            fig.savefig(results / "attention.png", dpi=120)
    return metrics, cost


def log_outputs(tracker, results: Path, model_path: Path) -> None:
    """Every file under ``results`` (sub-folders kept) and the model file as run artifacts."""
    for f in sorted(results.rglob("*")):
        if f.is_file():
            rel = f.parent.relative_to(results)
            tracker.log_artifact(f, "results" if rel == Path(".") else f"results/{rel.as_posix()}")
    tracker.log_artifact(model_path, "model")


def log_training(stage: str, tracker, curve, results: Path, name: str = "") -> None:
    stem = f"learning_curve{'_' + name if name else ''}"
    (results / f"{stem}.json").write_text(json.dumps(curve.points, indent=1))
    if curve.points:
        with open(results / f"{stem}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(curve.points[0]))
            writer.writeheader()
            writer.writerows(curve.points)
    if curve.points:
        tracker.log_figure(curve.figure(f"{stage}{' ' + name if name else ''}: dev WER vs time"),
                           f"learning_curve{'_' + name if name else ''}.png")


def finish_stage(stage: str, tracker, metrics: dict, results: Path, model_path: Path, curve, cost, speed,
                 trainer) -> dict:
    """What every model stage ends with: training throughput and steps into ``metrics``, the
    report (file + MLflow), learning curve, NPU cost table, ``results/`` and the model as artifacts."""
    metrics["train_audio_s_per_s"] = round(speed.audio_s_per_s, 3)
    metrics["train_steps"] = int(trainer.global_step)
    tracker.log_report(metrics)
    log_training(stage, tracker, curve, results)
    (results / "cost_table.txt").write_text(cost.table() + "\n")
    log_outputs(tracker, results, model_path)
    log.info("%s: %s", stage, metrics)
    return metrics
