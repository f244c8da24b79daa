"""Fake-quantization of weights with a straight-through estimator, and the absolute-cosine
regularizer (Nguyen et al., Interspeech 2020), on the per-channel grid of
:mod:`edgeasr.quantspec.levels` (which owns the grid: ``channel_scale``, ``weight_levels``).

The scale is recomputed from the current weights at every step, so the grid follows training.
"""

from __future__ import annotations

import math

import torch

from edgeasr.quantspec import qmax
from edgeasr.quantspec.levels import channel_scale


def fake_quant(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize-dequantize in the forward pass; identity gradient (straight-through estimator)."""
    scale = channel_scale(w, bits)
    wq = torch.clamp(torch.round(w / scale), -qmax(bits), qmax(bits)) * scale
    return w + (wq - w).detach()


def grid_distance(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Mean distance of weights to their nearest grid point, in grid steps (0 on the grid, 0.5 worst)."""
    r = w.detach() / channel_scale(w, bits)
    return (r - torch.round(r)).abs().mean()


def acos_penalty(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Absolute-cosine regularizer ``sum(1 - |cos(pi * w / scale)|)``: zero exactly on the grid,
    largest half-way between grid points; its gradient pulls each weight to its nearest grid point.

    The scale is treated as a constant (detached), so the pull acts on the weights, not on the grid.
    """
    return (1.0 - torch.cos(math.pi * w / channel_scale(w, bits)).abs()).sum()
