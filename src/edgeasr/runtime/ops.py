"""Integer kernels of the runtime: LUT activations, int8 x int8 -> int32 matmuls with their work
counters, the integer LSTM layer; fixed-point requantization and the integer LayerNorm are
:mod:`edgeasr.quantspec.fixedpoint`'s (the fake-quantized training graph computes them too).

Every accumulator is requantized to the next tensor's grid with a fixed-point multiplier
``m * 2^-shift`` (``m`` 31 bits) and half-up rounding (``(acc * m + 2^(shift-1)) >> shift``).
Int32 accumulations run as float64 matrix products over integer-valued tensors: every partial sum
is below 2^53 (int8 x int8 over at most a few thousand terms), so the result is the exact integer.
The formats (Q3.12 gates, Q0.15 gate outputs, the joiner's 1/127 tanh) are :mod:`edgeasr.quantspec`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from edgeasr.quantspec import GATE_SCALE, INT16, UNIT_SCALE, qmax
from edgeasr.quantspec.fixedpoint import IntLayerNorm, div_round, isqrt, multiplier, requant, rshift_round

__all__ = ["IntLayerNorm", "IntLinear", "IntLstm", "LayerStats", "QWeight", "add_requant", "div_round", "isqrt",
           "lookup", "multiplier", "requant", "rshift_round"]


def _imatmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exact integer ``x @ w.T`` (int64) through float64 BLAS: all sums stay below 2^53."""
    return (x.to(torch.float64) @ w.T).to(torch.int64)


@dataclass
class LayerStats:
    """Per-layer work, for the emulator: MACs a dense engine runs, MACs left after skipping zero
    weights, and how many times the layer's weights were read."""

    dense_macs: int = 0
    executed_macs: int = 0
    calls: int = 0


@dataclass
class QWeight:
    """Integer weight levels ``(C_out, ...)`` and their per-output-channel scales ``(C_out,)``."""

    levels: torch.Tensor
    scale: torch.Tensor

    @property
    def nnz_per_row(self) -> torch.Tensor:
        return (self.levels.reshape(self.levels.size(0), -1) != 0).sum(1)

    def safe_scale(self) -> torch.Tensor:
        """float64 scales with fully pruned channels at 1.0: their levels are all 0, and the
        quantizer's 1e-12 floor would otherwise blow up bias levels and multipliers."""
        dead = self.nnz_per_row == 0
        return torch.where(dead, torch.ones_like(self.scale, dtype=torch.float64), self.scale.to(torch.float64))


class IntLinear:
    """int8 x int8 -> int32 (+ int32 bias) -> [ReLU] -> requantized to ``s_out`` at ``out_bits``.

    ``x``: (..., in) int64 levels at scale ``s_in``; returns (..., out) levels. With ``s_out=None``
    the int32 accumulator is returned (the caller requantizes, e.g. LSTM gates)."""

    def __init__(self, name: str, w: QWeight, bias: torch.Tensor | None, s_in: float, s_out: float | None,
                 out_bits: int = 8, relu: bool = False, stats: dict | None = None):
        self.name = name
        self.w = w.levels.reshape(w.levels.size(0), -1).to(torch.float64)
        self.acc_scale = s_in * w.safe_scale()  # (out,)
        self.bias = (torch.zeros(self.w.size(0), dtype=torch.int64) if bias is None
                     else torch.round(bias.to(torch.float64) / self.acc_scale).to(torch.int64))
        self.relu, self.out_bits = relu, out_bits
        self.m, self.shift = multiplier(self.acc_scale / s_out) if s_out is not None else (None, None)
        self.nnz = int((self.w != 0).sum())
        self.stats = stats.setdefault(name, LayerStats()) if stats is not None else LayerStats()

    def acc(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(1, x.size(-1))
        self.stats.dense_macs += rows * self.w.numel()
        self.stats.executed_macs += rows * self.nnz
        self.stats.calls += 1
        a = _imatmul(x, self.w) + self.bias
        return a.clamp(min=0) if self.relu else a

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return requant(self.acc(x), self.m, self.shift, self.out_bits)


def _lut(fn, in_scale: float, out_scale: float, lo: int, hi: int) -> torch.Tensor:
    """Table over every int16 input level: ``clamp(round_half_up(fn(k in_scale) / out_scale), lo, hi)``."""
    k = torch.arange(-32768, 32768, dtype=torch.float64)
    return torch.clamp(torch.floor(fn(k * in_scale) / out_scale + 0.5), lo, hi).to(torch.int64)


def lookup(table: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return table[x + 32768]


SIGMOID = _lut(torch.sigmoid, GATE_SCALE, UNIT_SCALE, 0, INT16)
TANH_GATE = _lut(torch.tanh, GATE_SCALE, UNIT_SCALE, -INT16, INT16)


class IntLstm:
    """One LSTM layer in TFLite's integer-LSTM formats. ``x``: (T, H) int8 levels at ``s_x``;
    state ``(h (H,) int8 at s_h, c (H,) int16 at s_c = 2^-k)``."""

    def __init__(self, name: str, w_ih: QWeight, w_hh: QWeight, bias: torch.Tensor, s_x: float, s_h: float,
                 s_c: float, stats: dict):
        self.ih = IntLinear(f"{name}.weight_ih", w_ih, bias, s_x, GATE_SCALE, 16, stats=stats)
        self.hh = IntLinear(f"{name}.weight_hh", w_hh, None, s_h, GATE_SCALE, 16, stats=stats)
        k = -math.log2(s_c)
        if k != round(k) or not 1 <= 30 - k <= 30:
            raise ValueError(f"{name}: cell-state scale {s_c} is not a usable power of two")
        self.c_shift = 30 - int(round(k))
        self.hidden = w_hh.levels.size(1)
        self.tanh_c = _lut(torch.tanh, s_c, UNIT_SCALE, -INT16, INT16)
        self.h_m, self.h_shift = multiplier(2.0**-30 / s_h)

    def __call__(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        gx = self.ih(x)  # (T, 4H) Q3.12, all frames of the chunk in one matmul
        outs = []
        hid = self.hidden
        for t in range(x.size(0)):
            g = (gx[t] + self.hh(h)).clamp(-INT16, INT16)
            i, f = lookup(SIGMOID, g[:hid]), lookup(SIGMOID, g[hid:2 * hid])
            gg, o = lookup(TANH_GATE, g[2 * hid:3 * hid]), lookup(SIGMOID, g[3 * hid:])
            c = (rshift_round(f * c, 15) + rshift_round(i * gg, self.c_shift)).clamp(-INT16, INT16)
            h = requant(o * lookup(self.tanh_c, c), self.h_m, self.h_shift, 8)
            outs.append(h)
        return torch.stack(outs) if outs else x.new_zeros(0, hid), h, c


def add_requant(a: torch.Tensor, s_a: float, b: torch.Tensor, s_b: float, s_out: float, bits: int) -> torch.Tensor:
    """Residual add: both terms rescaled to ``s_out`` (fixed-point multipliers), summed, saturated."""
    ma, sa = multiplier(s_a / s_out)
    mb, sb = multiplier(s_b / s_out)
    big = 62  # rescale without saturating; only the sum saturates
    return (requant(a, ma, sa, big) + requant(b, mb, sb, big)).clamp(-qmax(bits), qmax(bits))
