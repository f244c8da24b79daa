"""Roofline cost of a profiled model on an NPU profile: per layer, time = max(compute, weight traffic)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .hw import HwProfile
from .profile import LayerRecord, _children, layer_tensors, own_tensors, resolve_key

SPARSE_FORMATS = ("auto", "dense", "bitmap")
PLACEMENTS = ("model", "greedy", "sram", "flash")


# --------------------------------------------------------------------------- storage


def weight_bytes(weight: Tensor, bits: int, sparse_format: str = "auto", per_channel_scale_bytes: int = 4) -> int:
    """Storage of one weight tensor at `bits` per value.

    dense  = ceil(n*bits/8) + scales
    bitmap = ceil(n/8) (1 bit per position) + ceil(nnz*bits/8) (packed non-zeros) + scales
    auto   = the smaller of the two.
    Quantized weights (bits < 16) carry one scale per output channel (dim 0) of `per_channel_scale_bytes`;
    bits 16 (fp16/bf16) and 32 (fp32) carry none. Zeros are the exactly-zero entries of the tensor as
    given (prune masks applied); fake-quant rounding to zero counts only if the tensor is already quantized.
    """
    if sparse_format not in SPARSE_FORMATS:
        raise ValueError(f"sparse_format must be one of {SPARSE_FORMATS}, got {sparse_format!r}")
    if not 1 <= int(bits) <= 32:
        raise ValueError(f"bits must be in 1..32, got {bits}")
    n = weight.numel()
    nnz = int(torch.count_nonzero(weight.detach()))
    scales = 0 if bits >= 16 else per_channel_scale_bytes * (weight.shape[0] if weight.dim() >= 2 else 1)
    dense = math.ceil(n * bits / 8) + scales
    bitmap = math.ceil(n / 8) + math.ceil(nnz * bits / 8) + scales
    if sparse_format == "dense":
        return dense
    if sparse_format == "bitmap":
        return bitmap
    return min(dense, bitmap)


def _is_weight(t: Tensor) -> bool:
    """Matrices and kernels are quantized/pruned weights; 1-D tensors (biases, norm affine) are not."""
    return t.dim() >= 2


def _tensor_bytes(t: Tensor, bits: int, sparse_format: str, per_channel_scale_bytes: int) -> int:
    if _is_weight(t):
        return weight_bytes(t, bits, sparse_format, per_channel_scale_bytes)
    # biases stay int32 next to int8 weights (and fp32 in fp32 models); fp16 models keep them fp16
    return t.numel() * (2 if bits == 16 else 4)


def _all_tensors(module: nn.Module) -> Iterator[tuple[Tensor, int]]:
    """Every parameter of module as the forward pass sees it, tied weights once."""
    seen: set[int] = set()
    stack = [module]
    visited: set[int] = set()
    while stack:
        m = stack.pop()
        if id(m) in visited:
            continue
        visited.add(id(m))
        for _, t, key in own_tensors(m):
            if key not in seen:
                seen.add(key)
                yield t, key
        stack.extend(c for _, c in _children(m))


def model_sparsity(module: nn.Module) -> float:
    """Fraction of exactly-zero values over all weight matrices/kernels (dim >= 2) of module."""
    total = zeros = 0
    for t, _ in _all_tensors(module):
        if _is_weight(t):
            total += t.numel()
            zeros += t.numel() - int(torch.count_nonzero(t))
    return zeros / total if total else 0.0


def model_size_bytes(
    module: nn.Module, bits: int, sparse_format: str = "auto", per_channel_scale_bytes: int = 4
) -> int:
    """Bytes to store every parameter: weights at `bits` (+ scales, sparse format), biases/norms 4 bytes each."""
    return sum(_tensor_bytes(t, bits, sparse_format, per_channel_scale_bytes) for t, _ in _all_tensors(module))


# --------------------------------------------------------------------------- roofline


def macs_per_s(hw: HwProfile, bits: int) -> float:
    """ASSUMPTION: the MAC array is int8; a b-bit operand occupies b/8 int8 MAC slots (fp16 = 2x, fp32 = 4x
    the int8 cost) and sub-8-bit weights run at int8 speed (they save bytes, not cycles)."""
    return hw.peak_macs_per_s * 8.0 / max(int(bits), 8)


@dataclass
class LayerCost:
    name: str
    kind: str
    calls: int
    macs: int  # dense, total over calls
    macs_executed: int  # after zero-skipping (weight MACs x non-zero fraction; attention QK^T/AV never skipped)
    weights: int  # values in weight matrices/kernels (biases and norms excluded)
    nonzero: int
    weight_bytes: int  # storage incl. biases, norm parameters and quantization scales
    memory_level: str  # where the weights live: 'sram' or 'flash'
    compute_s: float
    memory_s: float
    time_s: float  # max(compute_s, memory_s)
    passes: int = 1  # times the weights are read
    bytes_moved: int = 0  # weight bytes read over all passes

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"


@dataclass
class CostReport:
    layers: list[LayerCost]
    total_s: float
    macs: int
    macs_executed: int
    weight_bytes: int  # unique weight storage of the profiled layers (tied weights once)
    sparsity: float  # exactly-zero fraction over the profiled layers' weight matrices
    hw: str = ""
    bits: int = 32
    sparse_format: str = "auto"
    placement: str = "model"
    compute_s: float = 0.0  # sum over layers of compute time (as if nothing were memory-bound)
    memory_s: float = 0.0
    bytes_moved: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. transducer frame/token counts

    @property
    def sram_resident(self) -> bool:
        return all(layer.memory_level == "sram" for layer in self.layers)

    def summary(self) -> dict[str, Any]:
        """Scalars only (MLflow metrics / params)."""
        return {
            "hw": self.hw,
            "bits": self.bits,
            "sparse_format": self.sparse_format,
            "placement": self.placement,
            "total_s": self.total_s,
            "latency_ms": self.total_s * 1e3,
            "compute_s": self.compute_s,
            "memory_s": self.memory_s,
            "macs": self.macs,
            "macs_executed": self.macs_executed,
            "weight_bytes": self.weight_bytes,
            "bytes_moved": self.bytes_moved,
            "sparsity": self.sparsity,
            "sram_resident": self.sram_resident,
            "num_layers": len(self.layers),
            **{k: v for k, v in self.meta.items() if isinstance(v, (int, float, str, bool))},
        }

    def to_dict(self) -> dict[str, Any]:
        d = self.summary()
        d["meta"] = dict(self.meta)
        d["layers"] = [{**asdict(layer), "bound": layer.bound} for layer in self.layers]
        return d

    def table(self) -> str:
        head = (
            f"{'layer':<40} {'kind':<10} {'calls':>6} {'MMAC':>9} {'MMAC exec':>9} {'weights':>9} {'nz%':>5} "
            f"{'KiB':>8} {'level':<5} {'passes':>6} {'comp ms':>8} {'mem ms':>8} {'time ms':>8} bound"
        )
        lines = [f"hw={self.hw} bits={self.bits} format={self.sparse_format} placement={self.placement}", head]
        lines.append("-" * len(head))
        for c in self.layers:
            nz = 100.0 * c.nonzero / c.weights if c.weights else 100.0
            name = c.name if len(c.name) <= 40 else "…" + c.name[-39:]
            lines.append(
                f"{name:<40} {c.kind:<10} {c.calls:>6} {c.macs / 1e6:>9.3f} {c.macs_executed / 1e6:>9.3f} "
                f"{c.weights:>9} {nz:>5.1f} {c.weight_bytes / 1024:>8.1f} {c.memory_level:<5} {c.passes:>6} "
                f"{c.compute_s * 1e3:>8.4f} {c.memory_s * 1e3:>8.4f} {c.time_s * 1e3:>8.4f} {c.bound}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"total: {self.total_s * 1e3:.4f} ms  ({self.macs / 1e6:.3f} MMAC dense, {self.macs_executed / 1e6:.3f} "
            f"executed; {self.weight_bytes / 1024:.1f} KiB weights, {self.bytes_moved / 1024:.1f} KiB moved; "
            f"sparsity {self.sparsity:.3f})"
        )
        return "\n".join(lines)


@dataclass
class LayerWork:
    """One layer's work over a span of calls, whoever counted it: forward hooks (estimate) or the
    integer runtime (npu.py). The input of :func:`roofline`, the one cost function both share."""

    name: str
    kind: str
    calls: int
    macs: int  # dense
    macs_executed: int  # after zero-skipping (= macs where nothing is skipped)
    weights: int  # values in weight matrices/kernels
    nonzero: int
    weight_bytes: int  # storage of the layer's tensors (weights, scales, biases, norm parameters)
    passes: int  # times the weights are read
    bytes_moved: int  # weight bytes read over all passes


def gathered_bytes(weight_bytes: int, passes: int, lookups: int = 0, rows: int = 1) -> int:
    """Weight bytes read over `passes`; a gather (embedding) reads only the `lookups` rows it needs."""
    moved = int(weight_bytes) * int(passes)
    if lookups:
        moved = min(moved, math.ceil(lookups * weight_bytes / max(1, rows)))
    return moved


def roofline(
    layers: list[LayerWork],
    hw: HwProfile,
    bits: int,
    *,
    placement: str = "model",
    levels: Mapping[str, str] | None = None,
    unique_bytes: int | None = None,
    sparsity: float = 0.0,
    sparse_format: str = "auto",
) -> CostReport:
    """Per layer: compute_s = macs_executed / macs_per_s(hw, bits), memory_s = bytes_moved / bandwidth of
    the level its weights live in, time_s = max(compute_s, memory_s); total = sum over layers.

    Levels come from `placement` (see estimate; `unique_bytes` = the model's stored bytes, default the
    sum over layers) unless `levels` (layer name -> level) fixes them, e.g. for one chunk of an utterance
    that keeps the utterance's placement.
    """
    rate = macs_per_s(hw, bits)
    names = [w.name for w in layers]
    fixed = levels is not None
    for w in layers:
        if w.passes < 1:
            raise ValueError(f"passes for {w.name!r} must be >= 1")
    if levels is None:
        total = sum(w.weight_bytes for w in layers) if unique_bytes is None else int(unique_bytes)
        levels = _place(placement, hw, names, {w.name: w.weight_bytes for w in layers},
                        {w.name: w.passes for w in layers}, total)
    else:
        unknown = {lv for lv in (levels[n] for n in names) if lv not in hw.bandwidth_bytes_per_s}
        if unknown:
            raise ValueError(f"levels {sorted(unknown)} are not memory levels of hw {hw.name!r}")
    costs: list[LayerCost] = []
    for w in layers:
        level = levels[w.name]
        compute_s = w.macs_executed / rate
        memory_s = w.bytes_moved / hw.bandwidth_bytes_per_s[level]
        costs.append(LayerCost(
            name=w.name, kind=w.kind, calls=w.calls, macs=w.macs, macs_executed=w.macs_executed,
            weights=w.weights, nonzero=w.nonzero, weight_bytes=w.weight_bytes, memory_level=level,
            compute_s=compute_s, memory_s=memory_s, time_s=max(compute_s, memory_s), passes=w.passes,
            bytes_moved=w.bytes_moved,
        ))
    return CostReport(
        layers=costs,
        total_s=sum(c.time_s for c in costs),
        macs=sum(c.macs for c in costs),
        macs_executed=sum(c.macs_executed for c in costs),
        weight_bytes=sum(w.weight_bytes for w in layers) if unique_bytes is None else int(unique_bytes),
        sparsity=sparsity,
        hw=hw.name,
        bits=int(bits),
        sparse_format=sparse_format,
        placement="fixed" if fixed else placement,
        compute_s=sum(c.compute_s for c in costs),
        memory_s=sum(c.memory_s for c in costs),
        bytes_moved=sum(c.bytes_moved for c in costs),
    )


def _place(
    placement: str, hw: HwProfile, names: list[str], bytes_: dict[str, int], passes: dict[str, int], unique: int
) -> dict[str, str]:
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if placement in ("sram", "flash"):  # what-if: force a level
        return {n: placement for n in names}
    if placement == "model" or unique <= hw.sram_bytes:
        level = "sram" if unique <= hw.sram_bytes else "flash"
        return {n: level for n in names}
    # greedy: pin the layers read most often per stored byte (the per-token decoder) first
    levels = {n: "flash" for n in names}
    free = hw.sram_bytes
    for n in sorted(names, key=lambda n: (-passes[n], bytes_[n])):
        if bytes_[n] <= free:
            levels[n] = "sram"
            free -= bytes_[n]
    return levels


def estimate(
    layers: list[LayerRecord],
    module: nn.Module,
    hw: HwProfile,
    bits: int = 32,
    sparse_format: str = "auto",
    weight_passes: int = 1,
    *,
    layer_passes: Mapping[str, int] | None = None,
    placement: str = "model",
    per_channel_scale_bytes: int = 4,
) -> CostReport:
    """Roofline per layer; total = sum over layers.

    compute_s = macs_executed / macs_per_s(hw, bits)
    memory_s  = weight bytes read / bandwidth of the level they live in. Only weights are traffic:
                activations are assumed to stay in SRAM. Weights are read `weight_passes` times (e.g. once
                per streaming chunk; `layer_passes` overrides per layer name) from wherever they live:
                SRAM-resident weights are still read from SRAM by the MAC array, at SRAM bandwidth.
                Embeddings read only the rows gathered.
    placement 'model' (default): all weights SRAM-resident if the profiled layers' total weight bytes fit
                hw.sram_bytes, else all stream from flash. 'greedy': pin layers with most passes first,
                the rest stream. 'sram'/'flash': force (what-ifs).
    time_s    = max(compute_s, memory_s): never faster than the roofline bound.
    `module` must be the module the records were profiled on (names are resolved in it); weights are
    read now, so pruning/quantizing after profiling is reflected. The times come from roofline(), which
    the NPU emulator (npu.py) calls with the integer runtime's counts: one cost function for both.
    """
    if int(weight_passes) < 1:
        raise ValueError("weight_passes must be >= 1")
    if sparse_format not in SPARSE_FORMATS:
        raise ValueError(f"sparse_format must be one of {SPARSE_FORMATS}, got {sparse_format!r}")
    layer_passes = dict(layer_passes or {})

    works: list[LayerWork] = []
    unique: dict[int, int] = {}
    sparsity_total = sparsity_zeros = 0
    counted: set[int] = set()
    for rec in layers:
        m = module.get_submodule(rec.name)
        wbytes = weights = nonzero = 0
        for _, t, key in layer_tensors(m, rec.kind):
            b = _tensor_bytes(t, bits, sparse_format, per_channel_scale_bytes)
            wbytes += b
            unique[key] = b
            if _is_weight(t):
                nz = int(torch.count_nonzero(t))
                weights += t.numel()
                nonzero += nz
                if key not in counted:
                    counted.add(key)
                    sparsity_total += t.numel()
                    sparsity_zeros += t.numel() - nz
        if hw.zero_skipping:
            executed = float(rec.act_macs)
            for k, macs in rec.weight_macs.items():
                t = resolve_key(m, k)
                executed += macs * (int(torch.count_nonzero(t)) / t.numel() if t.numel() else 0.0)
            executed = int(round(executed))
        else:
            executed = rec.macs
        passes = int(layer_passes.get(rec.name, weight_passes))
        if passes < 1:
            raise ValueError(f"passes for {rec.name!r} must be >= 1")
        gathered = rec.kind == "embedding" and rec.lookups
        moved = gathered_bytes(wbytes, passes, rec.lookups if gathered else 0,
                               max(1, m.weight.shape[0]) if gathered else 1)
        works.append(LayerWork(name=rec.name, kind=rec.kind, calls=rec.calls, macs=rec.macs, macs_executed=executed,
                               weights=weights, nonzero=nonzero, weight_bytes=wbytes, passes=passes,
                               bytes_moved=moved))
    return roofline(works, hw, bits, placement=placement, unique_bytes=sum(unique.values()),
                    sparsity=sparsity_zeros / sparsity_total if sparsity_total else 0.0, sparse_format=sparse_format)
