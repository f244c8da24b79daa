"""NPU emulator: the work the integer runtime really does, costed on a hardware profile.

    c = read_container("data/export/student.edgeasr"); rt = edgeasr.runtime.load_student(path, c)
    spec = ModelSpec.from_container(c)                         # bytes per layer, per variant
    trace = stream_utterance(rt, spec, feats, chunk_frames=32)  # runs the runtime chunk by chunk
    res = emulate(trace, spec, hw, "sparse_int8")               # latency, end-of-speech latency, energy, ...
    res.report.table()                                          # per-layer roofline (a cost.CostReport)

What is counted. The integer runtime (``edgeasr.runtime.IntTransducer.stats``) counts, per layer, the
MACs a dense engine runs, the MACs left after skipping zero weights (exactly ``rows x nnz``) and
its calls. This module maps them onto the exported model's layers (the PyTorch module names, so
the tables line up with :func:`~edgeasr.emulator.cost.estimate`'s), adds the layers without MACs
(LayerNorms: read once per encoder run; the predictor embedding: only the rows gathered), and
takes each layer's stored bytes from the container. Weight reads ("passes"), as the analytical
model (``transducer.transducer_latency``) assumes: encoder layers once per encoder run (chunk),
predictor and joiner once per call.

Variants on the same profile and the same counts:

``fp32``        dense MACs at fp32 speed (``cost.macs_per_s``: 1/4 of the int8 rate), 4 bytes per value.
``dense_int8``  dense MACs at int8 speed (zeros not skipped), every weight stored densely at the
                export's bit width (the compression spec's ``bits``) + the container's per-channel scales.
``sparse_int8`` MACs against zero weights skipped (when the profile has ``zero_skipping``), the
                container's compressed bytes (bitmap / rle / zlib / dense, whichever it stores).

The time of a span of work is :func:`~edgeasr.emulator.cost.roofline` (the same function
``estimate`` ends in): per layer ``max(executed MACs / peak, bytes moved / bandwidth of the level
the weights live in)``, with cost.py's placement rule (``greedy``: the most-read layers are pinned
in SRAM first when the model does not fit). Activations are assumed to stay on chip; element-wise
work (LUTs, LayerNorm arithmetic, residual adds) runs beside the MAC array and is not timed, as in
cost.py. The host-side front end (fbank + input LayerNorm: ``host_layers``) is not NPU work.

Per utterance (:func:`emulate`):

* ``latency_s``: the roofline of the whole utterance's work (= what cost.py computes for the same
  work: :func:`trace_analytic_pattern` + ``tests/test_npu_emulator.py`` check it to float precision).
* ``eos_latency_s`` (user-perceived, streaming): chunk ``i`` can start when its last input frame has
  arrived (``end_frame x frame shift``) and the previous chunk is done; it takes the roofline time of
  its own work (encoder run + greedy decoding of its frames). The latency after the end of speech is
  the last chunk's finish time minus the audio duration: the last chunk's processing plus any
  backlog when the device runs slower than real time. Per-chunk rooflines sum to at least the
  utterance roofline (max is subadditive), so this is never optimistic.
* ``energy_j``: per layer ``executed MACs x pJ/MAC + bytes moved x pJ/byte of its level`` with the
  profile's ``energy_pj`` (ASSUMED constants, see conf/hw/*.yaml); weights only, like the timing.
* ``utilization``: executed MACs / (latency x the variant's peak MAC/s), in (0, 1].
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from edgeasr.export import encoded_nbytes, record_nbytes
from edgeasr.quantspec import read_spec

from .cost import CostReport, LayerWork, gathered_bytes, macs_per_s, roofline
from .hw import HwProfile

VARIANTS = ("fp32", "dense_int8", "sparse_int8")
HOST_LAYERS = ("encoder.input_norm",)  # the runtime's host-side front end (docs/integer_runtime.md)

# integer-runtime stats keys that differ from the PyTorch module names of the same layer
_STAT_ALIASES = {"encoder.conv1": "encoder.subsampling.conv.0", "encoder.conv2": "encoder.subsampling.conv.2"}
_LSTM_STAT = re.compile(r"^(.*)\.weight_(ih|hh)$")  # one LSTM layer = its input and recurrent matmuls
_ENCODER_RUN_KEY = "encoder.output"  # called exactly once per encoder run that emits frames
_PREDICTOR_KEY = "predictor.output"  # called once per predictor step


# --------------------------------------------------------------------------- the model's layers and bytes


def layer_of_tensor(name: str) -> str:
    """``encoder.lstms.0.weight_ih_l0`` -> ``encoder.lstms.0``: a tensor belongs to its module."""
    return name.rsplit(".", 1)[0] if "." in name else name


def layer_of_stat(key: str) -> str:
    """An integer-runtime stats key -> the layer (PyTorch module name) it counts for."""
    key = _STAT_ALIASES.get(key, key)
    m = _LSTM_STAT.match(key)
    return m.group(1) if m else key


def layer_kind(name: str) -> str:
    """The kind cost.py's profiler gives the same module (tables and the embedding rule use it)."""
    parts = name.split(".")
    last = parts[-1]
    if re.search(r"(^|\.)lstms\.\d+$", name):
        return "lstm"
    if ".subsampling.conv." in name:
        return "conv2d"
    if name == "predictor.conv":
        return "conv1d"
    if "embedding" in last:
        return "embedding"
    if any("norm" in p for p in parts[-2:]):  # encoder.norms.0, encoder.final_norm, encoder.input_norm.norm
        return "norm"
    return "linear"


