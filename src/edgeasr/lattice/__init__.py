"""N-best word lattices from the student's modified beam search: what the device sends the cloud.

:func:`nbest_lattices` (:func:`decode_lattices`: with the 1-best's token ids) decodes a batch
with any model that has the decoding interface (the PyTorch student or the integer runtime) and
builds each utterance's lattice
(:func:`build_lattice`: determinized, weight-pushed, minimized; weights are (graph, acoustic)
cost pairs, :mod:`.nbest`); :func:`serialize` / :func:`deserialize` are its wire format (:func:`write_lattices` /
:func:`read_lattices` a split's file of them);
:func:`oracle_path` scores it against a reference. Never imports training code.
"""

from .codec import LatticeFormatError, deserialize, read_lattices, serialize, write_lattices
from .decode import Decoded, decode_lattices, nbest_lattices
from .fst import LatticePath, WordLattice, build_lattice, same_up_to_ties
from .nbest import ScoredHyp, predictor_log_probs, score_nbest, words_of
from .oracle import oracle_path

__all__ = [
    "Decoded",
    "decode_lattices",
    "LatticeFormatError",
    "LatticePath",
    "ScoredHyp",
    "WordLattice",
    "build_lattice",
    "deserialize",
    "nbest_lattices",
    "oracle_path",
    "predictor_log_probs",
    "read_lattices",
    "same_up_to_ties",
    "score_nbest",
    "serialize",
    "words_of",
    "write_lattices",
]
