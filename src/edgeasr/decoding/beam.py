"""icefall's modified beam search for transducers, batched over utterances.

At most one symbol per frame; each frame every hypothesis is extended by all V symbols, the
``beam`` best (hypothesis, symbol) pairs per utterance survive, and pairs that spell the same
token sequence are merged by adding their probabilities (logaddexp).
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
                  v: int, blank: int, device) -> torch.Tensor:
    """(rows, V): each hypothesis's score change per next token from its utterance's graph (0 for
    blank and for utterances without one)."""
    bias = np.zeros((len(utts), v), dtype=np.float32)
    for i, (u, h) in enumerate(zip(utts, hyps)):
        g = contexts[u]
        if g is not None:
            if g.vocab_size != v:
                raise ValueError(f"context graph of utterance {u} was built for {g.vocab_size} tokens; "
                                 f"the model has {v}: build it with the model's tokenizer")
            bias[i] = g.delta[h.context_state]
    bias[:, blank] = 0.0
    return torch.from_numpy(bias).to(device)


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
                         contexts: Sequence[ContextGraph | None] | None = None) -> list[list[Hypothesis]]:
    """enc_out: (N, T, J), enc_lens: (N,) -> per utterance up to ``beam`` distinct hypotheses,
    best first (sorted by ``log_prob``). ``contexts``: per utterance a :class:`ContextGraph` to bias
    towards (shallow fusion; ``log_prob`` then includes the bias) or ``None``."""
    state = init_beam_state(model, enc_out.size(0), enc_out.device, contexts)
    _, state = modified_beam_search_streaming(model, enc_out, enc_lens, state, beam)
    return state.nbest(final=True)


@torch.no_grad()
def modified_beam_search_streaming(model, chunk_enc_out: torch.Tensor, enc_lens: torch.Tensor,
                                   state: BeamState | None = None, beam: int = 4
                                   ) -> tuple[list[list[Hypothesis]], BeamState]:
    """Search the next encoder chunk (N, T, J) with ``enc_lens`` valid frames per stream (0 allowed);
    returns each stream's hypotheses so far (best first) and the state for the next chunk. The search
    is frame-synchronous and causal, so any chunking gives exactly :func:`modified_beam_search` on the
    whole output, and the hypotheses after a chunk are what the search holds at that frame."""
    predictor, joiner, blank = model.predictor, model.joiner, model.blank_id
    device = chunk_enc_out.device
    st = state if state is not None else init_beam_state(model, chunk_enc_out.size(0), device)
    n = len(st.frames)
    enc_lens = enc_lens.tolist()
    # Flat list of live hypotheses grouped by utterance; pred_out/pred_state have one row each.
    hyps, utt, pred_out, pred_state = st.hyps, st.utt, st.pred_out, st.pred_state

    for t in range(chunk_enc_out.size(1)):
        rows = [r for r, u in enumerate(utt) if enc_lens[u] > t]
        if not rows:
            break
        rows_t = torch.tensor(rows, device=device)
        utts_t = torch.tensor([utt[r] for r in rows], device=device)
        logp = joiner.forward_frame(chunk_enc_out[utts_t, t], pred_out[rows_t]).float().log_softmax(-1)
        scores = logp + torch.tensor([hyps[r].log_prob for r in rows], device=device).unsqueeze(1)
        if st.contexts is not None:
            scores = scores + _context_bias(st.contexts, [utt[r] for r in rows], [hyps[r] for r in rows],
                                            logp.size(1), blank, device)
        v = scores.size(1)

        # Pad each active utterance's candidates to (beam, V) so one topk serves the batch.
        active_utts = sorted({utt[r] for r in rows})
        pos = {u: i for i, u in enumerate(active_utts)}
        slot, seen = [], {}
        for r in rows:
            slot.append(seen.get(utt[r], 0))
            seen[utt[r]] = slot[-1] + 1
        width = max(seen.values())
        pad = torch.full((len(active_utts), width, v), -math.inf, device=device)
        pad[torch.tensor([pos[utt[r]] for r in rows], device=device), torch.tensor(slot, device=device)] = scores
        k = min(beam, width * v)
        top_val, top_idx = pad.view(len(active_utts), -1).topk(k, dim=1)
        row_of = {(pos[utt[r]], s): r for r, s in zip(rows, slot)}

        new_by_utt: dict[int, dict[tuple[int, ...], tuple[Hypothesis, int, int]]] = {}
        for a, u in enumerate(active_utts):
            merged: dict[tuple[int, ...], tuple[Hypothesis, int, int]] = {}
            for val, idx in zip(top_val[a].tolist(), top_idx[a].tolist()):
                if val == -math.inf:
                    continue
                parent, tok = row_of[(a, idx // v)], idx % v
                ph = hyps[parent]
                if tok == blank:
                    h = Hypothesis(ph.tokens, val, ph.timestamps, ph.context_state)
                else:
                    g = st.contexts[u] if st.contexts is not None else None
                    cs = int(g.next[ph.context_state, tok]) if g is not None else 0
                    h = Hypothesis(ph.tokens + [tok], val, ph.timestamps + [st.frames[u] + t], cs)
                key = tuple(h.tokens)
                if key in merged:
                    old, op, ot = merged[key]
                    # The same sequence has the same predictor state: keep the first parent.
                    keep = old if old.log_prob >= val else h
                    keep = Hypothesis(keep.tokens, _logaddexp(old.log_prob, val), keep.timestamps, keep.context_state)
                    merged[key] = (keep, op, ot)
                else:
                    merged[key] = (h, parent, tok)
            new_by_utt[u] = merged

        # Rebuild the flat list (finished utterances keep their hypotheses untouched).
        new_hyps, new_utt, parents, emit_pos, emit_tok = [], [], [], [], []
        for u in range(n):
            if u in new_by_utt:
                for h, parent, tok in new_by_utt[u].values():
                    if tok != blank:
                        emit_pos.append(len(new_hyps))
                        emit_tok.append(tok)
                    new_hyps.append(h)
                    new_utt.append(u)
                    parents.append(parent)
            else:
                for r, uu in enumerate(utt):
                    if uu == u:
                        new_hyps.append(hyps[r])
                        new_utt.append(u)
                        parents.append(r)
        par = torch.tensor(parents, device=device)
        pred_out = pred_out[par]
        pred_state = predictor.select_state(pred_state, par)
        if emit_pos:
            ep = torch.tensor(emit_pos, device=device)
            out, sub = predictor.step_tokens(
                torch.tensor(emit_tok, device=device), predictor.select_state(pred_state, ep)
            )
            pred_out[ep] = out
            pred_state = predictor.scatter_state(pred_state, ep, sub)
        hyps, utt = new_hyps, new_utt

    for u, m in enumerate(enc_lens):
        st.frames[u] += int(min(m, chunk_enc_out.size(1)))
    st.hyps, st.utt, st.pred_out, st.pred_state = hyps, utt, pred_out, pred_state
    return st.nbest(), st
