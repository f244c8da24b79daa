"""icefall's modified beam search for transducers, batched over utterances.

Each frame every hypothesis is extended by all V symbols, the ``beam`` best (hypothesis, symbol)
pairs per utterance survive, and pairs that spell the same token sequence are merged by adding
their probabilities (logaddexp). One symbol per frame by default (icefall's search); with
``max_sym_per_frame`` > 1 a hypothesis that emitted may emit again on the same frame. A
shallow-fusion :class:`~edgeasr.decoding.context.ContextGraph` per utterance adds its bias to
the scores (``contexts``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .context import ContextGraph


@dataclass
class Hypothesis:
    """tokens: ids without blank; log_prob: log of the summed probability of the alignments that
    reached this sequence within the beam (the search score); timestamps: encoder frame of each token.

    ``log_prob`` is a beam approximation; MWER should rescore N-best lists with the full-sum
    ``Transducer.rnnt_loss(..., reduction="none")`` (differentiable).
    """

    tokens: list[int]
    log_prob: float
    timestamps: list[int] = field(default_factory=list)
    context_state: int = 0  # the state of the utterance's ContextGraph (0 without one)


def _context_bias(contexts: Sequence[ContextGraph | None], utts: Sequence[int], hyps: Sequence[Hypothesis],
                  v: int, blank: int, device, pending: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(rows, V): each hypothesis's score change per next token from its utterance's graph (0 for
    blank and for utterances without one); with ``pending`` also the unlocked boost each candidate
    would carry (what a broken or unfinished match gives back: the reserved slots rank without it)."""
    bias = np.zeros((len(utts), v), dtype=np.float32)
    pend = np.zeros((len(utts), v), dtype=np.float32) if pending else None
    for i, (u, h) in enumerate(zip(utts, hyps)):
        g = contexts[u]
        if g is not None:
            if g.vocab_size != v:
                raise ValueError(f"context graph of utterance {u} was built for {g.vocab_size} tokens; "
                                 f"the model has {v}: build it with the model's tokenizer")
            bias[i] = g.delta[h.context_state]
            if pend is not None:
                pend[i] = g.pending[g.next[h.context_state]]
                pend[i, blank] = g.pending[h.context_state]
    bias[:, blank] = 0.0
    return torch.from_numpy(bias).to(device), None if pend is None else torch.from_numpy(pend).to(device)


def _reserve(contexts: Sequence[ContextGraph | None] | None, u: int) -> int:
    g = contexts[u] if contexts is not None else None
    return g.reserve if g is not None else 0


def _logaddexp(a: float, b: float) -> float:
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


@dataclass
class BeamState:
    """The search carried across encoder chunks: the live hypotheses of every utterance as one flat
    list (``utt``: the utterance of each row), their predictor outputs/states (one row each) and the
    encoder frames each utterance has consumed (the next frame's index, for token timestamps).
    ``contexts``: per utterance its shallow-fusion :class:`ContextGraph` or ``None`` (no biasing)."""

    hyps: list[Hypothesis]
    utt: list[int]
    pred_out: torch.Tensor
    pred_state: Any
    frames: list[int]
    contexts: list[ContextGraph | None] | None = None

    def nbest(self, final: bool = False) -> list[list[Hypothesis]]:
        """Per utterance its live hypotheses, best first (sorted by ``log_prob``). ``final``: the
        utterance has ended, so a biased hypothesis gives back the boost of an incomplete phrase."""
        results: list[list[Hypothesis]] = [[] for _ in self.frames]
        for h, u in zip(self.hyps, self.utt):
            g = self.contexts[u] if final and self.contexts else None
            if g is not None and h.context_state:
                h = Hypothesis(h.tokens, h.log_prob + g.finalize(h.context_state), h.timestamps, h.context_state)
            results[u].append(h)
        return [sorted(r, key=lambda h: h.log_prob, reverse=True) for r in results]


