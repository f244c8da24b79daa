"""The student encoder's residual LSTM stack, written once for every arithmetic that runs it.

Each block is ``x <- add(l, x, cell(l, norm(l, x), state_l))`` (pre-norm, residual around the
LSTM; NOTES.md §7). The float encoder (:class:`~edgeasr.models.LstmEncoder`: training, streaming,
sherpa export), its fake-quantized wrapper (:mod:`edgeasr.compression.actquant`) and the integer
runtime (:mod:`edgeasr.runtime`) pass their own ``norm`` / ``cell`` / ``add``: torch's LSTM kernel,
the requantized gate loop, the integer gate loop. The kernels stay separate because their
arithmetic must differ; ``tests/test_residual_lstm.py`` checks that the three agree.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

X = TypeVar("X")
Norm = Callable[[int, X], X]  # (layer, x) -> the LSTM's input
Cell = Callable[[int, X, Any], tuple[X, Any]]  # (layer, input, state) -> (output sequence, new state)
Add = Callable[[int, X, X], X]  # (layer, residual, output) -> next residual


def residual_lstm(x: X, norm: Norm, cell: Cell, add: Add, states: Sequence[Any]) -> tuple[X, list[Any]]:
    """Run one block per entry of ``states`` (the layers' incoming states; ``None`` = zero state).

    ``x``: (..., T, H) in whatever representation the callables share. Returns the last block's
    output (..., T, H) and each layer's outgoing state.
    """
    out_states = []
    for layer, state in enumerate(states):
        y, state = cell(layer, norm(layer, x), state)
        x = add(layer, x, y)
        out_states.append(state)
    return x, out_states
