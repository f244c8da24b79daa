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

``boost``, ``end_bonus`` and ``reserve`` (beam slots kept for hypotheses ranked without unfinished
boosts: :mod:`edgeasr.decoding.context`) are chosen on ``tune_split`` at ``tune.distractors``: the
lowest B-WER whose U-WER is at most ``tune.max_u_wer_rise`` (relative) above the unbiased search's. With a
PyTorch model: the first split's lists decoded by the fake-quantized student too, share of identical
transcripts (``biasing/pytorch/identical/<split>/<cond>``). Biasing is decoder-side: the NPU's work
and the model's bytes do not change; the list costs the automaton's states (reported).

Decoding runs in ``workers`` spawned processes over fixed shards (one thread each); every
utterance is decoded on its own, so the figures do not depend on ``workers``.

Files: ``results/biasing/summary.csv``, ``tune.csv``, ``lists-<split>.jsonl`` (the lists decoded),
``recogs-<split>-<cond>.txt``.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing as mp
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from lhotse import CutSet
from lhotse.dataset.collation import collate_features
from omegaconf import DictConfig

from edgeasr.data.features import KaldiFbank, KaldiFbankConfig
from edgeasr.data.tokenizer import Tokenizer
from edgeasr.data.word_classes import cut_entities as entities
from edgeasr.decoding import ContextGraph, modified_beam_search
from edgeasr.metrics import WerAccumulator
from edgeasr.runtime import load_student

from .evaluate_lattice import pytorch_student

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Weights:
    boost: float
    end_bonus: float
    reserve: int = 0


@dataclass
class SplitLists:
    """A split's references, true entities and the users' own context-list phrases (``test_rare``/
    ``dev_rare``: they widen the distractor pool), by cut id."""

    refs: dict[str, str]
    entities: dict[str, list[str]]
    user_phrases: list[str]

    @classmethod
    def from_cuts(cls, cuts) -> "SplitLists":
        """A context list that is not a list of text (a manifest from elsewhere) is left out, counted
        and named in the log."""
        cuts = list(cuts)
        user, bad = set(), []
        for c in cuts:
            ctx = (c.supervisions[0].custom or {}).get("context")
            if isinstance(ctx, list) and all(isinstance(p, str) for p in ctx):
                user.update(ctx)
            elif ctx is not None:
                bad.append(c.id)
        if bad:
            log.warning("biasing: %d cuts' custom 'context' is not a list of phrases, left out of the pool: %s",
                        len(bad), ", ".join(bad[:5]))
        return cls({c.id: c.supervisions[0].text or "" for c in cuts}, {c.id: entities(c) for c in cuts}, sorted(user))


@dataclass(frozen=True)
class Source:
    """Where a split's cuts are and how its features come: stored (the manifests training reads) or
    computed from the audio (evaluation-only splits)."""

    manifest: str
    stored: bool


def _occurs(phrase: str, text: str) -> bool:
    return f" {phrase} " in f" {text} "


def context_lists(sl: SplitLists, n: int, seed: int, split: str) -> dict[str, list[str]]:
    """Per utterance its true entities plus ``n`` distractors from the split's pool of phrases (the
    users' own lists and every utterance's entities) that do not occur in its reference; sorted."""
    pool = sorted({p for ents in sl.entities.values() for p in ents} | set(sl.user_phrases))
    out = {}
    for cut_id in sorted(sl.refs):
        ref, ents = sl.refs[cut_id], sl.entities[cut_id]
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


# --------------------------------------------------------------------------- decoding (worker side)

Condition = tuple[Mapping[str, list[str]] | None, Weights]  # (lists by cut id or None: no biasing, weights)


