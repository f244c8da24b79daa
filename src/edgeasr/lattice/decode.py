"""A batch of audio features -> each utterance's N-best word lattices, for several N at once."""

from __future__ import annotations

from typing import Sequence

import torch

from edgeasr.decoding import modified_beam_search

from .fst import WordLattice, build_lattice
from .nbest import score_nbest


@torch.no_grad()
def nbest_lattices(model, features: torch.Tensor, feature_lens: torch.Tensor, tokens: Sequence[str],
                   ns: Sequence[int], beam: int, step_log2: int = 7) -> list[dict[int, WordLattice]]:
    """features: (B, T, 80), feature_lens: (B,) -> per utterance ``{N: lattice of the top N}``.

    One modified beam search of width ``beam`` per batch; the lattice for N is built from its N
    best hypotheses, so the 1-best is the same for every N and a larger N only adds paths."""
    if not ns or min(ns) < 1 or max(ns) > beam:
        raise ValueError(f"lattice sizes {list(ns)} must lie in 1..beam ({beam}): the N-best comes from one beam search")
    enc, enc_lens = model.encode(features, feature_lens)
    scored = score_nbest(model, modified_beam_search(model, enc, enc_lens, beam=beam), tokens)
    return [{n: build_lattice(hyps[:n], step_log2) for n in ns} for hyps in scored]
