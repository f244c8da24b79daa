"""Attention biasing against shallow fusion on test_rare / test (issue 17, part 2).

A model trained with its biaser (``model.<role>.biaser``, e.g. a teacher from ``train_teacher``)
is evaluated as it is (``--model data/train_teacher/model.pt``). A model without one gets a probe:
a :class:`~edgeasr.models.biasing.ContextBiaser` trained on it frozen, then the same evaluation.

The student (fp32, ``data/distill/model.pt``) stays frozen; only the biaser learns, with the RNN-T
loss on labeled train audio, each utterance given a list of its slot values (contacts, devices,
songs, ...) plus 0-``max_distractors`` distractors from the other train utterances' slot values
(``empty_prob``: no true entity in the list). Evaluation: the lists ``evaluate.biasing`` decodes
(true entity + N distractors, same seed), modified beam search beam 8, for no biasing, shallow
fusion, the biaser, and both. Not a pipeline stage: compression, MWER, export and the integer
runtime do not carry the biaser yet.

Usage: python benchmarks/attention_biasing_probe.py [--data data] [--model M] [--steps 1500] [--boost 2] [--end-bonus 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet

from edgeasr.data.datamodule import AsrDataModule
from edgeasr.decoding import ContextGraph, modified_beam_search
from edgeasr.models.biasing import ContextBiaser, PhraseBatch
from edgeasr.models.io import load_model
from edgeasr.stages.evaluate_biasing import SplitLists, context_lists, entities, feature_batches, score
from edgeasr.training.contexts import TrainingContexts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--model", type=Path, default=None, help="default <data>/distill/model.pt")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-duration", type=float, default=40.0)
    ap.add_argument("--max-distractors", type=int, default=30)
    ap.add_argument("--empty-prob", type=float, default=0.2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--boost", type=float, default=2.0)
    ap.add_argument("--end-bonus", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-utts", type=int, default=None)
    ap.add_argument("--max-sym", type=int, default=2, help="symbols per frame in the beam search (evaluate.biasing: 2)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    prep = a.data / "prepare"
    model, _ = load_model(a.model or a.data / "distill" / "model.pt")
    model.eval().requires_grad_(False)
    dm = AsrDataModule(prep / "manifests", prep / "tokenizer" / "bpe.model", train_splits=["train"],
                       max_duration=a.max_duration, seed=a.seed)
    tok = dm.tokenizer
    train = dm.cuts("train")
    if model.biaser is not None:
        print(f"{a.model}: trained with its biaser ({sum(p.numel() for p in model.biaser.parameters())} params)")
        biased = model.encode
    else:
        biased = _probe(model, dm, tok, train, a)

    for split, ns in (("test_rare", (10, 100)), ("test", (0,))):
        cuts = sorted(CutSet.from_file(prep / "manifests" / f"cuts_{split}.jsonl.gz"), key=lambda c: c.id)[: a.eval_utts]
        sl = SplitLists.from_cuts(cuts)
        conds = {"empty": {i: [] for i in sl.refs}, **{f"list{n}": context_lists(sl, n, a.seed, split) for n in ns}}
        hyps: dict[str, dict[str, str]] = {}
        with torch.no_grad():
            for ids, feats, lens in feature_batches(cuts):
                enc, enc_lens = model.encode(feats, lens)
                hyps.setdefault("none", {}).update(_decode(model, enc, enc_lens, None, ids, tok, a.max_sym))
                for name, lists in conds.items():
                    pb = PhraseBatch.collate([[tok.encode(p) for p in lists[j]] for j in ids])
                    graphs = [ContextGraph.from_phrases(lists[j], tok.encode, tok.vocab_size, a.boost, a.end_bonus) for j in ids]
                    benc, _ = biased(feats, lens, pb)
                    hyps.setdefault(f"{name}/sf", {}).update(_decode(model, enc, enc_lens, graphs, ids, tok, a.max_sym))
                    hyps.setdefault(f"{name}/attn", {}).update(_decode(model, benc, enc_lens, None, ids, tok, a.max_sym))
                    hyps.setdefault(f"{name}/attn+sf", {}).update(_decode(model, benc, enc_lens, graphs, ids, tok, a.max_sym))
        for cond in sorted(hyps):
            m, _ = score(sl, hyps[cond])
            print(f"{split}\t{cond}\tWER {m['wer']:.2f}\tB-WER {m['b_wer']:.2f}\tU-WER {m['u_wer']:.2f}\trecall {m['recall']:.3f}",
                  flush=True)


def _probe(model, dm, tok, train, a):
    """Train a biaser on the frozen ``model``; returns ``(feats, lens, phrases) -> (enc', lens)``."""
    pool = sorted({p for c in train for p in entities(c)})
    contexts = TrainingContexts(pool, tok.encode, a.max_distractors, a.empty_prob, a.seed)
    biaser = ContextBiaser(tok.vocab_size, model.joiner.joiner_dim, dim=a.dim)
    opt = torch.optim.AdamW(biaser.parameters(), lr=a.lr, weight_decay=1e-4)
    print(f"train: {len(train)} cuts, {len(pool)} distinct slot values; biaser {sum(p.numel() for p in biaser.parameters())} params")

    step, t0, run = 0, time.perf_counter(), []
    while step < a.steps:
        for batch in dm.train_dataloader():
            pb = contexts.phrases(batch, step)
            with torch.no_grad():
                enc, enc_lens = model.encode(batch["features"], batch["feature_lens"])
            loss = model.rnnt_loss(biaser(enc, pb), enc_lens, batch["tokens"]) / enc.size(0)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(biaser.parameters(), 5.0)
            opt.step()
            run.append(loss.item())
            step += 1
            if step % 100 == 0:
                print(f"step {step}: loss {np.mean(run[-100:]):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
            if step >= a.steps:
                break
    biaser.eval()

    def biased(feats, lens, pb):
        enc, enc_lens = model.encode(feats, lens)
        return biaser(enc, pb), enc_lens

    return biased


def _decode(model, enc, enc_lens, graphs, ids, tok, max_sym: int) -> dict[str, str]:
    nbest = modified_beam_search(model, enc, enc_lens, beam=8, contexts=graphs, max_sym_per_frame=max_sym)
    return {i: tok.decode(nb[0].tokens) for i, nb in zip(ids, nbest)}


if __name__ == "__main__":
    main()
