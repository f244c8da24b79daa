"""Transducer search for any :class:`edgeasr.models.Transducer` (uses predictor's decoding interface)."""

from .beam import Hypothesis, modified_beam_search
from .greedy import GreedyState, greedy_search, greedy_search_streaming, init_greedy_state

__all__ = [
    "GreedyState",
    "Hypothesis",
    "greedy_search",
    "greedy_search_streaming",
    "init_greedy_state",
    "modified_beam_search",
]
