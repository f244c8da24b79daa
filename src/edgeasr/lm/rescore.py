"""N-best rescoring of the device's word lattices with the cloud's LM.

Each lattice path carries the device's (graph, acoustic) costs (:mod:`edgeasr.lattice.nbest`:
graph = the predictor's internal LM, acoustic = the rest of the search score). The cloud picks,
per utterance, the path with the highest

    score = −(acoustic + α·graph) + λ·log P_LM(words) + β·len(words)

α = 1, λ = β = 0 is the device's own 1-best; α < 1 takes the internal LM partly out before the
external one comes in (density ratio / ILM estimation, Meng et al., SLT 2021). (λ, α, β) are
chosen on ``dev`` over a grid (:func:`tune_weights`), never on a test split.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import kaldialign
import numpy as np
import torch

from edgeasr.lattice import LatticePath

from .model import PieceLM


@dataclass(frozen=True)
class RescoreWeights:
    """λ (``lm_weight``), α (``ilm_weight``) and β (``length_bonus``, nats per word)."""

    lm_weight: float = 0.0
    ilm_weight: float = 1.0
    length_bonus: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"lm_weight": self.lm_weight, "ilm_weight": self.ilm_weight, "length_bonus": self.length_bonus}


@dataclass
class Utterance:
    """One utterance's N-best (paths cheapest first) with what scoring needs, as arrays over paths."""

    id: str
    ref: str
    paths: list[LatticePath]
    lm_logp: np.ndarray     # (N,) log P_LM of each path's words
    errors: np.ndarray      # (N,) word errors against ``ref``

    def features(self) -> np.ndarray:
        """(N, 4): acoustic cost, graph cost, LM log-prob, words."""
        return np.array([[p.acoustic_cost, p.graph_cost, lm, len(p.words)]
                         for p, lm in zip(self.paths, self.lm_logp)], dtype=np.float64)

    def pick(self, w: RescoreWeights) -> int:
        f = self.features()
        score = -(f[:, 0] + w.ilm_weight * f[:, 1]) + w.lm_weight * f[:, 2] + w.length_bonus * f[:, 3]
        return int(np.argmax(score))  # first of the best: ties keep the device's order


class Rescorer:
    """Scores word sequences with ``lm``; ``encode``: text -> piece ids (the tokenizer's)."""

    def __init__(self, lm: PieceLM, encode: Callable[[str], list[int]], batch_size: int = 256):
        self.lm, self.encode, self.batch_size = lm.eval(), encode, int(batch_size)

    @torch.no_grad()
    def log_probs(self, sentences: Sequence[tuple[str, ...]]) -> dict[tuple[str, ...], float]:
        """log P_LM of each distinct word sequence (an empty one: the boundary alone)."""
        unique = sorted(set(sentences), key=lambda s: (len(s), s))
        scores = self.lm.log_prob([self.encode(" ".join(s)) for s in unique], self.batch_size)
        return dict(zip(unique, scores))

    def utterances(self, items: Sequence[tuple[str, str, list[LatticePath]]]) -> list[Utterance]:
        """``(id, reference, paths)`` per utterance -> :class:`Utterance` (LM scores, errors)."""
        lm = self.log_probs([p.words for _, _, paths in items for p in paths])
        out = []
        for utt_id, ref, paths in items:
            if not paths:
                raise ValueError(f"utterance {utt_id}: a lattice with no paths cannot be rescored")
            ref_words = ref.split()
            errs = [kaldialign.edit_distance(ref_words, list(p.words))["total"] for p in paths]
            out.append(Utterance(utt_id, ref, list(paths), np.array([lm[p.words] for p in paths]),
                                 np.array(errs, dtype=np.int64)))
        return out


def total_errors(utts: Sequence[Utterance], w: RescoreWeights) -> int:
    return int(sum(u.errors[u.pick(w)] for u in utts))


def tune_weights(utts: Sequence[Utterance], lm_weights: Sequence[float], ilm_weights: Sequence[float],
                 length_bonuses: Sequence[float]) -> tuple[RescoreWeights, int, list[dict]]:
    """The grid point with the fewest summed word errors on ``utts`` (dev). Ties go to the point
    first in grid order (λ ascending, then α and β as listed): with λ = 0 first, a grid that cannot
    beat the 1-best returns it. Returns ``(weights, errors, every point's errors)``."""
    if not utts:
        raise ValueError("no utterances to tune the rescoring weights on")
    n = max(len(u.paths) for u in utts)
    feats = np.zeros((len(utts), n, 4))
    errs = np.zeros((len(utts), n), dtype=np.int64)
    valid = np.zeros((len(utts), n), dtype=bool)
    for i, u in enumerate(utts):
        k = len(u.paths)
        feats[i, :k], errs[i, :k], valid[i, :k] = u.features(), u.errors, True
    rows = np.arange(len(utts))
    best: tuple[int, RescoreWeights] | None = None
    table = []
    for lam, alpha, beta in itertools.product(sorted(lm_weights), ilm_weights, length_bonuses):
        score = -(feats[..., 0] + alpha * feats[..., 1]) + lam * feats[..., 2] + beta * feats[..., 3]
        score[~valid] = -np.inf
        e = int(errs[rows, score.argmax(1)].sum())
        w = RescoreWeights(float(lam), float(alpha), float(beta))
        table.append({**w.as_dict(), "errors": e})
        if best is None or e < best[0]:
            best = (e, w)
    assert best is not None
    return best[1], best[0], table
