"""The evaluate stage's biasing part (``evaluate.biasing``): shallow-fusion context biasing in the
integer runtime's modified beam search (:mod:`edgeasr.decoding.context`), as the device runs it.

Each utterance gets a list of phrases: its true entities (``test_rare``/``dev_rare``: the named
rare contact or device; other splits: each run of slot words) plus ``N`` distractors drawn
(deterministically from the seed) from the split's pool of list phrases, none of which occurs in the
reference. Conditions: ``none`` (no list), ``empty`` (a list of nothing) and ``sf<N>`` per N in
``distractors``. Per split and condition: WER, B-WER (errors on reference words inside a true
entity: the biased words) and U-WER (the other words; an insertion next to a biased word counts as
biased: :class:`edgeasr.metrics.WerAccumulator`'s slot/carrier rule), entity recall (share of true
entities spelled exactly in the transcript), decode time per utterance on this host.

``boost`` and ``end_bonus`` are chosen on ``tune_split`` at ``tune.distractors``: the lowest B-WER
whose U-WER is at most ``tune.max_u_wer_rise`` (relative) above the unbiased search's. With a
PyTorch model: the same lists decoded with the fake-quantized student, share of identical
transcripts (``biasing/pytorch/identical/<split>/<cond>``). Biasing is decoder-side: the NPU's work
and the model's bytes do not change; the list costs the automaton's states (reported).

Files: ``results/biasing/summary.csv``, ``tune.csv``, ``lists-<split>.jsonl`` (the lists decoded),
``recogs-<split>-<cond>.txt``.
"""

from __future__ import annotations

import csv
import json
import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from lhotse import CutSet
from omegaconf import DictConfig

from edgeasr.data.features import KaldiFbank, KaldiFbankConfig
from edgeasr.data.word_classes import SLOT
from edgeasr.decoding import ContextGraph, modified_beam_search
from edgeasr.metrics import WerAccumulator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Weights:
    boost: float
    end_bonus: float


@dataclass
class Encoded:
    """A split's utterances, encoded once: references, true entities, the users' own context-list
    phrases (``test_rare``/``dev_rare``; they widen the distractor pool) and per batch the cuts' ids
    with the encoder output."""

    refs: dict[str, str]
    entities: dict[str, list[str]]
    user_phrases: list[str]
    batches: list[tuple[list[str], torch.Tensor, torch.Tensor]]


def entities(cut) -> list[str]:
    """The utterance's true list phrases: its named rare entity, else each run of slot words."""
    sup = cut.supervisions[0]
    custom = sup.custom or {}
    if custom.get("entity"):
        return [str(custom["entity"])]
    words, classes = (sup.text or "").split(), custom.get("word_classes") or ""
    runs, cur = [], []
    for w, c in zip(words, classes):
        if c == SLOT:
            cur.append(w)
        elif cur:
            runs.append(" ".join(cur))
            cur = []
    if cur:
        runs.append(" ".join(cur))
    return list(dict.fromkeys(runs))


def _occurs(phrase: str, text: str) -> bool:
    return f" {phrase} " in f" {text} "


def context_lists(enc: Encoded, n: int, seed: int, split: str) -> dict[str, list[str]]:
    """Per utterance its true entities plus ``n`` distractors from the split's pool of phrases (the
    context lists' phrases where the split has them, else every utterance's entities), sorted."""
    pool = sorted({p for ents in enc.entities.values() for p in ents} | set(enc.user_phrases))
    out = {}
    for cut_id in sorted(enc.refs):
        ref, ents = enc.refs[cut_id], enc.entities[cut_id]
        cands = [p for p in pool if p not in ents and not _occurs(p, ref)]
        rng = np.random.default_rng([int(seed), zlib.crc32(f"biasing/{split}/{n}/{cut_id}".encode())])
        picks = rng.choice(len(cands), size=min(n, len(cands)), replace=False) if n else []
        out[cut_id] = sorted(ents + [cands[i] for i in picks])
    return out


def biased_classes(ref: str, ents: Sequence[str]) -> str:
    """One ``"s"`` (inside an occurrence of a true entity) / ``"c"`` per reference word."""
    words = ref.split()
    cls = ["c"] * len(words)
    for p in ents:
        pw = p.split()
        for i in range(len(words) - len(pw) + 1):
            if words[i:i + len(pw)] == pw:
                cls[i:i + len(pw)] = ["s"] * len(pw)
    return "".join(cls)


