"""Symmetric per-output-channel weight quantization, fake-quantization with a straight-through
estimator, and the absolute-cosine regularizer (Nguyen et al., Interspeech 2020).

The grid for ``bits`` b is ``k * scale`` with integer ``k`` in ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` and
``scale = max |w_row| / (2^(b-1) - 1)`` per output channel (row 0 of the weight; for an LSTM's
stacked gate matrix that is one scale per gate unit). The scale is recomputed from the current
weights at every step, so the grid follows training.
"""

from __future__ import annotations

import math

import torch


def qmax(bits: int) -> int:
    if not 2 <= bits <= 16:
        raise ValueError(f"weight bits must be in 2..16, got {bits}")
    return 2 ** (bits - 1) - 1


def channel_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scale, shaped to broadcast against ``w`` (``(C_out, 1, ...)``)."""
    flat = w.detach().reshape(w.size(0), -1).abs().amax(dim=1)
    scale = (flat / qmax(bits)).clamp(min=1e-12)
    return scale.reshape(-1, *([1] * (w.dim() - 1)))


def quantize(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ``(q, scale)``: integer levels (int32; exact zeros stay 0) and per-channel scales ``(C_out,)``."""
    scale = channel_scale(w, bits)
    q = torch.clamp(torch.round(w / scale), -qmax(bits), qmax(bits))
    return q.to(torch.int32), scale.reshape(-1)


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
