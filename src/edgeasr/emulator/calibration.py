"""The NPU emulator calibrated against the analytical cost model (cost.py): the same work through
both, on the exported weights (:func:`calibrate`), which must agree to float precision.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from edgeasr.models import build_transducer

from .cost import CostReport
from .hw import HwProfile
from .modelspec import ModelSpec
from .npu import cost_counts
from .streaming import trace_analytic_pattern
from .transducer import transducer_latency


def torch_twin(container):
    """The exported model back as a float PyTorch transducer (dequantized weights: the same zeros and
    grid values), for cost.py's analytical model. The CTC head is not exported (left as initialized)."""
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
