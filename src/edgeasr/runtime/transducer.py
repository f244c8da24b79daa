"""The integer runtime: the compressed student run the way an int8 NPU runs it (``docs/integer_runtime.md``).

Every tensor the NPU stores is an integer: int8 weights (per-output-channel scales), int8
activations, an int16 residual stream, int32 biases and accumulators (kernels:
:mod:`edgeasr.runtime.ops`). Sigmoid and tanh are lookup tables over int16 inputs; the LSTM runs
at Q3.12 gate pre-activations, Q0.15 gate outputs and an int16 cell state at a power-of-two scale;
LayerNorm is computed in integers. Only the host-side front end (fbank + per-frame input
LayerNorm, then rounding to int8) and the final dequantization of the joiner's int32 logits use floats.

The requantization points and their scales come from the model's :class:`~edgeasr.quantspec.CompressionSpec`
(the same points :mod:`edgeasr.compression.actquant` fake-quantizes in training), so this runtime
and the fake-quantized PyTorch model compute the same integers up to rounding ties the float
model resolves differently (measured and bounded in ``tests/test_intruntime.py``).

Decoding reuses :mod:`edgeasr.decoding` unchanged: :class:`IntTransducer` exposes the same
``encode`` / ``predictor`` / ``joiner`` interface as the PyTorch model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from edgeasr.models.residual import residual_lstm
from edgeasr.models.subsampling import min_input_frames
from edgeasr.quantspec import TANH_OUT_SCALE, ActivationSpec, CompressionSpec
from edgeasr.quantspec.levels import state_levels

from .ops import IntLayerNorm, IntLinear, IntLstm, LayerStats, QWeight, _lut, add_requant, lookup, multiplier, requant


@dataclass
class EncoderState:
    """Streaming state: int8 input frames not consumed yet (the convolutions' context), and per
    LSTM layer ``h`` (int8) and ``c`` (int16)."""

    frames: torch.Tensor
    h: list[torch.Tensor]
    c: list[torch.Tensor]
    emitted: int = 0


class IntEncoder:
    """The LSTM student's encoder in integers. ``infer(frames int8 (T, 80), state) -> (out (T', J)
    int8 levels, state)``; any chunking gives the same output as one call on the whole utterance."""

    def __init__(self, cfg: Mapping[str, Any], weights: Mapping[str, QWeight], floats: Mapping[str, torch.Tensor],
                 act: ActivationSpec, stats: dict):
        s = act.scales("encoder")
        rb = act.points["encoder.res0"].bits
        self.s, self.res_bits = s, rb
        self.k = int(cfg.get("frame_stack", 1))
        self.min_input_frames = min_input_frames(self.k)  # the same 3x3 stride-2 convolutions as LstmEncoder
        self.layers = int(cfg["num_layers"])
        self.hidden = int(cfg["hidden"])
        self.input_norm = str(cfg.get("input_norm", "layer"))
        self.input_dim = int(cfg.get("input_dim", 80))
        if self.k < 1 or self.layers < 1 or self.input_norm not in ("layer", "none"):
            raise ValueError(f"the integer runtime needs frame_stack >= 1, num_layers >= 1 and input_norm 'layer' or "
                             f"'none', got {self.k}, {self.layers}, {self.input_norm!r}")
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
        # The config must describe these tensors: a mismatch would only fail (or mislead) mid-decode.
        f2 = ((self.input_dim - 3) // 2 + 1 - 3) // 2 + 1
        if self.input_dim < 7 or self.channels * f2 != self.sub.w.size(1):
            raise ValueError(f"input_dim {self.input_dim} does not fit the subsampling weights "
                             f"({self.sub.w.size(1)} inputs from {self.channels} channels)")
        if self.stack is not None and self.stack.w.size(1) != self.k * self.sub.w.size(0):
            raise ValueError(f"frame_stack {self.k} does not fit the stacking weights ({self.stack.w.size(1)} inputs)")
        if any(lstm.hidden != self.hidden for lstm in self.lstms):
            raise ValueError(f"hidden {self.hidden} differs from the LSTM weights' "
                             f"{[lstm.hidden for lstm in self.lstms]}")

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
        return EncoderState(torch.zeros(0, self.input_dim, dtype=torch.int64), z8, [z.clone() for z in z8])

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
        r, hc = residual_lstm(r, self._norm, self._cell, self._add, list(zip(state.h, state.c)))
        out = self.output(self.final_norm(r))
        rest = buf[4 * self.k * n_out:]
        return out, EncoderState(rest, [h for h, _ in hc], [c for _, c in hc], state.emitted + n_out)

    # the residual LSTM block in integers (edgeasr.models.residual)
    def _norm(self, i: int, r: torch.Tensor) -> torch.Tensor:
        return self.norms[i](r)

    def _cell(self, i: int, x: torch.Tensor, hc: tuple[torch.Tensor, torch.Tensor]):
        h_seq, h, c = self.lstms[i](x, *hc)
        return h_seq, (h, c)

    def _add(self, i: int, r: torch.Tensor, h_seq: torch.Tensor) -> torch.Tensor:
        return add_requant(r, self.s[f"res{i}"], h_seq, self.s[f"l{i}_h"], self.s[f"res{i + 1}"], self.res_bits)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return self.infer(frames, self.init_state())[0]


class IntPredictor:
    """Stateless predictor in integers, with the decoding interface of :mod:`edgeasr.models.predictor`
    (outputs are int8 levels at ``s["out"]``; state is the token context)."""

    def __init__(self, cfg: Mapping[str, Any], weights, floats, act: ActivationSpec, stats: dict, blank_id: int = 0):
        s = act.scales("predictor")
        self.s, self.blank_id = s, blank_id
        self.context_size = int(cfg.get("context_size", 2))
        if self.context_size < 1:
            raise ValueError(f"context_size must be >= 1, got {self.context_size}")
        emb = weights["predictor.embedding.weight"]
        self.emb = emb.levels
        self.emb_m, self.emb_shift = multiplier(emb.safe_scale() / s["emb"])
        self.conv = None
        if self.context_size > 1:
            w = weights["predictor.conv.weight"]  # (E, 1, K) depthwise
            self.conv_w = w.levels[:, 0, :]  # (E, K)
            if self.conv_w.size(1) != self.context_size:
                raise ValueError(f"context_size {self.context_size} differs from the predictor kernel's "
                                 f"{self.conv_w.size(1)}")
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

    def __init__(self, weights, floats, act: ActivationSpec, s_enc: float, s_pred: float, stats: dict):
        point = act.points["joiner.sum"]
        self.s_sum, self.bits = point.scale, point.bits
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

    Build it with :meth:`from_model` (a compressed PyTorch student + its spec) or from an exported
    file (:func:`edgeasr.runtime.load_student`): integer weight levels, float biases / norm affines,
    and the spec, whose activation points it needs."""

    max_sym_per_frame = 1  # greedy tokens per encoder frame; an exported file's header sets its own

    def __init__(self, model_cfg: Mapping[str, Any], weights: Mapping[str, QWeight], floats: Mapping[str, torch.Tensor],
                 spec: CompressionSpec):
        enc_cfg, pred_cfg = dict(model_cfg["encoder"]), dict(model_cfg["predictor"])
        if enc_cfg.get("type") != "lstm" or pred_cfg.get("type") != "stateless":
            raise ValueError("the integer runtime runs the LSTM-encoder + stateless-predictor student")
        act = spec.require_activations("the integer runtime")
        self.model_cfg, self.spec = model_cfg, spec
        self.blank_id = int(model_cfg.get("blank_id", 0))
        self.stats: dict[str, LayerStats] = {}
        self.encoder = IntEncoder(enc_cfg, weights, floats, act, self.stats)
        self.predictor = IntPredictor(pred_cfg, weights, floats, act, self.stats, self.blank_id)
        self.joiner = IntJoiner(weights, floats, act, self.encoder.s["out"], self.predictor.s["out"], self.stats)
        self.subsampling_factor = 4 * self.encoder.k
        if not 0 <= self.blank_id < self.joiner.vocab_size:
            raise ValueError(f"blank_id {self.blank_id} is outside the {self.joiner.vocab_size}-token vocabulary")

    @classmethod
    def from_model(cls, model: torch.nn.Module, spec: CompressionSpec, model_cfg: Mapping[str, Any]) -> IntTransducer:
        """``model``: a plain (materialized, no activation wrappers: ``compression.float_view``)
        compressed student; ``spec``: its compression spec."""
        sd = {k: v.detach() for k, v in model.state_dict().items()}
        weights = {k: QWeight(q.to(torch.int64), s.to(torch.float32)) for k, (q, s) in state_levels(sd, spec.bits).items()}
        floats = {k: v for k, v in sd.items() if v.dim() < 2}
        return cls(model_cfg, weights, floats, spec)

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
