"""Training losses beyond the RNN-T loss itself (which lives on ``Transducer``)."""

from .distill import collapsed_kl, collapsed_log_probs, node_mask, node_occupancy

__all__ = ["collapsed_kl", "collapsed_log_probs", "node_mask", "node_occupancy"]