def _feature_batches(cuts: list, dm, fbank: KaldiFbank | None, batch: int = 16
                     ) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor]]:
    """Stored features through the DataModule, or (``fbank``) computed from the audio."""
    if fbank is None:
        for b in dm.cuts_dataloader(CutSet.from_cuts(cuts)):
            yield b["cut_ids"], b["features"], b["feature_lens"]
        return
    cuts = sorted(cuts, key=lambda c: (-c.duration, c.id))
    for i in range(0, len(cuts), batch):
        group = cuts[i:i + batch]
        feats = [torch.from_numpy(fbank.extract(c.load_audio()[0], c.sampling_rate)) for c in group]
        lens = torch.tensor([f.size(0) for f in feats])
        yield [c.id for c in group], torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), lens


def encode_split(model, cuts: list, dm, fbank: KaldiFbank | None) -> Encoded:
    by_id = {c.id: c for c in cuts}
    batches = []
    with torch.no_grad():
        for ids, feats, lens in _feature_batches(cuts, dm, fbank):
            out, out_lens = model.encode(feats, lens)
            batches.append((ids, out, out_lens))
    user = sorted({p for c in cuts for p in ((c.supervisions[0].custom or {}).get("context") or [])})
    return Encoded({i: by_id[i].supervisions[0].text or "" for i in by_id},
                   {i: entities(by_id[i]) for i in by_id}, user, batches)


def decode(model, enc: Encoded, lists: Mapping[str, list[str]] | None, w: Weights, encode_text, vocab: int,
           to_text, beam: int) -> tuple[dict[str, str], float, float]:
    """Transcripts per cut id (``lists`` None: no biasing), seconds per utterance, mean graph states."""
    hyps, t0, states = {}, time.perf_counter(), []
    for ids, out, out_lens in enc.batches:
        graphs = None
        if lists is not None:
            graphs = [ContextGraph.from_phrases(lists[i], encode_text, vocab, w.boost, w.end_bonus) for i in ids]
            states += [g.num_states for g in graphs]
        nbest = modified_beam_search(model, out, out_lens, beam=beam, contexts=graphs)
        hyps.update({i: to_text(nb[0].tokens) for i, nb in zip(ids, nbest)})
    return hyps, (time.perf_counter() - t0) / max(1, len(hyps)), float(np.mean(states)) if states else 0.0


def score(enc: Encoded, hyps: Mapping[str, str]) -> tuple[dict[str, float], WerAccumulator]:
    ids = sorted(enc.refs)
    acc = WerAccumulator()
    acc.update([enc.refs[i] for i in ids], [hyps[i] for i in ids], ids,
               [biased_classes(enc.refs[i], enc.entities[i]) for i in ids])
    ents = [(e, hyps[i]) for i in ids for e in enc.entities[i] if _occurs(e, enc.refs[i])]
    recall = sum(_occurs(e, h) for e, h in ents) / max(1, len(ents))
    return {"wer": round(acc.wer, 4), "b_wer": round(acc.slot_wer, 4), "u_wer": round(acc.carrier_wer, 4),
            "recall": round(recall, 4), "utts": len(ids)}, acc


