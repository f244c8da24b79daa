"""Attention biasing against shallow fusion on test_rare / test (issue 17, part 2).

A model trained with its biaser (``model.<role>.biaser``, e.g. ``data/train_teacher/model.pt`` of a
run with ``model.teacher.biaser={dim: 64, heads: 2}``) is evaluated as it is. A model without one
gets a probe: a :class:`~edgeasr.models.biasing.ContextBiaser` trained on the frozen model (RNN-T
loss on labeled train audio, the lists of :class:`~edgeasr.training.contexts.TrainingContexts`),
then the same evaluation: the training stages' attention report
(:func:`edgeasr.stages.attention_report.attention_biasing`: no biasing, shallow fusion, attention,
both; modified beam search) on test_rare with N distractors and on test with the true entities.

Usage: python benchmarks/attention_biasing_probe.py [--data data] [--model M] [--steps 1500] [--boost 2]
       [--end-bonus 0] [--reserve 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from edgeasr.data.datamodule import AsrDataModule
from edgeasr.data.word_classes import cut_entities
from edgeasr.models.biasing import ContextBiaser
from edgeasr.models.io import load_model
from edgeasr.stages.attention_report import attention_biasing
from edgeasr.training.contexts import TrainingContexts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--model", type=Path, default=None, help="default <data>/distill/model.pt")
    ap.add_argument("--steps", type=int, default=1500, help="probe training steps (a model without a biaser)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-duration", type=float, default=40.0)
    ap.add_argument("--max-distractors", type=int, default=30)
    ap.add_argument("--empty-prob", type=float, default=0.2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--boost", type=float, default=2.0)
    ap.add_argument("--end-bonus", type=float, default=0.0)
    ap.add_argument("--reserve", type=int, default=0, help="beam slots kept for hypotheses without unfinished boosts")
    ap.add_argument("--beam", type=int, default=8)
    ap.add_argument("--max-sym", type=int, default=2, help="symbols per frame in the beam search (evaluate.biasing: 2)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-utts", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("attention_probe"), help="CSV and figure folder")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    prep = a.data / "prepare"
    model, _ = load_model(a.model or a.data / "distill" / "model.pt")
    dm = AsrDataModule(prep / "manifests", prep / "tokenizer" / "bpe.model", train_splits=["train"],
                       max_duration=a.max_duration, seed=a.seed)
    if model.biaser is None:
        model.biaser = _probe(model, dm, a)
    else:
        print(f"trained with its biaser: {sum(p.numel() for p in model.biaser.parameters())} params")
    model.eval()
    for split, ns in (("test_rare", (10, 100)), ("test", (0,))):
        rc = {"split": split, "distractors": list(ns), "boost": a.boost, "end_bonus": a.end_bonus,
              "reserve": a.reserve, "beam": a.beam,
              "max_sym_per_frame": a.max_sym, "plot_utts": 3}
        t0 = time.perf_counter()
        metrics, fig = attention_biasing(model, dm.tokenizer, prep / "manifests", rc, a.seed, a.out / split, a.eval_utts)
        if fig is not None:
            fig.savefig(a.out / split / "attention.png", dpi=120)
        for key, value in sorted(metrics.items()):
            print(f"{key}\t{value}")
        print(f"{split}: {time.perf_counter() - t0:.0f} s", flush=True)


def _probe(model, dm, a) -> ContextBiaser:
    """A biaser trained on the frozen ``model`` (its encoder output in, RNN-T loss out)."""
    model.eval().requires_grad_(False)
    tok = dm.tokenizer
    pool = sorted({p for c in dm.cuts("train") for p in cut_entities(c)})
    contexts = TrainingContexts(pool, tok.encode, a.max_distractors, a.empty_prob, a.seed)
    biaser = ContextBiaser(tok.vocab_size, model.joiner.joiner_dim, dim=a.dim)
    opt = torch.optim.AdamW(biaser.parameters(), lr=a.lr, weight_decay=1e-4)
    print(f"probe: {len(pool)} distinct slot values; biaser {sum(p.numel() for p in biaser.parameters())} params")
    step, t0, losses = 0, time.perf_counter(), []
    while step < a.steps:
        for batch in dm.train_dataloader():
            with torch.no_grad():
                enc, enc_lens = model.encoder(batch["features"], batch["feature_lens"])
            loss = model.rnnt_loss(biaser(enc, contexts.phrases(batch, step)), enc_lens, batch["tokens"]) / enc.size(0)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(biaser.parameters(), 5.0)
            opt.step()
            losses.append(loss.item())
            step += 1
            if step % 100 == 0:
                print(f"step {step}: loss {np.mean(losses[-100:]):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
            if step >= a.steps:
                break
    return biaser.eval()


if __name__ == "__main__":
    main()
