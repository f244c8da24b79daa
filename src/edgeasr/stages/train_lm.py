"""The ``train_lm`` stage: the cloud's language model, trained on text only.

Text (:mod:`edgeasr.data.lm_text`): the ``train`` transcripts, ``train_lm.text.generated``
requests drawn from the embedded corpus's generator with ``train_lm.text.seed`` (the stand-in for
the cloud's large text collection; other corpora: ``train_lm.text.files``), every sentence that
occurs in ``train_lm.text.held_out`` (dev and the test splits) removed and counted. Tokens: the
prepare stage's BPE pieces. Model: :class:`edgeasr.lm.PieceLM`, Lightning (:mod:`edgeasr.training.lm`),
the checkpoint with the best dev perplexity kept.

Outputs: ``data/train_lm/lm.pt`` (:func:`edgeasr.lm.save_lm`), ``data/train_lm/results/``
(``text_stats.json``, ``learning_curve.csv``), ``reports/train_lm.json``: ``ppl_dev``, ``params``,
``size_bytes``, the text counts, ``train_steps``, ``train_s``.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger

from edgeasr.data.lm_text import build_lm_text, file_sentences, generated_sentences, split_texts
from edgeasr.data.tokenizer import Tokenizer
from edgeasr.lm import PieceLM, save_lm
from edgeasr.tracking import tracking_uri
from edgeasr.training.lm import LmDataModule, LmLitModule, perplexity

from .common import fingerprint, resumable_checkpoint
from .prologue import open_stage

log = logging.getLogger(__name__)

STAGE = "train_lm"


def lm_text(cfg: DictConfig, manifests: Path):
    """The stage's :class:`edgeasr.data.lm_text.LmText` from ``cfg.train_lm.text``."""
    tc = cfg[STAGE].text
    mode = str(cfg.data.get("text_normalization", "basic"))
    sources = {"train": split_texts(manifests, "train")}
    if int(tc.generated) > 0:
        if cfg.data.source == "synthetic":
            sources["generated"] = generated_sentences(OmegaConf.to_container(cfg.data, resolve=True), int(cfg.seed),
                                                       int(tc.seed), int(tc.generated), mode)
        else:
            log.info("%s: data.source=%s has no text generator: train_lm.text.generated ignored (use text.files)",
                     STAGE, cfg.data.source)
    if tc.files:
        sources["files"] = file_sentences(list(tc.files), mode)
    return build_lm_text(manifests, sources, list(tc.held_out), dev_split=str(tc.dev_split))


def run(cfg: DictConfig, job_dir: Path | None = None) -> dict[str, float]:
    section = cfg[STAGE]
    with open_stage(STAGE, cfg, job_dir=job_dir, threads=section.num_threads) as stage:
        out, results, tracker = stage.out, stage.results, stage.tracker
        prep = stage.data_dir / "prepare"
        tok = Tokenizer(prep / "tokenizer" / "bpe.model")
        t0 = time.perf_counter()
        text = lm_text(cfg, prep / "manifests")
        stats = text.stats()
        train = text.train
        random.Random(int(cfg.seed)).shuffle(train)
        train_ids, dev_ids = tok.encode_batch(train), tok.encode_batch(text.dev)
        stats["text_s"] = round(time.perf_counter() - t0, 3)
        (results / "text_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
        log.info("%s: %d sentences (%d held-out overlaps removed), %d dev sentences", STAGE, stats["sentences"],
                 stats["overlap_removed"], stats["dev_sentences"])

        torch.set_num_threads(int(section.num_threads))
        pl.seed_everything(int(cfg.seed), workers=True)
        model = PieceLM(tok.vocab_size, **OmegaConf.to_container(section.model, resolve=True))
        lit = LmLitModule(model, section.optimizer, {**section.scheduler, "total_steps": int(section.max_steps)})
        dm = LmDataModule(train_ids, dev_ids, int(section.batch_size), int(cfg.seed))
        ckpt_dir = out / "checkpoints"
        fp = fingerprint(cfg, ["seed", "data", "prepare", STAGE, "trainer"], section.model)
        resumable = resumable_checkpoint(ckpt_dir, fp, bool(section.resume))
        best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/ppl", mode="min", save_top_k=1,
                               save_on_train_epoch_end=False)
        last = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                               every_n_train_steps=int(section.checkpoint_every_n_steps))
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_steps=int(section.max_steps), max_epochs=-1,
            val_check_interval=int(section.val_every_n_steps), check_val_every_n_epoch=None,
            gradient_clip_val=cfg.trainer.gradient_clip_val, log_every_n_steps=cfg.trainer.log_every_n_steps,
            logger=MLFlowLogger(tracking_uri=tracking_uri(), run_id=tracker.run_id), callbacks=[best, last],
            num_sanity_val_steps=0, enable_model_summary=False,
            enable_progress_bar=bool(cfg.trainer.get("progress", True)), default_root_dir=str(out),
            deterministic="warn")
        t1 = time.perf_counter()
        trainer.fit(lit, datamodule=dm, ckpt_path=resumable[0] if resumable else None)
        train_s = time.perf_counter() - t1
        if best.best_model_path:
            lit.load_state_dict(torch.load(best.best_model_path, map_location="cpu", weights_only=False)["state_dict"])
        model.eval()
        save_lm(out / "lm.pt", model, {"stage": STAGE, "steps": trainer.global_step, "tokenizer": "prepare/tokenizer/bpe.model"})

        metrics: dict[str, float] = {
            "ppl_dev": round(perplexity(model, dev_ids), 4),
            "params": sum(p.numel() for p in model.parameters()),
            "size_bytes": (out / "lm.pt").stat().st_size,
            "train_steps": int(trainer.global_step), "train_s": round(train_s, 2),
            **stats,
        }
        if lit.curve:
            with open(results / "learning_curve.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(lit.curve[0]))
                writer.writeheader()
                writer.writerows(lit.curve)
        tracker.log_report(metrics)
        for f in sorted(results.iterdir()):
            tracker.log_artifact(f, "results")
        tracker.log_artifact(out / "lm.pt", "model")
        log.info("%s: %s", STAGE, metrics)
    return metrics
