"""The cloud side's language model: a BPE-piece LSTM LM (:class:`PieceLM`) and N-best rescoring
of the device's lattices with it (:mod:`.rescore`). Knows no training code and no runtime: the
``train_lm`` stage trains it (:mod:`edgeasr.training.lm`), the evaluate stage rescores with it."""

from .model import PieceLM, load_lm, save_lm
from .rescore import RescoreWeights, Rescorer, tune_weights

__all__ = ["PieceLM", "RescoreWeights", "Rescorer", "load_lm", "save_lm", "tune_weights"]
