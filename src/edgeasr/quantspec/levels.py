"""Floats -> integer levels on the spec's weight grid: the one place that does it (torch).

The grid for ``bits`` b is ``k * scale`` with integer ``k`` in ``[-qmax(b), qmax(b)]`` and
``scale = max |w_row| / qmax(b)`` per output channel (row 0 of the weight; for an LSTM's stacked
gate matrix that is one scale per gate unit). Training (:mod:`edgeasr.compression.quant`), the
export writer and the integer runtime all call these, so a weight that sits on the grid gets the
same levels back wherever it is quantized, and pruned entries stay exactly 0.
"""

from __future__ import annotations

from typing import Mapping

import torch

from . import check_weight_bits, is_compressed, qmax


def channel_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scale of ``w`` (C_out, ...), shaped to broadcast against it: (C_out, 1, ...)."""
    flat = w.detach().reshape(w.size(0), -1).abs().amax(dim=1)
    scale = (flat / qmax(check_weight_bits(bits))).clamp(min=1e-12)
    return scale.reshape(-1, *([1] * (w.dim() - 1)))


def weight_levels(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` (C_out, ...) -> ``(levels, scale)``: int32 levels of ``w``'s shape (exact zeros stay 0)
    and the per-channel scales (C_out,)."""
    scale = channel_scale(w, bits)
    q = torch.clamp(torch.round(w / scale), -qmax(bits), qmax(bits))
    return q.to(torch.int32), scale.reshape(-1)


def state_levels(state_dict: Mapping[str, torch.Tensor], bits: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``weight_levels`` (as float32 weights) of every compressed weight of a state dict, by name."""
    return {name: weight_levels(w.detach().float(), bits) for name, w in state_dict.items()
            if is_compressed(name, w.dim())}
