"""A batch of audio features -> each utterance's N-best word lattices, for several N at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from edgeasr.decoding import modified_beam_search

from .fst import WordLattice, build_lattice
from .nbest import score_nbest


@dataclass
class Decoded:
    """One utterance: the beam search's best token ids (what a 1-best decode would transcribe) and
    ``{N: lattice of the top N}``."""

    best_tokens: list[int]
    lattices: dict[int, WordLattice]


@torch.no_grad()
def decode_lattices(model, features: torch.Tensor, feature_lens: torch.Tensor, tokens: Sequence[str],
                    ns: Sequence[int], beam: int, step_log2: int = 7, max_sym_per_frame: int = 1) -> list[Decoded]:
    """features: (B, T, 80), feature_lens: (B,) -> per utterance its :class:`Decoded`.

    One modified beam search of width ``beam`` per batch; the lattice for N is built from its N
    best hypotheses, so the 1-best is the same for every N and a larger N only adds paths."""
    if not ns or min(ns) < 1 or max(ns) > beam:
        raise ValueError(f"lattice sizes {list(ns)} must lie in 1..beam ({beam}): the N-best comes from one beam search")
    enc, enc_lens = model.encode(features, feature_lens)
    nbests = modified_beam_search(model, enc, enc_lens, beam=beam, max_sym_per_frame=max_sym_per_frame)
    scored = score_nbest(model, nbests, tokens)
    return [Decoded(list(nb[0].tokens), {n: build_lattice(hyps[:n], step_log2) for n in ns})
            for nb, hyps in zip(nbests, scored)]


def nbest_lattices(model, features: torch.Tensor, feature_lens: torch.Tensor, tokens: Sequence[str],
                   ns: Sequence[int], beam: int, step_log2: int = 7, max_sym_per_frame: int = 1
                   ) -> list[dict[int, WordLattice]]:
    """Per utterance ``{N: lattice of the top N}`` (:func:`decode_lattices` without the 1-best ids)."""
    return [d.lattices for d in decode_lattices(model, features, feature_lens, tokens, ns, beam, step_log2,
                                                max_sym_per_frame)]