@dataclass
class LayerSpec:
    """One layer of the exported model: its tensors, weight counts and stored bytes per variant."""

    name: str
    kind: str
    tensors: tuple[str, ...]
    weights: int  # values in its quantized weight tensors
    nonzero: int
    rows: int  # dim 0 of its first weight (embedding rows: gathers read rows x bytes / rows)
    bytes: dict[str, int]  # variant -> bytes of all its tensors (weights + scales + biases / norm params)


@dataclass
class ModelSpec:
    """The exported model as the emulator needs it (from the container alone: no torch)."""

    layers: dict[str, LayerSpec]  # container order
    bits: int  # weight bits of the export
    context_size: int  # predictor token context (embedding rows gathered per predictor step)
    predictor_out_weights: int  # numel of predictor.output.weight: its dense MACs / this = rows stepped
    file_bytes: int = 0
    host: frozenset[str] = frozenset(HOST_LAYERS)  # layer names (or prefixes) run on the host, not the NPU
    encodings: dict[str, int] = field(default_factory=dict)  # stored encoding -> number of weight tensors

    @classmethod
    def from_container(cls, container, host_layers: Iterable[str] = HOST_LAYERS) -> ModelSpec:
        """``container``: :func:`edgeasr.export.read_container`'s result for an exported student."""
        header = container.header
        bits = read_spec(header, getattr(container, "source", "") or "the container", need="the NPU emulator").bits
        groups: dict[str, list] = {}
        for name, rec in container.tensors.items():
            groups.setdefault(layer_of_tensor(name), []).append(rec)
        layers: dict[str, LayerSpec] = {}
        encodings: dict[str, int] = {}
        for lname, recs in groups.items():
            b = dict.fromkeys(VARIANTS, 0)
            weights = nonzero = 0
            rows = 1
            for rec in recs:
                n = int(rec.values.size)
                region = record_nbytes(rec)  # what the file stores: prefix (scales...) + payload
                b["fp32"] += 4 * n
                b["sparse_int8"] += region
                if rec.kind == "qweight":
                    stored = encoded_nbytes(rec.values, rec.bits, rec.encoding)
                    b["dense_int8"] += region - stored + encoded_nbytes(rec.values, rec.bits, "dense")
                    if weights == 0:
                        rows = int(rec.values.shape[0]) if rec.values.ndim else 1
                    weights += n
                    nonzero += int((rec.values != 0).sum())
                    encodings[rec.encoding] = encodings.get(rec.encoding, 0) + 1
                else:
                    b["dense_int8"] += region
            layers[lname] = LayerSpec(lname, layer_kind(lname), tuple(r.name for r in recs), weights, nonzero,
                                      rows, b)
        pred_out = container.tensors.get(_PREDICTOR_KEY + ".weight")
        if pred_out is None:
            raise ValueError("the container holds no predictor.output.weight: not an exported edgeasr student")
        ctx = int(((header.get("model_cfg") or {}).get("predictor") or {}).get("context_size", 2))
        return cls(layers, bits, ctx, int(pred_out.values.size), int(getattr(container, "nbytes", 0) or 0),
                   frozenset(host_layers), encodings)

    def on_npu(self, name: str) -> bool:
        return not any(name == h or name.startswith(h + ".") for h in self.host)

    @property
    def npu_layers(self) -> list[LayerSpec]:
        return [s for n, s in self.layers.items() if self.on_npu(n)]

    def stored_bytes(self, variant: str) -> int:
        """Bytes of every NPU layer's tensors in ``variant`` (the figure SRAM placement is decided on)."""
        _check_variant(variant)
        return sum(s.bytes[variant] for s in self.npu_layers)

    @property
    def sparsity(self) -> float:
        w = sum(s.weights for s in self.npu_layers)
        return 1.0 - sum(s.nonzero for s in self.npu_layers) / w if w else 0.0

    def bits_of(self, variant: str) -> int:
        _check_variant(variant)
        return 32 if variant == "fp32" else self.bits


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


