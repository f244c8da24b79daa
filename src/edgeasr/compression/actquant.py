"""Activation fake-quantization of the streaming LSTM student, placed exactly where the integer
runtime (:mod:`edgeasr.runtime`, spec in ``docs/integer_runtime.md``) requantizes.

The wrappers below replace ``model.encoder``, ``model.predictor`` and ``model.joiner`` with
modules that run the same float weights but round every tensor the NPU stores to its integer grid:

* matmul inputs and outputs: int8, symmetric, one scale per tensor (``amax / 127``);
* the encoder's residual stream and the joiner's sum: int16 (``residual_bits``);
* LSTM internals at fixed fixed-point formats, as int8 LSTM kernels do (TFLite's integer LSTM):
  gate pre-activations Q3.12 (int16, 2^-12), sigmoid/tanh outputs Q0.15 (2^-15), the cell state
  int16 at a power-of-two scale from calibration, ``h`` int8;
* the joiner's tanh output at 1/127 (int8); logits leave the NPU as int32 and are dequantized;
* biases on their int32 accumulator's grid (input scale x the weight row's scale) and the
  LayerNorms computed as the runtime's integer LayerNorm (:mod:`edgeasr.quantspec.fixedpoint`),
  both with the float gradient (straight through), once the weight grid is known (``weight_bits``).

In float64 (``model.double()``: the wrappers follow their weights' dtype) the fake-quantized
student computes the runtime's integers exactly; in float32 its own rounding flips a few levels.

Rounding is half-up (``floor(x / s + 0.5)``), the integer runtime's arithmetic shift rounding.
Gradients pass straight through inside the clamp range and are zero outside (STE).

Scales (``amax``) are moving averages of the per-forward max |x| during training, after a
calibration pass over a few batches sets them from the float model (:func:`calibrate`).
:func:`activation_spec` reads the points into the compression spec's
:class:`~edgeasr.quantspec.ActivationSpec` (the fixed formats above are the spec's constants);
:func:`restore_fake_quant` puts a saved spec back on a loaded model.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from edgeasr.models.encoders import LstmEncoder, _trim, stack_frames
from edgeasr.models.predictor import StatelessPredictor
from edgeasr.models.residual import residual_lstm
from edgeasr.models.subsampling import frames_after_subsampling
from edgeasr.quantspec import (GATE_SCALE, INT16, TANH_OUT_SCALE, UNIT_SCALE, ActivationPoint, ActivationSpec,
                               CompressionSpec, qmax)
from edgeasr.quantspec.fixedpoint import IntLayerNorm
from edgeasr.quantspec.levels import channel_scale


class _FakeQuant(torch.autograd.Function):
    """One fused pass instead of a chain of autograd ops: the joiner lattice (N, T, U+1, J) goes
    through it in every training step."""

    @staticmethod
    def forward(ctx, x, scale: float, qmin: int, qmax: int):
        ctx.save_for_backward((x >= qmin * scale) & (x <= qmax * scale))
        return _round(x, scale, qmin, qmax)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def _round(x: torch.Tensor, scale: float, qmin: int, qmax: int) -> torch.Tensor:
    return torch.div(x, scale).add_(0.5).floor_().clamp_(qmin, qmax).mul_(scale)


def fq(x: torch.Tensor, scale: float, qmax: int, qmin: int | None = None) -> torch.Tensor:
    """Round ``x`` to ``k * scale`` with integer ``k`` in ``[qmin, qmax]`` (default ``-qmax``), half up.

    Straight-through gradient inside the range, zero outside (the clamp's gradient)."""
    qmin = -qmax if qmin is None else qmin
    if torch.is_grad_enabled() and x.requires_grad:
        return _FakeQuant.apply(x, float(scale), qmin, qmax)
    return _round(x, float(scale), qmin, qmax)


class ActQuant(nn.Module):
    """One requantization point: a per-tensor symmetric ``bits``-bit grid with ``scale = amax / qmax``
    (``pow2``: rounded up to a power of two, for the LSTM cell state).

    Modes: ``calibrating`` (float pass-through, per-forward maxima collected), training (quantize
    with the current scale, then move ``amax`` toward the forward's max: EMA with ``momentum``),
    eval or ``frozen`` (quantize, scale fixed).
    """

    def __init__(self, bits: int = 8, momentum: float = 0.99, pow2: bool = False):
        super().__init__()
        self.bits, self.momentum, self.pow2 = int(bits), float(momentum), bool(pow2)
        self.qmax = qmax(self.bits)
        self.register_buffer("amax", torch.zeros(()))
        self.calibrating = False
        self.frozen = False
        self._seen = torch.zeros(())  # max |x| in the current forward
        self._calib: list[float] = []

    def extra_repr(self) -> str:
        return f"bits={self.bits}, pow2={self.pow2}, amax={float(self.amax):.4g}"

    def scale(self) -> float:
        a = float(self.amax)
        if a <= 0:
            raise RuntimeError("activation quantizer used before calibration; run edgeasr.compression.calibrate first")
        s = a / self.qmax
        return 2.0 ** math.ceil(math.log2(s)) if self.pow2 else s

    def _tracking(self) -> bool:
        return self.calibrating or (self.training and not self.frozen)

    def track(self, x: torch.Tensor) -> None:
        if self._tracking():
            self._seen = torch.maximum(self._seen.to(x.device), x.detach().abs().max().float())  # no sync per call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.track(x)
        return x if self.calibrating else fq(x, self.scale(), self.qmax)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a + b`` on this grid as the runtime adds: each term rounded to the output scale, summed,
        saturated. Broadcasting happens after the terms are rounded (the joiner's lattice costs one add)."""
        if self.calibrating:
            y = a + b
            self.track(y)
            return y
        s = self.scale()
        big = 4 * self.qmax  # terms are rounded but not clamped; only the sum saturates
        y = fq(a, s, big) + fq(b, s, big)
        self.track(y)
        return fq(y, s, self.qmax)

    def layer_norm(self, norm: nn.LayerNorm, x: torch.Tensor, source: "ActQuant") -> torch.Tensor:
        """``norm(x)`` on this grid as the runtime computes it: forward, the integer LayerNorm of
        ``x``'s levels on ``source``'s grid; backward, the float LayerNorm's (straight through)."""
        y = self(norm(x))
        if self.calibrating or source.calibrating:
            return y
        s_in, s_out = source.scale(), self.scale()
        with torch.no_grad():
            ln = IntLayerNorm(norm.weight, norm.bias, norm.eps, s_in, s_out, self.bits)
            exact = ln(torch.floor(x.double() / s_in + 0.5).long()).to(y.dtype) * s_out
        return y + (exact - y).detach()

    @torch.no_grad()
    def commit(self) -> None:
        """End of one forward: fold its max into ``amax`` (or the calibration list)."""
        if not self._tracking():
            return
        m = float(self._seen)
        self._seen = torch.zeros(())
        if self.calibrating:
            self._calib.append(m)
        elif float(self.amax) <= 0:
            self.amax.fill_(m)
        else:
            self.amax.mul_(self.momentum).add_((1 - self.momentum) * m)

    @torch.no_grad()
    def finish_calibration(self) -> None:
        if self._calib:
            self.amax.fill_(sum(self._calib) / len(self._calib))  # mean of per-batch maxima, as the EMA tracks
        self._calib, self.calibrating = [], False


def _unit(x: torch.Tensor, signed: bool) -> torch.Tensor:
    return fq(x, UNIT_SCALE, INT16, -INT16 if signed else 0)


def acc_bias(bias: torch.Tensor, weight: torch.Tensor, s_in: float, bits: int) -> torch.Tensor:
    """``bias`` rounded to its int32 accumulator's grid, ``s_in`` x the weight row's scale on the
    ``bits``-bit grid (a fully pruned row: 1.0), as the runtime stores it; straight-through gradient."""
    with torch.no_grad():
        w = weight.detach().float()
        row = channel_scale(w, bits).reshape(-1).double()
        dead = w.reshape(w.size(0), -1).abs().amax(dim=1) == 0
        acc = s_in * torch.where(dead, torch.ones_like(row), row)
        q = (torch.round(bias.detach().double() / acc) * acc).to(bias.dtype)
    return bias + (q - bias).detach()


def _weights(module: nn.Module) -> None:
    """Run ``module``'s forward pre-hooks (the pruning mask + weight fake-quant of
    :class:`~edgeasr.compression.Compression`) when its weights are read without calling it."""
    for hook in module._forward_pre_hooks.values():
        hook(module, ())


class _Wrapper(nn.Module):
    """Holds the float module as ``inner`` and its requantization points in ``q``."""

    def __init__(self, inner: nn.Module, points: Mapping[str, ActQuant], weight_bits: int | None = None):
        super().__init__()
        self.inner = inner
        self.q = nn.ModuleDict(points)
        self.weight_bits = weight_bits  # the weights' grid; None: float weights, biases stay float

    def bias(self, module: nn.Module, s_in: ActQuant | float) -> torch.Tensor | None:
        """``module``'s bias as the runtime adds it to the accumulator of an input on ``s_in``."""
        if module.bias is None or self.weight_bits is None or (isinstance(s_in, ActQuant) and s_in.calibrating):
            return module.bias
        s = s_in.scale() if isinstance(s_in, ActQuant) else s_in
        return acc_bias(module.bias, module.weight, s, self.weight_bits)

    def linear(self, module: nn.Linear, x: torch.Tensor, s_in: ActQuant | float) -> torch.Tensor:
        _weights(module)
        return F.linear(x, module.weight, self.bias(module, s_in))

    def conv(self, module: nn.Conv2d, x: torch.Tensor, s_in: ActQuant) -> torch.Tensor:
        _weights(module)
        return F.conv2d(x, module.weight, self.bias(module, s_in), module.stride, module.padding, module.dilation,
                        module.groups)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)  # output_dim, vocab_size, blank_id, ...

    def commit(self) -> None:
        for q in self.q.values():
            q.commit()


class QLstmEncoder(_Wrapper):
    """:class:`~edgeasr.models.LstmEncoder` with requantization points (names in ``q``):

    ``in`` (normalized features) -> conv1 -> ReLU -> ``conv1`` -> conv2 -> ReLU -> ``conv2`` ->
    Linear -> ``sub`` -> stack Linear -> ``res0`` (int16 residual stream); per layer l:
    LayerNorm -> ``l{l}_x`` -> LSTM (gates Q3.12 / Q0.15, cell ``l{l}_c``, output ``l{l}_h``) ->
    ``res{l+1}`` = res + h; final LayerNorm -> ``final`` -> Linear -> ``out``.

    ``forward(x (N, T, F), x_lens (N,)) -> (N, T', J), (N,)``, offline (the integer runtime streams).
    """

    def __init__(self, enc: nn.Module, bits: int = 8, residual_bits: int = 16, momentum: float = 0.99,
                 weight_bits: int | None = None):
        pts = {n: ActQuant(bits, momentum) for n in ("in", "conv1", "conv2", "final", "out")}
        if enc.stack is not None:
            pts["sub"] = ActQuant(bits, momentum)  # input of the frame-stacking Linear
        pts["res0"] = ActQuant(residual_bits, momentum)
        for i in range(enc.num_layers):
            pts[f"l{i}_x"] = ActQuant(bits, momentum)
            pts[f"l{i}_h"] = ActQuant(bits, momentum)
            pts[f"l{i}_c"] = ActQuant(16, momentum, pow2=True)
            pts[f"res{i + 1}"] = ActQuant(residual_bits, momentum)
        super().__init__(enc, pts, weight_bits)

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e, q = self.inner, self.q
        x = q["in"](e.input_norm(_trim(x, x_lens).to(e.output.weight.dtype)))
        conv1, conv2 = e.subsampling.conv[0], e.subsampling.conv[2]
        y = q["conv1"](F.relu(self.conv(conv1, x.unsqueeze(1), q["in"])))
        y = q["conv2"](F.relu(self.conv(conv2, y, q["conv1"])))
        n, c, t, f = y.shape
        y = self.linear(e.subsampling.out, y.transpose(1, 2).reshape(n, t, c * f), q["conv2"])
        lens = frames_after_subsampling(x_lens).clamp(min=0)
        if e.stack is not None:
            y, lens = stack_frames(q["sub"](y), lens, e.frame_stack, lambda z: self.linear(e.stack, z, q["sub"]),
                                   ceil=False)
        r, _ = residual_lstm(q["res0"](y), self._norm, self._cell, self._add, [None] * e.num_layers)
        final = q["final"].layer_norm(e.final_norm, r, q[f"res{e.num_layers}"])
        out = q["out"](self.linear(e.output, final, q["final"]))
        self.commit()
        return out, lens

    def infer(self, *args, **kwargs):
        # Without this, attribute fallback would stream the *float* encoder without a word.
        raise NotImplementedError("the fake-quantized encoder runs offline only; stream with the integer runtime "
                                  "(edgeasr.runtime.IntTransducer.from_model or an exported file)")

    streaming_forward = infer

    # the residual LSTM block on the runtime's grids (edgeasr.models.residual)
    def _norm(self, i: int, r: torch.Tensor) -> torch.Tensor:
        return self.q[f"l{i}_x"].layer_norm(self.inner.norms[i], r, self.q[f"res{i}"])

    def _cell(self, i: int, x: torch.Tensor, state: None) -> tuple[torch.Tensor, None]:
        return self.lstm(i, self.inner.lstms[i], x), None

    def _add(self, i: int, r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.q[f"res{i + 1}"].add(r, self.inner.dropout(h))

    def lstm(self, i: int, lstm: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
        """One quantized LSTM layer over ``x`` (N, T, H) from zero state -> h (N, T, H).

        The input projection of all frames is one matmul; only the recurrence loops over time.
        """
        _weights(lstm)
        qh, qc = self.q[f"l{i}_h"], self.q[f"l{i}_c"]
        bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
        if self.weight_bits is not None and not self.q[f"l{i}_x"].calibrating:
            bias = acc_bias(bias, lstm.weight_ih_l0, self.q[f"l{i}_x"].scale(), self.weight_bits)
        gx = fq(x @ lstm.weight_ih_l0.T + bias, GATE_SCALE, INT16)  # (N, T, 4H)
        n, t, hid = x.size(0), x.size(1), lstm.hidden_size
        h = x.new_zeros(n, hid)
        c = x.new_zeros(n, hid)
        outs = []
        for k in range(t):
            g = fq(gx[:, k] + fq(h @ lstm.weight_hh_l0.T, GATE_SCALE, INT16), GATE_SCALE, INT16)
            gi, gf, gg, go = g.chunk(4, dim=1)  # torch's gate order
            i_, f_, o_ = _unit(torch.sigmoid(gi), False), _unit(torch.sigmoid(gf), False), _unit(torch.sigmoid(go), False)
            c = qc.add(f_ * c, i_ * _unit(torch.tanh(gg), True))
            h = qh(o_ * _unit(torch.tanh(c), True))
            outs.append(h)
        return torch.stack(outs, dim=1)


class QStatelessPredictor(_Wrapper):
    """:class:`~edgeasr.models.StatelessPredictor` with points ``emb`` (looked-up embeddings),
    ``conv`` (after depthwise conv + ReLU) and ``out``. Same decoding interface."""

    def __init__(self, pred: nn.Module, bits: int = 8, momentum: float = 0.99, weight_bits: int | None = None):
        super().__init__(pred, {n: ActQuant(bits, momentum) for n in ("emb", "conv", "out")}, weight_bits)

    def _head(self, y: torch.Tensor) -> torch.Tensor:
        p, q = self.inner, self.q
        emb = q["emb"](p._embed(y))
        if p.conv is not None:
            emb = p.conv(emb.transpose(1, 2)).transpose(1, 2)
        out = q["out"](self.linear(p.output, q["conv"](F.relu(emb)), q["conv"]))
        self.commit()
        return out

    def forward(self, y: torch.Tensor, y_lens: torch.Tensor | None = None) -> torch.Tensor:
        return self._head(torch.cat([self.inner.start_context(y.size(0), y.device), y], dim=1))

    def step(self, context: torch.Tensor) -> torch.Tensor:
        return self._head(context)[:, -1]

    def init_decoder(self, batch_size: int, device=None):
        ctx = self.inner.start_context(batch_size, device)
        return self.step(ctx), ctx

    def step_tokens(self, tokens: torch.Tensor, state: torch.Tensor):
        ctx = torch.cat([state[:, 1:], tokens.reshape(-1, 1).to(state.dtype)], dim=1)
        return self.step(ctx), ctx

    select_state = staticmethod(lambda state, index: state[index])

    @staticmethod
    def scatter_state(state, index, sub):
        out = state.clone()
        out[index] = sub
        return out


class QJoiner(_Wrapper):
    """:class:`~edgeasr.models.Joiner`: ``sum`` = enc + pred (int16), tanh to int8 at 1/127, then the
    output Linear whose int32 accumulators the runtime dequantizes (raw float logits here)."""

    def __init__(self, joiner: nn.Module, residual_bits: int = 16, momentum: float = 0.99,
                 weight_bits: int | None = None):
        super().__init__(joiner, {"sum": ActQuant(residual_bits, momentum)}, weight_bits)

    def _out(self, s: torch.Tensor) -> torch.Tensor:
        out = self.linear(self.inner.output, fq(torch.tanh(s), TANH_OUT_SCALE, 127), TANH_OUT_SCALE)
        self.commit()
        return out

    def forward(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        return self._out(self.q["sum"].add(enc.unsqueeze(2), pred.unsqueeze(1)))

    def forward_frame(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        return self._out(self.q["sum"].add(enc, pred))


PARTS = ("encoder", "predictor", "joiner")


def attach_activation_quant(model: nn.Module, bits: int = 8, residual_bits: int = 16, momentum: float = 0.99,
                            scales: Mapping[str, float] | None = None, frozen: bool = False,
                            weight_bits: int | None = None) -> nn.Module:
    """Wrap ``model``'s encoder, predictor and joiner in place (LSTM encoder + stateless predictor only).

    ``weight_bits``: the weights' grid (the compression spec's ``bits``), so biases are rounded as
    the runtime stores them; ``None`` for float weights.

    ``scales``: ``{"encoder.in": amax, ...}`` from :func:`detach_activation_quant` (a saved model's
    ``meta["activation_quant"]["amax"]``); ``frozen`` keeps them fixed during training."""
    if is_quantized(model):
        raise RuntimeError("activation quantization is already attached")
    if not isinstance(model.encoder, LstmEncoder) or not isinstance(model.predictor, StatelessPredictor):
        raise ValueError("activation quantization supports the LSTM encoder + stateless predictor student "
                         f"(got {type(model.encoder).__name__} + {type(model.predictor).__name__})")
    model.encoder = QLstmEncoder(model.encoder, bits, residual_bits, momentum, weight_bits)
    model.predictor = QStatelessPredictor(model.predictor, bits, momentum, weight_bits)
    model.joiner = QJoiner(model.joiner, residual_bits, momentum, weight_bits)
    if scales is not None:
        missing = sorted(set(point_names(model)) - set(scales))
        if missing:
            raise ValueError(f"activation scales are missing for {missing}")
        for name, q in quant_points(model):
            q.amax.fill_(float(scales[name]))
    for _, q in quant_points(model):
        q.frozen = frozen
    return model


def is_quantized(model: nn.Module) -> bool:
    return isinstance(model.encoder, _Wrapper)


def quant_points(model: nn.Module) -> Iterable[tuple[str, ActQuant]]:
    for part in PARTS:
        w = getattr(model, part)
        if isinstance(w, _Wrapper):
            for k, q in w.q.items():
                yield f"{part}.{k}", q


def point_names(model: nn.Module) -> list[str]:
    return [n for n, _ in quant_points(model)]


def activation_spec(model: nn.Module) -> ActivationSpec:
    """The spec's view of ``model``'s points: per point its bits, power-of-two flag, ``amax`` and effective scale."""
    return ActivationSpec({n: ActivationPoint(q.bits, q.pow2, float(q.amax), q.scale())
                           for n, q in quant_points(model)})


def restore_fake_quant(model: nn.Module, spec: CompressionSpec) -> nn.Module:
    """Put ``spec``'s activation fake-quantization back on ``model`` (a plain student loaded from the
    file that stored ``spec``), scales frozen, in place; a weights-only spec leaves it as it is.

    The one way every stage and tool restores a saved model's quantization. Raises ``ValueError``
    if the points ``attach_activation_quant`` builds differ from the spec's."""
    if spec.activations is None:
        return model
    act = spec.activations
    attach_activation_quant(model, bits=spec.act_bits, residual_bits=spec.residual_bits, scales=act.amax, frozen=True,
                            weight_bits=spec.bits)
    have, want = activation_spec(model).layout(), act.layout()
    if have != want:
        diff = sorted(n for n in set(have) | set(want) if have.get(n) != want.get(n))
        raise ValueError(f"the saved activation quantization differs from what attach_activation_quant "
                         f"builds at {diff}")
    return model


def detach_activation_quant(model: nn.Module) -> ActivationSpec:
    """Unwrap in place (the float modules come back unchanged); returns :func:`activation_spec`."""
    spec = activation_spec(model)
    for part in PARTS:
        w = getattr(model, part)
        if isinstance(w, _Wrapper):
            setattr(model, part, w.inner)
    return spec


@contextmanager
def float_view(model: nn.Module):
    """The model without its activation quantizers for the duration (e.g. MAC profiling, which
    hooks ``nn.LSTM`` calls that the quantized encoder replaces by its own loop)."""
    if not is_quantized(model):
        yield model
        return
    wrappers = {p: getattr(model, p) for p in PARTS}
    for p, w in wrappers.items():
        setattr(model, p, w.inner)
    try:
        yield model
    finally:
        for p, w in wrappers.items():
            setattr(model, p, w)


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Mapping[str, Any]], labels: bool = True) -> int:
    """Set every point's ``amax`` to the mean per-batch max |x| of the float model over ``batches``
    (DataModule batches: ``features``, ``feature_lens``, ``tokens``). Returns the batch count."""
    points = [q for _, q in quant_points(model)]
    was_training = model.training
    model.eval()
    for q in points:
        q.calibrating = True
    n = 0
    try:
        for batch in batches:
            model(batch["features"], batch["feature_lens"], batch["tokens"])
            n += 1
    finally:
        for q in points:
            q.finish_calibration()
        model.train(was_training)
    if n == 0:
        raise ValueError("calibration got no batches")
    return n
