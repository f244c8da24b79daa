"""Transducer search for any :class:`edgeasr.models.Transducer` (uses predictor's decoding interface)."""

from .beam import BeamState, Hypothesis, init_beam_state, modified_beam_search, modified_beam_search_streaming
from .context import ContextGraph
from .greedy import GreedyState, greedy_search, greedy_search_streaming, init_greedy_state

__all__ = [
    "BeamState",
    "ContextGraph",
    "GreedyState",
    "Hypothesis",
    "greedy_search",
    "greedy_search_streaming",
    "init_beam_state",
    "init_greedy_state",
    "modified_beam_search",
    "modified_beam_search_streaming",
]
