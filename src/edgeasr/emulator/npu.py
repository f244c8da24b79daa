"""NPU emulator: the work the integer runtime really does, costed on a hardware profile.

    c = read_container("data/export/student.edgeasr"); rt = edgeasr.runtime.load_student(path, c)
    spec = ModelSpec.from_container(c)                         # bytes per layer, per variant
    trace = stream_utterance(rt, spec, feats, chunk_frames=32)  # runs the runtime chunk by chunk
    res = emulate(trace, spec, hw, "sparse_int8")               # latency, end-of-speech latency, energy, ...
    res.report.table()                                          # per-layer roofline (a cost.CostReport)

The emulator in four modules: :mod:`~edgeasr.emulator.modelspec` (``ModelSpec``: the container's
layers and bytes per variant), :mod:`~edgeasr.emulator.streaming` (``stream_utterance``: the
runtime's work counted per layer and chunk), this module (costing: ``emulate``, energy,
utilization) and :mod:`~edgeasr.emulator.calibration` (``calibrate``: against cost.py).

What is counted. The integer runtime (``edgeasr.runtime.IntTransducer.stats``) counts, per layer, the
MACs a dense engine runs, the MACs left after skipping zero weights (exactly ``rows x nnz``) and
its calls. The emulator maps them onto the exported model's layers (the PyTorch module names, so
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
  work: :func:`~edgeasr.emulator.streaming.trace_analytic_pattern` + ``tests/test_npu_emulator.py`` check it to float precision).
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

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .cost import CostReport, LayerWork, gathered_bytes, macs_per_s, roofline
from .hw import HwProfile
from .modelspec import ModelSpec, check_variant
from .streaming import LayerCount, UtteranceTrace

# --------------------------------------------------------------------------- costing


def layer_works(counts: Mapping[str, LayerCount], spec: ModelSpec, variant: str, hw: HwProfile) -> list[LayerWork]:
    """The runtime's counts as cost.py's LayerWork for ``variant`` (see the module docstring)."""
    check_variant(variant)
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


# --------------------------------------------------------------------------- reporting


def summary_line(res: UtteranceEmulation) -> str:
    e = f"{res.energy_j * 1e6:.2f} uJ" if res.energy_j is not None else "n/a"
    return (f"{res.variant} on {res.hw}: {res.latency_s * 1e3:.4f} ms for {res.duration_s:.2f} s of audio "
            f"(RTF {res.rtf:.5f}), after end of speech {res.eos_latency_s * 1e3:.4f} ms, energy {e}, "
            f"utilization {res.utilization:.3f}")
