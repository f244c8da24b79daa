"""Training losses beyond the RNN-T loss itself (which lives on ``Transducer``)."""

from .distill import collapsed_kl, collapsed_log_probs, node_mask, node_occupancy
from .mwer import mwer_loss, nbest_posteriors

__all__ = ["collapsed_kl", "collapsed_log_probs", "node_mask", "node_occupancy", "mwer_loss", "nbest_posteriors"]
