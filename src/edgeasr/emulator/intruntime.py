"""Integer runtime: the compressed student run the way an int8 NPU runs it (spec: ``docs/integer_runtime.md``).

Every tensor the NPU stores is an integer: int8 weights (per-output-channel scales), int8
activations, an int16 residual stream, int32 biases and accumulators. Each layer's int32
accumulator is requantized to the next tensor's grid with a fixed-point multiplier ``m * 2^-shift``
(``m`` 31 bits) and half-up rounding (``(acc * m + 2^(shift-1)) >> shift``). Sigmoid and tanh are
lookup tables over int16 inputs; the LSTM runs at Q3.12 gate pre-activations, Q0.15 gate outputs
and an int16 cell state at a power-of-two scale; LayerNorm is computed in integers (integer square
root, fixed-point reciprocal). Only the host-side front end (fbank + per-frame input LayerNorm,
then rounding to int8) and the final dequantization of the joiner's int32 logits use floats.

The requantization points are exactly those of :mod:`edgeasr.compression.actquant`, so this
runtime and the fake-quantized PyTorch model compute the same integers up to rounding ties the
float model resolves differently (measured and bounded in ``tests/test_intruntime.py``).

Int32 accumulations run as float64 matrix products over integer-valued tensors: every partial sum
is below 2^53 (int8 x int8 over at most a few thousand terms), so the result is the exact integer.

Decoding reuses :mod:`edgeasr.decoding` unchanged: :class:`IntTransducer` exposes the same
``encode`` / ``predictor`` / ``joiner`` interface as the PyTorch model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from edgeasr.compression.actquant import GATE_SCALE, INT16, TANH_OUT_SCALE, UNIT_SCALE

MULT_BITS = 31  # fixed-point multipliers are normalized to [2^30, 2^31), as TFLite's; accumulators stay < 2^32


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


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
        self.eps = int(round(eps * n**3 / s_in**2))
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


@dataclass
class EncoderState:
    """Streaming state: int8 input frames not consumed yet (the convolutions' context), and per
    LSTM layer ``h`` (int8) and ``c`` (int16)."""

    frames: torch.Tensor
    h: list[torch.Tensor]
    c: list[torch.Tensor]
    emitted: int = 0


def quantized_weights(state_dict: Mapping[str, torch.Tensor], bits: int) -> dict[str, QWeight]:
    """Integer levels + per-channel scales of every weight matrix (ndim >= 2) outside the CTC head."""
    from edgeasr.compression.quant import quantize

    out = {}
    for name, w in state_dict.items():
        if w.dim() >= 2 and not name.startswith("ctc_head."):
            q, s = quantize(w.float(), bits)
            out[name] = QWeight(q.to(torch.int64), s.to(torch.float32))
    return out


class IntEncoder:
    """The LSTM student's encoder in integers. ``infer(frames int8 (T, 80), state) -> (out (T', J)
    int8 levels, state)``; any chunking gives the same output as one call on the whole utterance."""

    def __init__(self, cfg: Mapping[str, Any], weights: Mapping[str, QWeight], floats: Mapping[str, torch.Tensor],
                 act: Mapping[str, Any], stats: dict):
        pts = act["points"]
        s = {n.split(".", 1)[1]: float(p["scale"]) for n, p in pts.items() if n.startswith("encoder.")}
        rb = int(pts["encoder.res0"]["bits"])
        self.s, self.res_bits = s, rb
        self.k = int(cfg.get("frame_stack", 1))
        self.layers = int(cfg["num_layers"])
        self.hidden = int(cfg["hidden"])
        self.input_norm = str(cfg.get("input_norm", "layer"))
        self.floats = floats
        e = "encoder."
        self.conv1 = IntLinear("encoder.conv1", weights[e + "subsampling.conv.0.weight"], floats[e + "subsampling.conv.0.bias"],
                               s["in"], s["conv1"], relu=True, stats=stats)
        self.conv2 = IntLinear("encoder.conv2", weights[e + "subsampling.conv.2.weight"], floats[e + "subsampling.conv.2.bias"],
                               s["conv1"], s["conv2"], relu=True, stats=stats)
        self.channels = weights[e + "subsampling.conv.0.weight"].levels.size(0)
        first_out = "sub" if self.k > 1 else "res0"
        self.sub = IntLinear("encoder.subsampling.out", weights[e + "subsampling.out.weight"], floats[e + "subsampling.out.bias"],
                             s["conv2"], s[first_out], 8 if self.k > 1 else rb, stats=stats)
        self.stack = (IntLinear("encoder.stack", weights[e + "stack.weight"], floats[e + "stack.bias"], s["sub"], s["res0"], rb,
                                stats=stats) if self.k > 1 else None)
        self.norms, self.lstms = [], []
        for i in range(self.layers):
            self.norms.append(IntLayerNorm(floats[f"{e}norms.{i}.weight"], floats[f"{e}norms.{i}.bias"], 1e-5,
                                           s[f"res{i}"], s[f"l{i}_x"]))
            self.lstms.append(IntLstm(f"encoder.lstms.{i}", weights[f"{e}lstms.{i}.weight_ih_l0"],
                                      weights[f"{e}lstms.{i}.weight_hh_l0"],
                                      floats[f"{e}lstms.{i}.bias_ih_l0"] + floats[f"{e}lstms.{i}.bias_hh_l0"],
                                      s[f"l{i}_x"], s[f"l{i}_h"], s[f"l{i}_c"], stats))
        self.final_norm = IntLayerNorm(floats[e + "final_norm.weight"], floats[e + "final_norm.bias"], 1e-5,
                                       s[f"res{self.layers}"], s["final"])
        self.output = IntLinear("encoder.output", weights[e + "output.weight"], floats[e + "output.bias"], s["final"], s["out"],
                                stats=stats)
        self.out_dim = weights[e + "output.weight"].levels.size(0)

    # ---- host front end -----------------------------------------------------------------------
    def quantize_input(self, feats: torch.Tensor) -> torch.Tensor:
        """Host side: fbank (T, 80) float -> per-frame input LayerNorm (float32) -> int8 levels at ``s["in"]``."""
        x = feats.float()
        if self.input_norm == "layer":
            x = torch.nn.functional.layer_norm(x, (x.size(-1),), self.floats["encoder.input_norm.norm.weight"].float(),
                                               self.floats["encoder.input_norm.norm.bias"].float())
        elif self.input_norm != "none":
            raise ValueError(f"the integer runtime supports input_norm 'layer' or 'none', not {self.input_norm!r}")
        s = self.s["in"]
        return torch.clamp(torch.floor(x / s + 0.5), -127, 127).to(torch.int64)

    # ---- NPU graph ------------------------------------------------------------------------------
    def init_state(self) -> EncoderState:
        z8 = [torch.zeros(self.hidden, dtype=torch.int64) for _ in range(self.layers)]
        return EncoderState(torch.zeros(0, 80, dtype=torch.int64), z8, [z.clone() for z in z8])

    @staticmethod
    def _conv(x: torch.Tensor, layer: IntLinear) -> torch.Tensor:
        """3x3 stride-2 unpadded conv as im2col: x (C_in, T, F) -> (C_out, T', F')."""
        cols = x.unfold(1, 3, 2).unfold(2, 3, 2)  # (C_in, T', F', 3, 3)
        c, t, f = cols.shape[:3]
        cols = cols.permute(1, 2, 0, 3, 4).reshape(t, f, c * 9)
        return layer(cols).permute(2, 0, 1)

    def infer(self, frames: torch.Tensor, state: EncoderState) -> tuple[torch.Tensor, EncoderState]:
        buf = torch.cat([state.frames, frames])
        t_sub = ((buf.size(0) - 3) // 2 + 1 - 3) // 2 + 1 if buf.size(0) >= 7 else 0
        n_out = max(0, t_sub) // self.k
        if n_out == 0:
            return torch.zeros(0, self.out_dim, dtype=torch.int64), EncoderState(buf, state.h, state.c, state.emitted)
        used = 4 * self.k * n_out + 3  # input frames the n_out outputs need
        y = self._conv(self._conv(buf[:used].unsqueeze(0), self.conv1), self.conv2)  # (C, T2, F2)
        c, t2, f2 = y.shape
        y = self.sub(y.permute(1, 0, 2).reshape(t2, c * f2))[: n_out * self.k]
        r = self.stack(y.reshape(n_out, self.k * y.size(1))) if self.stack is not None else y
        hs, cs = list(state.h), list(state.c)
        for i in range(self.layers):
            h_seq, hs[i], cs[i] = self.lstms[i](self.norms[i](r), hs[i], cs[i])
            r = add_requant(r, self.s[f"res{i}"], h_seq, self.s[f"l{i}_h"], self.s[f"res{i + 1}"], self.res_bits)
        out = self.output(self.final_norm(r))
        rest = buf[4 * self.k * n_out:]
        return out, EncoderState(rest, hs, cs, state.emitted + n_out)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return self.infer(frames, self.init_state())[0]


class IntPredictor:
    """Stateless predictor in integers, with the decoding interface of :mod:`edgeasr.models.predictor`
    (outputs are int8 levels at ``s["out"]``; state is the token context)."""

    def __init__(self, cfg: Mapping[str, Any], weights, floats, act, stats: dict, blank_id: int = 0):
        pts = act["points"]
        s = {n.split(".", 1)[1]: float(p["scale"]) for n, p in pts.items() if n.startswith("predictor.")}
        self.s, self.blank_id = s, blank_id
        self.context_size = int(cfg.get("context_size", 2))
        emb = weights["predictor.embedding.weight"]
        self.emb = emb.levels
        self.emb_m, self.emb_shift = multiplier(emb.safe_scale() / s["emb"])
        self.conv = None
        if self.context_size > 1:
            w = weights["predictor.conv.weight"]  # (E, 1, K) depthwise
            self.conv_w = w.levels[:, 0, :]  # (E, K)
            self.conv_m, self.conv_shift = multiplier(s["emb"] * w.safe_scale() / s["conv"])
            self.conv_nnz = int((self.conv_w != 0).sum())
            self.conv_stats = stats.setdefault("predictor.conv", LayerStats())
        else:
            self.relu_m, self.relu_shift = multiplier(s["emb"] / s["conv"])
        self.output = IntLinear("predictor.output", weights["predictor.output.weight"], floats["predictor.output.bias"],
                                s["conv"], s["out"], stats=stats)

    def _step(self, ctx: torch.Tensor) -> torch.Tensor:
        """ctx: (N, K) token ids (-1 = none) -> (N, J) int8 levels."""
        rows = self.emb[ctx.clamp(min=0)]  # (N, K, E)
        tok = ctx.clamp(min=0)
        e = requant(rows, self.emb_m[tok].unsqueeze(-1), self.emb_shift[tok].unsqueeze(-1), 8)
        e = e * (ctx >= 0).unsqueeze(-1)
        if self.context_size > 1:
            self.conv_stats.dense_macs += ctx.size(0) * self.conv_w.numel()
            self.conv_stats.executed_macs += ctx.size(0) * self.conv_nnz
            self.conv_stats.calls += 1
            acc = (e * self.conv_w.T.unsqueeze(0)).sum(1).clamp(min=0)  # depthwise over the context
            z = requant(acc, self.conv_m, self.conv_shift, 8)
        else:
            z = requant(e[:, -1].clamp(min=0), self.relu_m, self.relu_shift, 8)
        return self.output(z)

    def start_context(self, batch_size: int) -> torch.Tensor:
        ctx = torch.full((batch_size, self.context_size), -1, dtype=torch.int64)
        ctx[:, -1] = self.blank_id
        return ctx

    def init_decoder(self, batch_size: int, device=None):
        ctx = self.start_context(batch_size)
        return self._step(ctx), ctx

    def step_tokens(self, tokens: torch.Tensor, state: torch.Tensor):
        ctx = torch.cat([state[:, 1:], tokens.reshape(-1, 1).to(torch.int64)], dim=1)
        return self._step(ctx), ctx

    @staticmethod
    def select_state(state, index):
        return state[index]

    @staticmethod
    def scatter_state(state, index, sub):
        out = state.clone()
        out[index] = sub
        return out


class IntJoiner:
    """``sum`` = enc + pred (int16), tanh table to int8 at 1/127, output Linear to int32; the host
    dequantizes the logits (float64, per vocabulary row)."""

    def __init__(self, weights, floats, act, s_enc: float, s_pred: float, stats: dict):
        pts = act["points"]
        self.s_sum, self.bits = float(pts["joiner.sum"]["scale"]), int(pts["joiner.sum"]["bits"])
        self.s_enc, self.s_pred = s_enc, s_pred
        self.tanh = _lut(torch.tanh, self.s_sum, TANH_OUT_SCALE, -127, 127) if self.bits == 16 else None
        if self.tanh is None:
            raise ValueError("the integer runtime's joiner needs a 16-bit sum (residual_bits 16)")
        self.output = IntLinear("joiner.output", weights["joiner.output.weight"], floats["joiner.output.bias"],
                                TANH_OUT_SCALE, None, stats=stats)
        self.vocab_size = self.output.w.size(0)

    def forward_frame(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """enc (N, J), pred (N, J) int8 levels -> float64 logits (N, V)."""
        s = add_requant(enc, self.s_enc, pred, self.s_pred, self.s_sum, self.bits)
        return self.output.acc(lookup(self.tanh, s)).to(torch.float64) * self.output.acc_scale


class IntTransducer:
    """The exported student as integers; ``encode``/``predictor``/``joiner``/``blank_id`` make it a
    drop-in model for :func:`edgeasr.decoding.greedy_search` and ``modified_beam_search``.

    Build it with :meth:`from_model` (a compressed PyTorch student + its activation spec) or from
    an exported file's tensors (same arguments)."""

    def __init__(self, model_cfg: Mapping[str, Any], weights: Mapping[str, QWeight], floats: Mapping[str, torch.Tensor],
                 act: Mapping[str, Any]):
        enc_cfg, pred_cfg = dict(model_cfg["encoder"]), dict(model_cfg["predictor"])
        if enc_cfg.get("type") != "lstm" or pred_cfg.get("type") != "stateless":
            raise ValueError("the integer runtime runs the LSTM-encoder + stateless-predictor student")
        self.model_cfg = model_cfg
        self.blank_id = int(model_cfg.get("blank_id", 0))
        self.stats: dict[str, LayerStats] = {}
        self.encoder = IntEncoder(enc_cfg, weights, floats, act, self.stats)
        self.predictor = IntPredictor(pred_cfg, weights, floats, act, self.stats, self.blank_id)
        self.joiner = IntJoiner(weights, floats, act, self.encoder.s["out"], self.predictor.s["out"], self.stats)
        self.subsampling_factor = 4 * self.encoder.k

    @classmethod
    def from_model(cls, model, act: Mapping[str, Any], bits: int, model_cfg: Mapping[str, Any]) -> "IntTransducer":
        """``model``: a plain (unwrapped, materialized) compressed student; ``act``: its
        ``meta["compression"]["activation_quant"]``."""
        from edgeasr.compression.actquant import float_view

        with float_view(model) as plain:
            sd = {k: v.detach() for k, v in plain.state_dict().items()}
        floats = {k: v for k, v in sd.items() if v.dim() < 2}
        return cls(model_cfg, quantized_weights(sd, bits), floats, act)

    # ---- the model interface the decoders and evaluation use ----------------------------------
    def eval(self):
        return self

    def encode(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, T, 80) features, x_lens: (N,) -> int8 encoder levels (N, T', J), (N,)."""
        outs = [self.encoder(self.encoder.quantize_input(x[i, : int(x_lens[i])])) for i in range(x.size(0))]
        lens = torch.tensor([o.size(0) for o in outs], dtype=torch.int64)
        out = torch.zeros(x.size(0), int(lens.max()) if len(outs) else 0, self.encoder.out_dim, dtype=torch.int64)
        for i, o in enumerate(outs):
            out[i, : o.size(0)] = o
        return out, lens

    def reset_stats(self) -> None:
        for st in self.stats.values():
            st.dense_macs = st.executed_macs = st.calls = 0
