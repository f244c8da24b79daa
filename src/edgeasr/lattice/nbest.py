"""An utterance's N-best from modified beam search as scored word sequences.

Each hypothesis's search score is split in two, as Kaldi splits a lattice weight into graph and
acoustic costs, so that a rescorer can later weigh them apart (score = acoustic + λ·LM):

* ``graph_cost`` = −log P_pred(y): the predictor's internal language model (ILM), read through the
  joiner with a zero encoder frame and the blank left out (internal LM estimation, Meng et al.,
  SLT 2021): what the transducer believes from the text alone;
* ``acoustic_cost`` = −log P_search(y | x) − graph_cost: the rest of the search's score.

``graph_cost + acoustic_cost`` is exactly the search's cost of the hypothesis. Works with any
model that has the decoding interface (:mod:`edgeasr.decoding`): the PyTorch student and the
integer runtime alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from edgeasr.decoding import Hypothesis

SPACE = "\u2581"  # sentencepiece's word boundary


@dataclass(frozen=True)
class ScoredHyp:
    """One N-best entry: ``words`` and the BPE ids each was spelled with (``pieces``, one tuple per
    word); costs are negated natural-log scores (see the module docstring)."""

    words: tuple[str, ...]
    pieces: tuple[tuple[int, ...], ...]
    graph_cost: float
    acoustic_cost: float

    @property
    def cost(self) -> float:
        return self.graph_cost + self.acoustic_cost


def words_of(pieces: Sequence[str]) -> list[tuple[str, tuple[int, ...]]]:
    """BPE pieces -> ``(word, positions of its pieces)``: a piece starting with ``▁`` starts a word.

    The words are ``"".join(pieces).replace("▁", " ").split()``, i.e. what the runtime's
    ``tokens_to_text`` spells. A lone ``▁`` piece belongs to the word after it."""
    out: list[tuple[str, tuple[int, ...]]] = []
    text, pos = "", []
    for i, p in enumerate(pieces):
        if SPACE in p[1:]:
            raise ValueError(f"BPE piece {p!r} has a word boundary inside it; words cannot be formed from it")
        if p.startswith(SPACE):
            if text:
                out.append((text, tuple(pos)))
            text, pos = p[1:], [i]
        else:
            text, pos = text + p, pos + [i]
    if text:
        out.append((text, tuple(pos)))
    return out


@torch.no_grad()
def predictor_log_probs(model, seqs: Sequence[Sequence[int]]) -> list[float]:
    """Σ_u log P_pred(y_u | y_<u) for each token sequence (ids without blank), batched: the
    predictor's internal LM, its output through the joiner with a zero encoder frame, softmax over
    the non-blank tokens. One predictor step per token position, all sequences together."""
    if not seqs:
        return []
    predictor, joiner, blank = model.predictor, model.joiner, model.blank_id
    n, longest = len(seqs), max(len(s) for s in seqs)
    out, state = predictor.init_decoder(n, None)
    zero = torch.zeros_like(out)  # a zero encoder frame: 0.0 for the PyTorch model, level 0 for the runtime
    total = torch.zeros(n, dtype=torch.float64)
    for u in range(longest):
        logits = joiner.forward_frame(zero, out).double()
        logits[:, blank] = -math.inf
        logp = logits.log_softmax(-1)
        live = torch.tensor([u < len(s) for s in seqs])
        tok = torch.tensor([s[u] if u < len(s) else blank for s in seqs], dtype=torch.int64)
        total += torch.where(live, logp.gather(1, tok[:, None])[:, 0], torch.zeros((), dtype=torch.float64))
        if u + 1 < longest:
            out, state = predictor.step_tokens(tok, state)
    return total.tolist()


def score_nbest(model, nbests: Sequence[Sequence[Hypothesis]], tokens: Sequence[str]) -> list[list[ScoredHyp]]:
    """Per utterance its hypotheses (``modified_beam_search`` output, best first) as
    :class:`ScoredHyp`, in the same order; ``tokens``: the model's BPE pieces by id."""
    flat = [h for nb in nbests for h in nb]
    lm = predictor_log_probs(model, [h.tokens for h in flat])
    scored, k = [], 0
    for nb in nbests:
        row = []
        for h in nb:
            grouped = words_of([tokens[t] for t in h.tokens])
            row.append(ScoredHyp(tuple(w for w, _ in grouped), tuple(tuple(h.tokens[i] for i in pos) for _, pos in grouped),
                                 graph_cost=-lm[k], acoustic_cost=lm[k] - h.log_prob))
            k += 1
        scored.append(row)
    return scored
