"""The NPU emulator's input: the work the integer runtime does, counted per layer of the exported
model, chunk by chunk as a device streams an utterance (:func:`stream_utterance`), or in the call
pattern of the analytical model (:func:`trace_analytic_pattern`, for calibration).

See :mod:`edgeasr.emulator.npu` for how the counts are costed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from edgeasr.decoding import greedy_search_streaming

from .modelspec import ENCODER_RUN_KEY, PREDICTOR_KEY, ModelSpec, layer_of_stat


@dataclass
class LayerCount:
    """One layer's work over a span (a chunk, an utterance)."""

    dense_macs: int = 0
    executed_macs: int = 0
    calls: int = 0
    passes: int = 0  # weight reads
    lookups: int = 0  # embedding rows gathered

    def __add__(self, o: LayerCount) -> LayerCount:
        return LayerCount(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(o))))


Snapshot = dict[str, tuple[int, int, int]]


def snapshot(rt) -> Snapshot:
    """The runtime's counters now (``rt.stats``: dense MACs, executed MACs, calls per stats key)."""
    return {k: (s.dense_macs, s.executed_macs, s.calls) for k, s in rt.stats.items()}


def counts_between(spec: ModelSpec, before: Snapshot, after: Snapshot) -> dict[str, LayerCount]:
    """Per NPU layer, the work the runtime did between two snapshots (layers that did nothing are left out).

    Encoder layers' weights are read once per encoder run (the recurrent matrix is fetched once per
    chunk and reused across its time steps, as cost.py assumes); predictor/joiner layers once per call.
    """
    delta: dict[str, LayerCount] = {}
    for key, (d1, e1, c1) in after.items():
        d0, e0, c0 = before.get(key, (0, 0, 0))
        if c1 == c0:
            continue
        layer = layer_of_stat(key)
        cur = delta.setdefault(layer, LayerCount())
        cur.dense_macs += d1 - d0
        cur.executed_macs += e1 - e0
        if not key.endswith(".weight_hh"):  # an LSTM layer's call is its (chunk-wide) input matmul
            cur.calls += c1 - c0
    runs = _calls(before, after, ENCODER_RUN_KEY)
    steps = _calls(before, after, PREDICTOR_KEY)
    pred_d = after.get(PREDICTOR_KEY, (0, 0, 0))[0] - before.get(PREDICTOR_KEY, (0, 0, 0))[0]
    pred_rows = pred_d // max(1, spec.predictor_out_weights)
    counted = {layer_of_stat(k) for k in after}  # layers the runtime has counters for
    out: dict[str, LayerCount] = {}
    for name, ls in spec.layers.items():
        if not spec.on_npu(name):
            continue
        enc = name.startswith("encoder.")
        if name in delta:
            c = delta.pop(name)
            c.passes = runs if enc else c.calls
        elif name in counted:  # it did not run in this span
            continue
        elif ls.kind == "norm" and enc:
            c = LayerCount(calls=runs, passes=runs)
        elif ls.kind == "embedding" and name.startswith("predictor."):
            c = LayerCount(calls=steps, passes=steps, lookups=pred_rows * spec.context_size)
        elif ls.kind in ("norm", "embedding"):
            raise ValueError(f"layer {name!r} ({ls.kind}): the emulator does not know when it runs")
        else:
            raise ValueError(f"layer {name!r} of the container has no integer-runtime counter")
        if c.passes > 0:
            out[name] = c
    if delta:
        raise ValueError(f"integer-runtime counters without a layer in the container: {sorted(delta)}")
    return out


def _calls(before: Snapshot, after: Snapshot, key: str) -> int:
    return after.get(key, (0, 0, 0))[2] - before.get(key, (0, 0, 0))[2]


def add_counts(a: Mapping[str, LayerCount], b: Mapping[str, LayerCount]) -> dict[str, LayerCount]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out[k] + v if k in out else v
    return out