def feature_batches(cuts: list, fbank: KaldiFbank | None = None, batch: int = 16
                     ) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor]]:
    """Stored features (``fbank`` None) or features computed from the audio, longest first."""
    cuts = sorted(cuts, key=lambda c: (-c.duration, c.id))
    for i in range(0, len(cuts), batch):
        group = cuts[i:i + batch]
        if fbank is None:
            feats, lens = collate_features(CutSet.from_cuts(group))
        else:
            one = [torch.from_numpy(fbank.extract(c.load_audio()[0], c.sampling_rate)) for c in group]
            feats, lens = torch.nn.utils.rnn.pad_sequence(one, batch_first=True), torch.tensor([f.size(0) for f in one])
        yield [c.id for c in group], feats, lens.long()


def decode_shard(model_path: str, pytorch: bool, source: Source, ids: list[str], tokenizer: str,
                 fbank_cfg: KaldiFbankConfig, conditions: Mapping[str, Condition], beam: int, max_sym: int = 1
                 ) -> dict[str, tuple[dict[str, str], float, float]]:
    """A worker: per condition the transcripts of cuts ``ids`` by id, seconds of search per
    utterance and mean context-graph states. Encodes each batch once for every condition."""
    torch.set_num_threads(1)
    model = pytorch_student(Path(model_path)) if pytorch else load_student(model_path)
    tok = Tokenizer(tokenizer)
    keep = set(ids)
    cuts = [c for c in CutSet.from_file(source.manifest) if c.id in keep]
    fbank = None if source.stored else KaldiFbank(fbank_cfg)
    hyps = {c: {} for c in conditions}
    secs = {c: 0.0 for c in conditions}
    states: dict[str, list[int]] = {c: [] for c in conditions}
    with torch.no_grad():
        for batch_ids, feats, lens in feature_batches(cuts, fbank):
            enc, enc_lens = model.encode(feats, lens)
            for name, (lists, w) in conditions.items():
                t0 = time.perf_counter()
                graphs = None
                if lists is not None:
                    graphs = [ContextGraph.from_phrases(lists[i], tok.encode, tok.vocab_size, w.boost, w.end_bonus,
                                                        w.reserve) for i in batch_ids]
                    states[name] += [g.num_states for g in graphs]
                nbest = modified_beam_search(model, enc, enc_lens, beam=beam, contexts=graphs, max_sym_per_frame=max_sym)
                secs[name] += time.perf_counter() - t0
                hyps[name].update({i: tok.decode(nb[0].tokens) for i, nb in zip(batch_ids, nbest)})
    return {c: (hyps[c], secs[c], float(np.mean(states[c])) if states[c] else 0.0) for c in conditions}


@dataclass
class Decoder:
    """Runs :func:`decode_shard` over ``workers`` shards of a split (cut i of the id order to shard
    i % workers) and merges them."""

    tokenizer: str
    fbank_cfg: KaldiFbankConfig
    beam: int
    workers: int
    max_sym: int = 1

    def submit(self, pool, model_path: str, pytorch: bool, source: Source, ids: Sequence[str],
               conditions: Mapping[str, Condition]):
        ids = sorted(ids)
        n = max(1, self.workers)
        args = (self.tokenizer, self.fbank_cfg, conditions, self.beam, self.max_sym)
        if pool is None:
            return [decode_shard(model_path, pytorch, source, ids, *args)]
        return [pool.submit(decode_shard, model_path, pytorch, source, ids[k::n], *args) for k in range(n)]

    @staticmethod
    def gather(parts) -> dict[str, tuple[dict[str, str], float, float]]:
        parts = [p.result() if hasattr(p, "result") else p for p in parts]
        out = {}
        for cond in parts[0]:
            hyps = {i: t for p in parts for i, t in p[cond][0].items()}
            secs = sum(p[cond][1] for p in parts) / max(1, len(hyps))
            states = [p[cond][2] for p in parts if p[cond][2]]
            out[cond] = (hyps, secs, float(np.mean(states)) if states else 0.0)
        return out


# --------------------------------------------------------------------------- scoring and choosing