def tune(model, enc: Encoded, bc: DictConfig, seed: int, split: str, dec_args, results: Path
         ) -> tuple[Weights, dict[str, float]]:
    """The grid point with the lowest B-WER whose U-WER rises at most ``max_u_wer_rise`` (relative)."""
    t = bc.tune
    lists = context_lists(enc, int(t.distractors), seed, split)
    base, _ = score(enc, decode(model, enc, None, Weights(0, 0), *dec_args)[0])
    rows = []
    for b in t.boosts:
        for e in t.end_bonuses:
            w = Weights(float(b), float(e))
            m, _ = score(enc, decode(model, enc, lists, w, *dec_args)[0])
            ok = m["u_wer"] <= base["u_wer"] * (1 + float(t.max_u_wer_rise)) + 1e-9
            rows.append((w, m, ok))
    with open(results / "tune.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["boost", "end_bonus", "wer", "b_wer", "u_wer", "recall", "within_u_wer_limit"])
        wr.writerow(["none", "none", base["wer"], base["b_wer"], base["u_wer"], base["recall"], True])
        for w, m, ok in rows:
            wr.writerow([w.boost, w.end_bonus, m["wer"], m["b_wer"], m["u_wer"], m["recall"], ok])
    allowed = [r for r in rows if r[2]]
    if not allowed:
        log.warning("biasing: no grid point keeps %s's U-WER within %.0f %% of %.2f; taking the lowest U-WER",
                    split, 100 * float(t.max_u_wer_rise), base["u_wer"])
    w, m, _ = min(allowed or rows, key=lambda r: (r[1]["b_wer"], r[1]["u_wer"]) if allowed else (r[1]["u_wer"],))
    return w, {"biasing/boost": w.boost, "biasing/end_bonus": w.end_bonus, "biasing/tuned_within_limit": int(bool(allowed)),
               f"biasing/{split}/none/b_wer": base["b_wer"], f"biasing/{split}/none/u_wer": base["u_wer"],
               f"biasing/{split}/sf{int(t.distractors)}/b_wer": m["b_wer"],
               f"biasing/{split}/sf{int(t.distractors)}/u_wer": m["u_wer"]}


def biasing_metrics(rt, dm, bc: DictConfig, seed: int, side_manifests: Path, fbank_cfg: KaldiFbankConfig,
                    results: Path, tokenizer, pytorch_model=None) -> dict[str, float]:
    out = results / "biasing"
    out.mkdir(parents=True, exist_ok=True)
    to_text = lambda ids: tokenizer.decode(ids)  # noqa: E731
    dec_args = (tokenizer.encode, tokenizer.vocab_size, to_text, int(bc.beam))
    fbank = KaldiFbank(fbank_cfg)

    def load(model, split: str) -> Encoded:
        side = side_manifests / f"cuts_{split}.jsonl.gz"
        if side.is_file():  # an evaluation-only split (no stored features): fbank from its audio
            return encode_split(model, list(CutSet.from_file(side)), dm, fbank)
        return encode_split(model, list(dm.cuts(split)), dm, None)

    w, metrics = tune(rt, load(rt, str(bc.tune_split)), bc, seed, str(bc.tune_split), dec_args, out)
    rows = []
    for split in bc.splits:
        t0 = time.perf_counter()
        enc = load(rt, str(split))
        conds: dict[str, dict[str, list[str]] | None] = {"none": None, "empty": {i: [] for i in enc.refs}}
        conds.update({f"sf{n}": context_lists(enc, int(n), seed, str(split)) for n in bc.distractors})
        with open(out / f"lists-{split}.jsonl", "w") as f:
            for i in sorted(enc.refs):
                f.write(json.dumps({"id": i, "entities": enc.entities[i],
                                    **{c: l[i] for c, l in conds.items() if l is not None and c != "empty"}}) + "\n")
        hyps_by = {}
        for cond, lists in conds.items():
            hyps, s_per_utt, states = decode(rt, enc, lists, w, *dec_args)
            m, acc = score(enc, hyps)
            acc.write_recogs(out / f"recogs-{split}-{cond}.txt")
            hyps_by[cond] = hyps
            m.update(decode_ms_per_utt=round(1000 * s_per_utt, 2), graph_states=round(states, 1))
            rows.append({"split": split, "condition": cond, **m})
            metrics.update({f"biasing/{split}/{cond}/{k}": v for k, v in m.items() if k != "utts"})
        base = metrics[f"biasing/{split}/none/b_wer"]
        for cond in conds:
            if cond.startswith("sf") and base > 0:
                metrics[f"biasing/{split}/{cond}/b_wer_rel_cut"] = round(1 - metrics[f"biasing/{split}/{cond}/b_wer"] / base, 4)
                u0 = metrics[f"biasing/{split}/none/u_wer"]
                metrics[f"biasing/{split}/{cond}/u_wer_rel_change"] = round(metrics[f"biasing/{split}/{cond}/u_wer"] / u0 - 1, 4) if u0 else 0.0
        if pytorch_model is not None and split == bc.splits[0]:
            penc = load(pytorch_model, str(split))
            for cond in ("none", f"sf{int(bc.tune.distractors)}"):
                hyps, _, _ = decode(pytorch_model, penc, conds[cond], w, *dec_args)
                same = sum(hyps[i] == hyps_by[cond][i] for i in hyps) / max(1, len(hyps))
                metrics[f"biasing/pytorch/identical/{split}/{cond}"] = round(same, 4)
                metrics[f"biasing/pytorch/{split}/{cond}/b_wer"] = score(penc, hyps)[0]["b_wer"]
        log.info("biasing: %s decoded in %.1f s", split, time.perf_counter() - t0)
    with open(out / "summary.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    return metrics