# --------------------------------------------------------------------------- running utterances


@dataclass
class ChunkTrace:
    end_frame: int  # input frames received when this chunk is complete (its audio has arrived)
    counts: dict[str, LayerCount]


@dataclass
class UtteranceTrace:
    """One utterance streamed through the runtime: the work of each chunk and of the whole."""

    num_frames: int
    frame_shift_s: float
    chunks: list[ChunkTrace]
    total: dict[str, LayerCount]
    tokens: list[int]
    encoder_frames: int

    @property
    def duration_s(self) -> float:
        return self.num_frames * self.frame_shift_s


def stream_utterance(rt, spec: ModelSpec, feats, chunk_frames: int, frame_shift_s: float = 0.01) -> UtteranceTrace:
    """Feed ``feats`` (T, 80) float fbank to the runtime ``chunk_frames`` input frames at a time (int8
    input on the host, ``encoder.infer`` with state, greedy decoding of each chunk's frames), as a
    device does, at the runtime's ``max_sym_per_frame``; record each chunk's work. The tokens equal
    offline greedy decoding's (the runtime's
    streaming is bit-exact and the streaming greedy search shares the offline loop)."""
    if chunk_frames < 1:
        raise ValueError("chunk_frames must be >= 1")
    feats = torch.as_tensor(feats)
    x = rt.encoder.quantize_input(feats)
    num = int(x.size(0))
    state, dec = rt.encoder.init_state(), None
    start = prev = snapshot(rt)
    chunks: list[ChunkTrace] = []
    hyps: list[list[int]] = [[]]
    frames = 0
    for i in range(0, max(num, 1), chunk_frames):
        out, state = rt.encoder.infer(x[i: i + chunk_frames], state)
        frames += int(out.size(0))
        hyps, dec = greedy_search_streaming(rt, out.unsqueeze(0), torch.tensor([out.size(0)]), dec,
                                            max_sym_per_frame=rt.max_sym_per_frame)
        now = snapshot(rt)
        chunks.append(ChunkTrace(min(i + chunk_frames, num), counts_between(spec, prev, now)))
        prev = now
    return UtteranceTrace(num, frame_shift_s, chunks, counts_between(spec, start, prev), list(hyps[0]), frames)


def trace_analytic_pattern(rt, spec: ModelSpec, feats, num_tokens: int, blank_id: int = 0) -> dict[str, LayerCount]:
    """The call pattern of :func:`~edgeasr.emulator.transducer.transducer_latency` run on the integer
    runtime: the encoder once over the whole utterance, the joiner once per encoder frame plus once per
    token, the predictor at the start and once per token, tokens spread evenly (at most one per frame).
    Same work as the analytical model counts, so both must give the same numbers (calibration).
    Note: real greedy decoding (one symbol per frame, :func:`stream_utterance`) runs the joiner once
    per frame only; transducer_latency's extra call per token is its own (icefall-style) assumption."""
    x = rt.encoder.quantize_input(torch.as_tensor(feats))
    before = snapshot(rt)
    enc = rt.encoder(x)
    frames = int(enc.size(0))
    tokens = min(int(num_tokens), frames)
    emit = {(i * frames) // tokens for i in range(tokens)} if tokens else set()
    pred, state = rt.predictor.init_decoder(1)
    vocab = None
    for t in range(frames):
        e = enc[t: t + 1]
        logits = rt.joiner.forward_frame(e, pred)
        if t in emit:
            vocab = vocab or min(int(logits.size(-1)), int(spec.layers["predictor.embedding"].rows))
            tok = 1 + (t % (vocab - 1)) if vocab > 1 else 0
            if tok == blank_id:
                tok = (tok + 1) % vocab
            pred, state = rt.predictor.step_tokens(torch.tensor([tok]), state)
            rt.joiner.forward_frame(e, pred)
    return counts_between(spec, before, snapshot(rt))


