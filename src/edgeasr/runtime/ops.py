"""Integer kernels of the runtime: fixed-point requantization, exact integer LayerNorm, LUT
activations, int8 x int8 -> int32 matmuls with their work counters, the integer LSTM layer.

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

MULT_BITS = 31  # fixed-point multipliers are normalized to [2^30, 2^31), as TFLite's; accumulators stay < 2^32


def multiplier(real: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Real positive multipliers -> ``(m, shift)`` int64 with ``real ~= m * 2^-shift``, ``m`` in [2^30, 2^31)."""
    r = torch.as_tensor(real, dtype=torch.float64).reshape(-1)
    if not bool((r > 0).all()):
        raise ValueError("requantization multipliers must be positive")
    e = torch.floor(torch.log2(r))
    m = torch.round(r * torch.pow(2.0, (MULT_BITS - 1) - e)).to(torch.int64)
    over = m >= 2**MULT_BITS
    m = torch.where(over, m // 2, m)
    e = e + over.to(e.dtype)
    shift = ((MULT_BITS - 1) - e).to(torch.int64)
    if bool((shift < 1).any()):
        raise ValueError(f"requantization multiplier too large (> 2^30): {r.max().item()}")
    # below 2^-32 a multiplier only ever rounds to 0: keep shift at 62 and let m shrink
    m = torch.where(shift > 62, m >> (shift - 62).clamp(min=0), m)
    return m, shift.clamp(max=62)


def requant(acc: torch.Tensor, m: torch.Tensor, shift: torch.Tensor, bits: int) -> torch.Tensor:
    """``round_half_up(acc * m / 2^shift)`` saturated to ``bits`` (int64 in, int64 out). ``m``/``shift``
    broadcast over the last dimension (per channel) or are scalars."""
    q = (acc * m + (1 << (shift - 1))) >> shift
    return q.clamp(-qmax(bits), qmax(bits))


def rshift_round(x: torch.Tensor, s: int) -> torch.Tensor:
    return (x + (1 << (s - 1))) >> s


def isqrt(v: torch.Tensor) -> torch.Tensor:
    """Exact floor(sqrt(v)) of int64 ``v >= 0`` (< 2^62): float64 estimate, then integer correction."""
    x = torch.sqrt(v.to(torch.float64)).to(torch.int64)
    for _ in range(2):
        x = torch.where(x * x > v, x - 1, x)
        x = torch.where((x + 1) * (x + 1) <= v, x + 1, x)
    return x


def div_round(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """Integer division rounded half away from zero (``den > 0``)."""
    q = (num.abs() + den // 2) // den
    return torch.where(num < 0, -q, q)


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


class IntLayerNorm:
    """LayerNorm over the last dim of integer ``x`` (scale ``s_in``) -> levels at ``s_out``.

    ``d = n x - sum(x)``; ``norm = d sqrt(n) / sqrt(sum d^2 + eps')`` in Q.12 fixed point with an
    exact integer square root; ``gamma`` int16 (per-tensor scale), ``beta`` an int64 bias at the
    accumulator scale; then the usual requantization."""

    F = 12  # Q.12 norm x int16 gamma stays below 2^32, so the 31-bit multiplier cannot overflow int64

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, eps: float, s_in: float, s_out: float, out_bits: int = 8):
        n = weight.numel()
        self.n = n
        w = weight.to(torch.float64)
        self.s_g = float(w.abs().max().clamp(min=1e-12)) / INT16
        self.g = torch.round(w / self.s_g).to(torch.int64)
        acc_scale = self.s_g * 2.0**-self.F
        self.b = torch.round(bias.to(torch.float64) / acc_scale).to(torch.int64)
        # >= 1: with a coarse input scale eps rounds to 0, and a constant row would divide by zero
        self.eps = max(1, int(round(eps * n**3 / s_in**2)))
        self.rn = int(isqrt(torch.tensor(n << (2 * self.F))))  # sqrt(n) in Q.F
        self.m, self.shift = multiplier(acc_scale / s_out)
        self.out_bits = out_bits

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = x.sum(-1, keepdim=True)
        d = self.n * x - s
        ss = (d * d).sum(-1, keepdim=True) + self.eps
        # Normalize ss to <= 40 bits (an even shift e) so isqrt(ss << 20) fits int64.
        e = (torch.clamp(torch.ceil(torch.log2(ss.to(torch.float64) + 1)) - 40, min=0).to(torch.int64) + 1) // 2 * 2
        root = isqrt((ss >> e) << 20)  # ~ sqrt(ss) * 2^(10 - e/2)
        norm = div_round((d * self.rn) << 10, root << (e // 2))  # d sqrt(n) / sqrt(ss) in Q.F
        return requant(norm * self.g + self.b, self.m, self.shift, self.out_bits)


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
