"""The exported model as the NPU emulator sees it: its layers (PyTorch module names), their weight
counts and stored bytes per variant, read from the container alone (no model, no runtime).

See :mod:`edgeasr.emulator.npu` for the variants and how the emulator uses these figures.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from edgeasr.export import encoded_nbytes, record_nbytes
from edgeasr.quantspec import read_spec

VARIANTS = ("fp32", "dense_int8", "sparse_int8")
HOST_LAYERS = ("encoder.input_norm",)  # the runtime's host-side front end (docs/integer_runtime.md)

# integer-runtime stats keys that differ from the PyTorch module names of the same layer
_STAT_ALIASES = {"encoder.conv1": "encoder.subsampling.conv.0", "encoder.conv2": "encoder.subsampling.conv.2"}
_LSTM_STAT = re.compile(r"^(.*)\.weight_(ih|hh)$")  # one LSTM layer = its input and recurrent matmuls
ENCODER_RUN_KEY = "encoder.output"  # called exactly once per encoder run that emits frames
PREDICTOR_KEY = "predictor.output"  # called once per predictor step


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
        pred_out = container.tensors.get(PREDICTOR_KEY + ".weight")
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
        check_variant(variant)
        return sum(s.bytes[variant] for s in self.npu_layers)

    @property
    def sparsity(self) -> float:
        w = sum(s.weights for s in self.npu_layers)
        return 1.0 - sum(s.nonzero for s in self.npu_layers) / w if w else 0.0

    def bits_of(self, variant: str) -> int:
        check_variant(variant)
        return 32 if variant == "fp32" else self.bits


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