# --------------------------------------------------------------------------- counting the runtime's work


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
    runs = _calls(before, after, _ENCODER_RUN_KEY)
    steps = _calls(before, after, _PREDICTOR_KEY)
    pred_d = after.get(_PREDICTOR_KEY, (0, 0, 0))[0] - before.get(_PREDICTOR_KEY, (0, 0, 0))[0]
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
    device does; record each chunk's work. The tokens equal offline greedy decoding's (the runtime's
    streaming is bit-exact and the streaming greedy search shares the offline loop)."""
    import torch

    from edgeasr.decoding import greedy_search_streaming

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
        hyps, dec = greedy_search_streaming(rt, out.unsqueeze(0), torch.tensor([out.size(0)]), dec)
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
    import torch

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


# --------------------------------------------------------------------------- costing


def layer_works(counts: Mapping[str, LayerCount], spec: ModelSpec, variant: str, hw: HwProfile) -> list[LayerWork]:
    """The runtime's counts as cost.py's LayerWork for ``variant`` (see the module docstring)."""
    _check_variant(variant)
    skip = variant == "sparse_int8" and hw.zero_skipping
    works = []
    for name, c in counts.items():
        ls = spec.layers[name]
        wbytes = ls.bytes[variant]
        moved = gathered_bytes(wbytes, c.passes, c.lookups if ls.kind == "embedding" else 0, ls.rows)
        works.append(LayerWork(name=name, kind=ls.kind, calls=c.calls, macs=c.dense_macs,
                               macs_executed=c.executed_macs if skip else c.dense_macs, weights=ls.weights,
                               nonzero=ls.nonzero, weight_bytes=wbytes, passes=c.passes, bytes_moved=moved))
    return works


def cost_counts(counts: Mapping[str, LayerCount], spec: ModelSpec, hw: HwProfile, variant: str,
                placement: str = "greedy", levels: Mapping[str, str] | None = None) -> CostReport:
    """cost.roofline over the counted work: per-layer times, placement as cost.py (``levels`` fixes it)."""
    return roofline(layer_works(counts, spec, variant, hw), hw, spec.bits_of(variant), placement=placement,
                    levels=levels, unique_bytes=spec.stored_bytes(variant), sparsity=spec.sparsity,
                    sparse_format=variant)


def energy_j(report: CostReport, hw: HwProfile) -> float | None:
    """Σ executed MACs x pJ/MAC(bits) + bytes moved x pJ/byte(level); None without ``hw.energy_pj``."""
    e = hw.energy_pj
    if not e:
        return None
    if report.bits <= 8:
        mac = e["mac_int8"]
    elif report.bits <= 16:
        mac = e.get("mac_fp16", e["mac_fp32"])
    else:
        mac = e["mac_fp32"]
    return 1e-12 * sum(c.macs_executed * mac + c.bytes_moved * e["byte"][c.memory_level] for c in report.layers)


def utilization(report: CostReport, hw: HwProfile) -> float:
    """Achieved MAC/s over the variant's peak (int8 peak; fp32: a quarter of it)."""
    if report.total_s <= 0:
        return 0.0
    return report.macs_executed / (report.total_s * macs_per_s(hw, report.bits))


@dataclass
class UtteranceEmulation:
    variant: str
    hw: str
    report: CostReport  # the whole utterance, per layer
    latency_s: float
    duration_s: float
    eos_latency_s: float
    chunk_s: list[float]
    energy_j: float | None
    utilization: float

    @property
    def rtf(self) -> float:
        return self.latency_s / self.duration_s if self.duration_s > 0 else math.inf


def emulate(trace: UtteranceTrace, spec: ModelSpec, hw: HwProfile, variant: str,
            placement: str = "greedy") -> UtteranceEmulation:
    """Latency, streaming end-of-speech latency, energy and utilization of one traced utterance."""
    rep = cost_counts(trace.total, spec, hw, variant, placement)
    levels = {c.name: c.memory_level for c in rep.layers}
    finish = 0.0
    chunk_s = []
    for ch in trace.chunks:
        t = cost_counts(ch.counts, spec, hw, variant, levels=levels).total_s if ch.counts else 0.0
        chunk_s.append(t)
        finish = max(finish, ch.end_frame * trace.frame_shift_s) + t
    eos = max(0.0, finish - trace.duration_s)
    return UtteranceEmulation(variant, hw.name, rep, rep.total_s, trace.duration_s, eos, chunk_s,
                              energy_j(rep, hw), utilization(rep, hw))