def init_beam_state(model, batch_size: int, device=None,
                    contexts: Sequence[ContextGraph | None] | None = None) -> BeamState:
    if contexts is not None and len(contexts) != batch_size:
        raise ValueError(f"{len(contexts)} context graphs for {batch_size} utterances")
    if contexts is not None and all(g is None for g in contexts):
        contexts = None  # an empty list decodes exactly as no list
    pred_out, pred_state = model.predictor.init_decoder(batch_size, device)
    return BeamState([Hypothesis([], 0.0) for _ in range(batch_size)], list(range(batch_size)), pred_out, pred_state,
                     [0] * batch_size, list(contexts) if contexts is not None else None)


@torch.no_grad()
def modified_beam_search(model, enc_out: torch.Tensor, enc_lens: torch.Tensor, beam: int = 4,
                         contexts: Sequence[ContextGraph | None] | None = None,
                         max_sym_per_frame: int = 1) -> list[list[Hypothesis]]:
    """enc_out: (N, T, J), enc_lens: (N,) -> per utterance up to ``beam`` distinct hypotheses,
    best first (sorted by ``log_prob``). ``contexts``: per utterance a :class:`ContextGraph` to bias
    towards (shallow fusion; ``log_prob`` then includes the bias) or ``None``. ``max_sym_per_frame``:
    see :func:`modified_beam_search_streaming`."""
    state = init_beam_state(model, enc_out.size(0), enc_out.device, contexts)
    _, state = modified_beam_search_streaming(model, enc_out, enc_lens, state, beam, max_sym_per_frame)
    return state.nbest(final=True)


@torch.no_grad()
def modified_beam_search_streaming(model, chunk_enc_out: torch.Tensor, enc_lens: torch.Tensor,
                                   state: BeamState | None = None, beam: int = 4, max_sym_per_frame: int = 1
                                   ) -> tuple[list[list[Hypothesis]], BeamState]:
    """Search the next encoder chunk (N, T, J) with ``enc_lens`` valid frames per stream (0 allowed);
    returns each stream's hypotheses so far (best first) and the state for the next chunk. The search
    is frame-synchronous and causal, so any chunking gives exactly :func:`modified_beam_search` on the
    whole output, and the hypotheses after a chunk are what the search holds at that frame.

    ``max_sym_per_frame`` > 1: a hypothesis that emitted may emit again on the same frame (up to that
    many symbols; it then pays the blank that ends the frame, as in the standard transducer search),
    for speech denser in tokens than frames (a rare name spelled in short pieces); at the cap, or with
    1 (icefall's modified beam search), emitting ends the frame."""
    if max_sym_per_frame < 1:
        raise ValueError(f"max_sym_per_frame must be >= 1, got {max_sym_per_frame}")
    device = chunk_enc_out.device
    st = state if state is not None else init_beam_state(model, chunk_enc_out.size(0), device)
    enc_lens = enc_lens.tolist()
    for t in range(chunk_enc_out.size(1)):
        if not any(enc_lens[u] > t for u in st.utt):
            break
        _search_frame(model, st, chunk_enc_out[:, t], [enc_lens[u] > t for u in range(len(st.frames))], t, beam,
                      max_sym_per_frame)
    for u, m in enumerate(enc_lens):
        st.frames[u] += int(min(m, chunk_enc_out.size(1)))
    return st.nbest(), st