def score(sl: SplitLists, hyps: Mapping[str, str]) -> tuple[dict[str, float], WerAccumulator]:
    ids = sorted(sl.refs)
    acc = WerAccumulator()
    acc.update([sl.refs[i] for i in ids], [hyps[i] for i in ids], ids,
               [biased_classes(sl.refs[i], sl.entities[i]) for i in ids])
    ents = [(e, hyps[i]) for i in ids for e in sl.entities[i] if _occurs(e, sl.refs[i])]
    recall = sum(_occurs(e, h) for e, h in ents) / max(1, len(ents))
    return {"wer": round(acc.wer, 4), "b_wer": round(acc.slot_wer, 4), "u_wer": round(acc.carrier_wer, 4),
            "recall": round(recall, 4)}, acc


def grid(bc: DictConfig) -> list[Weights]:
    return [Weights(float(b), float(e), int(r)) for b in bc.tune.boosts for e in bc.tune.end_bonuses
            for r in bc.tune.reserves]


def choose(sl: SplitLists, decoded: Mapping[str, tuple], bc: DictConfig, split: str, out: Path
           ) -> tuple[Weights, dict[str, float]]:
    """The grid point with the lowest B-WER whose U-WER rises at most ``max_u_wer_rise`` (relative)."""
    rise = float(bc.tune.max_u_wer_rise)
    base, _ = score(sl, decoded["none"][0])
    rows = []
    for w in grid(bc):
        m, _ = score(sl, decoded[_grid_name(w)][0])
        rows.append((w, m, m["u_wer"] <= base["u_wer"] * (1 + rise) + 1e-9))
    with open(out / "tune.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["boost", "end_bonus", "reserve", "wer", "b_wer", "u_wer", "recall", "within_u_wer_limit"])
        wr.writerow(["none", "none", "none", base["wer"], base["b_wer"], base["u_wer"], base["recall"], True])
        wr.writerows([w.boost, w.end_bonus, w.reserve, m["wer"], m["b_wer"], m["u_wer"], m["recall"], ok]
                     for w, m, ok in rows)
    allowed = [r for r in rows if r[2]]
    if not allowed:
        log.warning("biasing: no grid point keeps %s's U-WER within %.0f %% of %.2f; taking the lowest U-WER",
                    split, 100 * rise, base["u_wer"])
    w, m, _ = min(allowed, key=lambda r: (r[1]["b_wer"], r[1]["u_wer"])) if allowed else \
        min(rows, key=lambda r: r[1]["u_wer"])
    n = int(bc.tune.distractors)
    return w, {"biasing/boost": w.boost, "biasing/end_bonus": w.end_bonus, "biasing/reserve": w.reserve,
               "biasing/tuned_within_limit": int(bool(allowed)),
               f"biasing/{split}/none/b_wer": base["b_wer"], f"biasing/{split}/none/u_wer": base["u_wer"],
               f"biasing/{split}/sf{n}/b_wer": m["b_wer"], f"biasing/{split}/sf{n}/u_wer": m["u_wer"]}


def _grid_name(w: Weights) -> str:
    return f"boost{w.boost:g}_bonus{w.end_bonus:g}_reserve{w.reserve}"


def _split_source(split: str, prep: Path) -> Source:
    side = prep / "biasing" / f"cuts_{split}.jsonl.gz"
    if side.is_file():  # an evaluation-only split (no stored features): fbank from its audio
        return Source(str(side), False)
    return Source(str(prep / "manifests" / f"cuts_{split}.jsonl.gz"), True)


def biasing_metrics(model_path: Path, bc: DictConfig, seed: int, prep: Path, fbank_cfg: KaldiFbankConfig,
                    results: Path, pytorch_path: Path | None = None) -> dict[str, float]:
    """Every figure of ``evaluate.biasing`` (see the module doc); ``pytorch_path``: the fake-quantized
    student to compare with on the first split."""
    out = results / "biasing"
    out.mkdir(parents=True, exist_ok=True)
    dec = Decoder(str(prep / "tokenizer" / "bpe.model"), fbank_cfg, int(bc.beam), int(bc.workers),
                  int(bc.max_sym_per_frame))
    sources = {s: _split_source(str(s), prep) for s in [bc.tune_split, *bc.splits]}
    lists = {s: SplitLists.from_cuts(CutSet.from_file(src.manifest)) for s, src in sources.items()}
    t0 = time.perf_counter()
    pool = ProcessPoolExecutor(dec.workers, mp_context=mp.get_context("spawn")) if dec.workers > 1 else None
    try:
        tune_split, n_tune = str(bc.tune_split), int(bc.tune.distractors)
        tl = context_lists(lists[tune_split], n_tune, seed, tune_split)
        conds = {"none": (None, Weights(0, 0)), **{_grid_name(w): (tl, w) for w in grid(bc)}}
        tuned = dec.gather(dec.submit(pool, str(model_path), False, sources[tune_split], lists[tune_split].refs, conds))
        w, metrics = choose(lists[tune_split], tuned, bc, tune_split, out)

        split_conds, jobs = {}, {}
        for split in map(str, bc.splits):
            sl = lists[split]
            c = {"none": (None, w), "empty": ({i: [] for i in sl.refs}, w)}
            c.update({f"sf{n}": (context_lists(sl, int(n), seed, split), w) for n in bc.distractors})
            split_conds[split] = c
            jobs[(split, False)] = dec.submit(pool, str(model_path), False, sources[split], sl.refs, c)
        first = str(bc.splits[0])
        if pytorch_path is not None:
            pc = {k: split_conds[first][k] for k in ("none", f"sf{n_tune}")}
            jobs[(first, True)] = dec.submit(pool, str(pytorch_path), True, sources[first], lists[first].refs, pc)
        decoded = {k: dec.gather(v) for k, v in jobs.items()}
    finally:
        if pool is not None:
            pool.shutdown()

    rows = []
    for split, conds in split_conds.items():
        sl = lists[split]
        with open(out / f"lists-{split}.jsonl", "w") as f:
            for i in sorted(sl.refs):
                f.write(json.dumps({"id": i, "entities": sl.entities[i],
                                    **{c: v[0][i] for c, v in conds.items() if c.startswith("sf")}}) + "\n")
        for cond in conds:
            hyps, s_per_utt, states = decoded[(split, False)][cond]
            m, acc = score(sl, hyps)
            acc.write_recogs(out / f"recogs-{split}-{cond}.txt")
            m.update(decode_ms_per_utt=round(1000 * s_per_utt, 2), graph_states=round(states, 1))
            rows.append({"split": split, "condition": cond, "utts": len(sl.refs), **m})
            metrics.update({f"biasing/{split}/{cond}/{k}": v for k, v in m.items()})
        b0, u0 = metrics[f"biasing/{split}/none/b_wer"], metrics[f"biasing/{split}/none/u_wer"]
        for cond in (c for c in conds if c.startswith("sf")):
            if b0 > 0:
                metrics[f"biasing/{split}/{cond}/b_wer_rel_cut"] = round(1 - metrics[f"biasing/{split}/{cond}/b_wer"] / b0, 4)
            if u0 > 0:
                metrics[f"biasing/{split}/{cond}/u_wer_rel_change"] = round(metrics[f"biasing/{split}/{cond}/u_wer"] / u0 - 1, 4)
        if (split, True) in decoded:
            for cond, (hyps, _, _) in decoded[(split, True)].items():
                same = sum(hyps[i] == decoded[(split, False)][cond][0][i] for i in hyps) / max(1, len(hyps))
                metrics[f"biasing/pytorch/identical/{split}/{cond}"] = round(same, 4)
                metrics[f"biasing/pytorch/{split}/{cond}/b_wer"] = score(sl, hyps)[0]["b_wer"]
    with open(out / "summary.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    metrics["biasing/time_s"] = round(time.perf_counter() - t0, 1)
    log.info("biasing: boost %g, end bonus %g, reserve %d; %.0f s", w.boost, w.end_bonus, w.reserve, metrics["biasing/time_s"])
    return metrics