# --------------------------------------------------------------------------- calibration against cost.py


def torch_twin(container):
    """The exported model back as a float PyTorch transducer (dequantized weights: the same zeros and
    grid values), for cost.py's analytical model. The CTC head is not exported (left as initialized)."""
    import torch

    from edgeasr.models import build_transducer

    cfg = dict(container.header["model_cfg"])
    model = build_transducer(cfg)
    state = {n: torch.from_numpy(r.dequantize().copy()) for n, r in container.tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("ctc_head.")]
    if bad or unexpected:
        raise ValueError(f"container tensors do not match the model config: missing {bad}, unexpected {unexpected}")
    return model.eval()


def compare_reports(emulated: CostReport, analytic: CostReport, skip: Sequence[str] = ()) -> dict[str, float]:
    """Largest relative per-layer differences (MACs, executed MACs, bytes, bytes moved, time) over the
    layers both have, the relative total-time difference, and the number of layers only one has."""
    a = {c.name: c for c in analytic.layers if c.name not in skip}
    e = {c.name: c for c in emulated.layers if c.name not in skip}
    common = a.keys() & e.keys()

    def rel(x: float, y: float) -> float:
        return abs(x - y) / max(abs(x), abs(y)) if max(abs(x), abs(y)) > 0 else 0.0

    out = {f"max_rel_diff/{f}": max((rel(getattr(e[n], f), getattr(a[n], f)) for n in common), default=0.0)
           for f in ("macs", "macs_executed", "weight_bytes", "bytes_moved", "time_s")}
    out["rel_diff/total_s"] = rel(sum(e[n].time_s for n in e), sum(a[n].time_s for n in a))
    out["unmatched_layers"] = len(a.keys() ^ e.keys())
    return out


def calibrate(rt, spec: ModelSpec, twin, hw: HwProfile, feats, num_tokens: int, variant: str,
              placement: str = "greedy") -> tuple[CostReport, CostReport, dict[str, float]]:
    """The same work through both models: the emulator on :func:`trace_analytic_pattern`'s counts and
    cost.transducer_latency on the PyTorch twin (host layers counted on both sides). fp32 and
    dense_int8 are defined identically in both (zero-skipping off); sparse_int8 matches when the
    container stores only dense/bitmap weights (cost.py's sparse formats).
    ``feats`` should hold exactly the frames the encoder consumes (``4 k n + 3``: see
    :func:`used_frames`); otherwise the whole-utterance convolutions compute a few frames the
    streaming runtime never does."""
    from .transducer import transducer_latency

    full = dataclasses.replace(spec, host=frozenset())
    hw_v = hw if variant == "sparse_int8" else dataclasses.replace(hw, zero_skipping=False)
    counts = trace_analytic_pattern(rt, full, feats, num_tokens, rt.blank_id)
    emulated = cost_counts(counts, full, hw_v, variant, placement)
    fmt = {"fp32": "dense", "dense_int8": "dense", "sparse_int8": "auto"}[variant]
    analytic = transducer_latency(twin, hw_v, int(len(feats)), int(num_tokens), bits=full.bits_of(variant),
                                  sparse_format=fmt, placement=placement)
    return emulated, analytic, compare_reports(emulated, analytic)


def used_frames(num_frames: int, frame_stack: int) -> int:
    """Input frames the streaming encoder consumes from ``num_frames`` (outputs need ``4 k n + 3``)."""
    if num_frames < 7:
        return num_frames
    t_sub = ((num_frames - 3) // 2 + 1 - 3) // 2 + 1
    n = t_sub // frame_stack
    return 4 * frame_stack * n + 3 if n else num_frames


# --------------------------------------------------------------------------- reporting


def summary_line(res: UtteranceEmulation) -> str:
    e = f"{res.energy_j * 1e6:.2f} uJ" if res.energy_j is not None else "n/a"
    return (f"{res.variant} on {res.hw}: {res.latency_s * 1e3:.4f} ms for {res.duration_s:.2f} s of audio "
            f"(RTF {res.rtf:.5f}), after end of speech {res.eos_latency_s * 1e3:.4f} ms, energy {e}, "
            f"utilization {res.utilization:.3f}")