def _search_frame(model, st: BeamState, enc_t: torch.Tensor, active: list[bool], t: int, beam: int,
                  max_sym: int) -> None:
    """One encoder frame (``enc_t``: (N, J)) for the utterances marked ``active``; updates ``st``.

    A working table holds every hypothesis of the frame with a predictor row (the live ones first,
    then those emitted this frame); each round expands the frontier (all live hypotheses, then
    those that emitted in the round before) by every symbol, keeps the ``beam`` best per utterance
    and sends blanks (and, at the last round, emissions) to the frame's ended set, merged by token
    sequence (logaddexp; the first arrival keeps its predictor row)."""
    predictor, joiner, blank = model.predictor, model.joiner, model.blank_id
    device = enc_t.device
    w_hyps, w_utt = list(st.hyps), list(st.utt)
    w_out, w_state = st.pred_out, st.pred_state
    ended: dict[int, dict[tuple[int, ...], list]] = {}  # utt -> key -> [hyp, row, token to step or None]
    frontier = [r for r, u in enumerate(w_utt) if active[u]]
    for rnd in range(max_sym):
        if not frontier:
            break
        last = rnd == max_sym - 1
        rows_t = torch.tensor(frontier, device=device)
        utts = [w_utt[r] for r in frontier]
        logp = joiner.forward_frame(enc_t[torch.tensor(utts, device=device)], w_out[rows_t]).float().log_softmax(-1)
        scores = logp + torch.tensor([w_hyps[r].log_prob for r in frontier], device=device).unsqueeze(1)
        locked = None
        if st.contexts is not None:
            reserving = any(_reserve(st.contexts, u) for u in utts)
            bias, pend = _context_bias(st.contexts, utts, [w_hyps[r] for r in frontier], logp.size(1), blank, device,
                                       pending=reserving)
            scores = scores + bias
            if pend is not None:
                locked = scores - pend
        v = scores.size(1)

        # Pad each utterance's candidates to (width, V) so one topk serves the batch.
        order = sorted(set(utts))
        pos = {u: i for i, u in enumerate(order)}
        slot, seen = [], {}
        for u in utts:
            slot.append(seen.get(u, 0))
            seen[u] = slot[-1] + 1
        width = max(seen.values())
        where = (torch.tensor([pos[u] for u in utts], device=device), torch.tensor(slot, device=device))
        pad = torch.full((len(order), width, v), -math.inf, device=device)
        pad[where] = scores
        k = min(beam, width * v)
        top_val, top_idx = pad.view(len(order), -1).topk(k, dim=1)
        picks = [list(zip(top_val[a].tolist(), top_idx[a].tolist())) for a in range(len(order))]
        if locked is not None:
            picks = _with_reserve(picks, pad, locked, where, order, st.contexts, k)
        row_of = {(pos[u], s): r for r, u, s in zip(frontier, utts, slot)}

        pending: dict[int, dict[tuple[int, ...], list]] = {}
        for a, u in enumerate(order):
            for val, idx in picks[a]:
                if val == -math.inf:
                    continue
                parent, tok = row_of[(a, idx // v)], idx % v
                ph = w_hyps[parent]
                if tok == blank:
                    entry = [Hypothesis(ph.tokens, val, ph.timestamps, ph.context_state), parent, None]
                else:
                    g = st.contexts[u] if st.contexts is not None else None
                    cs = int(g.next[ph.context_state, tok]) if g is not None else 0
                    entry = [Hypothesis(ph.tokens + [tok], val, ph.timestamps + [st.frames[u] + t], cs), parent, tok]
                target = (ended if tok == blank or last else pending).setdefault(u, {})
                _merge(target, entry)

        # Emissions that go on this frame get their predictor row now (it joins the working table);
        # the frame's ended ones are stepped once, after the last round.
        steps = [e for d in pending.values() for e in d.values()]
        if steps:
            par = torch.tensor([e[1] for e in steps], device=device)
            out, sub = predictor.step_tokens(torch.tensor([e[2] for e in steps], device=device),
                                             predictor.select_state(w_state, par))
            base = len(w_hyps)
            grow = torch.cat([torch.arange(base, device=device), par])
            w_out, w_state = w_out[grow], predictor.select_state(w_state, grow)
            new_rows = torch.arange(base, base + len(steps), device=device)
            w_out[new_rows] = out
            w_state = predictor.scatter_state(w_state, new_rows, sub)
            for j, e in enumerate(steps):
                e[1], e[2] = base + j, None
                w_hyps.append(e[0])
                w_utt.append(w_utt[int(par[j])])
        frontier = [e[1] for d in pending.values() for e in d.values()]

    # The new flat list: each active utterance's ended hypotheses (the beam best, in arrival order),
    # the others untouched.
    rows, new_hyps, new_utt, emit_pos, emit_tok = [], [], [], [], []
    for u in range(len(st.frames)):
        if active[u]:
            entries = list(ended.get(u, {}).values())
            if len(entries) > beam:
                keep = _keep(entries, beam, st.contexts[u] if st.contexts is not None else None)
                entries = [e for i, e in enumerate(entries) if i in keep]
            for h, r, tok in entries:
                if tok is not None:
                    emit_pos.append(len(rows))
                    emit_tok.append(tok)
                new_hyps.append(h)
                new_utt.append(u)
                rows.append(r)
        else:
            for r, uu in enumerate(st.utt):
                if uu == u:
                    new_hyps.append(st.hyps[r])
                    new_utt.append(u)
                    rows.append(r)
    idx = torch.tensor(rows, device=device)
    pred_out, pred_state = w_out[idx], predictor.select_state(w_state, idx)
    if emit_pos:
        ep = torch.tensor(emit_pos, device=device)
        out, sub = predictor.step_tokens(torch.tensor(emit_tok, device=device), predictor.select_state(pred_state, ep))
        pred_out[ep] = out
        pred_state = predictor.scatter_state(pred_state, ep, sub)
    st.hyps, st.utt, st.pred_out, st.pred_state = new_hyps, new_utt, pred_out, pred_state


def _with_reserve(picks: list, pad: torch.Tensor, locked: torch.Tensor, where, order: Sequence[int],
                  contexts: Sequence[ContextGraph | None], k: int) -> list:
    """Per utterance the ``reserve`` best candidates by the score without unlocked boosts, then the
    best by the biased score up to ``k``: a boosted false start cannot push every honest hypothesis
    out of the beam before its boost is taken back."""
    lpad = torch.full_like(pad, -math.inf)
    lpad[where] = locked
    flat = pad.view(len(order), -1)
    out = []
    for a, u in enumerate(order):
        r = min(_reserve(contexts, u), k)
        if not r:
            out.append(picks[a])
            continue
        first = lpad[a].view(-1).topk(r).indices.tolist()
        chosen = [i for i in first if flat[a, i] > -math.inf]
        taken = set(chosen)
        chosen += [i for _, i in picks[a] if i not in taken][:k - len(chosen)]
        out.append([(float(flat[a, i]), i) for i in chosen])
    return out


def _keep(entries: list, beam: int, g: ContextGraph | None) -> set[int]:
    """Indices of the ``beam`` entries a frame keeps: the best by score, after the graph's
    ``reserve`` best by the score without unlocked boosts."""
    hyps = [e[0] for e in entries]
    keep: set[int] = set()
    if g is not None and g.reserve:
        locked = sorted(range(len(hyps)), key=lambda i: float(g.pending[hyps[i].context_state]) - hyps[i].log_prob)
        keep.update(locked[:min(g.reserve, beam)])
    for i in sorted(range(len(hyps)), key=lambda i: -hyps[i].log_prob):
        if len(keep) >= beam:
            break
        keep.add(i)
    return keep


def _merge(target: dict[tuple[int, ...], list], entry: list) -> None:
    """Add ``[hyp, row, token]`` to a key -> entry dict: the same token sequence sums its probability
    (logaddexp); the first arrival keeps its predictor row (the same sequence has the same state)."""
    h = entry[0]
    key = tuple(h.tokens)
    old = target.get(key)
    if old is None:
        target[key] = entry
        return
    keep = old[0] if old[0].log_prob >= h.log_prob else h
    old[0] = Hypothesis(keep.tokens, _logaddexp(old[0].log_prob, h.log_prob), keep.timestamps, keep.context_state)
