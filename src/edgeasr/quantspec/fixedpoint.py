"""Fixed-point arithmetic of the integer formats, shared by the integer runtime (:mod:`edgeasr.runtime`)
and the fake-quantized training graph (:mod:`edgeasr.compression.actquant`), so the two compute
the same integers: requantization multipliers and rounding, the exact integer square root, and
the integer LayerNorm (its Q.12 normalized value and int16 gamma are part of the format).
"""

from __future__ import annotations

import torch

from . import INT16, qmax

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
