"""The compressed student's contract, :class:`CompressionSpec`: owned here and nowhere else.

``compress`` creates it, ``mwer`` carries it unchanged (and checks its weights against it), the
model file stores it as ``meta["compression"]`` and the export header as top-level keys, and the
integer runtime, the NPU emulator, the CLI and the benchmarks read it back with :func:`read_spec`.
A model without a spec is fp32; code that needs one says so (:class:`SpecError`).

What the spec fixes (``docs/integer_runtime.md`` is the arithmetic):

* weights: ``bits`` per weight, symmetric, per output channel; the scales are *derived*
  (``max |w_row| / qmax(bits)``, :mod:`edgeasr.quantspec.levels`), so they are not stored here;
* masks: derived too: a pruned weight is an exact 0; ``sparsity`` is the compress stage's target
  fraction of zeros over the compressed weights (:func:`is_compressed`), ``scope`` its rule;
* activations (:class:`ActivationSpec`): every requantization point's bits, power-of-two flag,
  calibrated ``amax`` and effective scale, plus the fixed LSTM formats below.

Stdlib only: reading an export container must not import torch (the torch halves: floats -> integer
levels in :mod:`edgeasr.quantspec.levels`, the fixed-point arithmetic in :mod:`edgeasr.quantspec.fixedpoint`).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

GATE_SCALE = 2.0**-12  # Q3.12: LSTM gate pre-activations, range +-8
UNIT_SCALE = 2.0**-15  # Q0.15: sigmoid / tanh outputs
INT16 = 32767
TANH_OUT_SCALE = 1.0 / 127  # the joiner's tanh output, int8
ROUNDING = "half_up"  # floor(x / s + 0.5): the runtime's arithmetic-shift rounding
MIN_WEIGHT_BITS, MAX_WEIGHT_BITS = 2, 16
SKIP = ("ctc_head",)  # modules that are neither compressed nor shipped

_FIXED = {"gate_scale": GATE_SCALE, "unit_scale": UNIT_SCALE, "tanh_out_scale": TANH_OUT_SCALE, "rounding": ROUNDING}


class SpecError(ValueError):
    """A compression spec is missing or malformed; the message names the file and the fix."""


def qmax(bits: int) -> int:
    """Largest level of the symmetric ``bits``-bit grid, ``2**(bits-1) - 1`` (bits 2..63)."""
    b = operator.index(bits)
    if not 2 <= b <= 63:
        raise ValueError(f"a symmetric integer grid needs 2..63 bits, got {bits!r}")
    return (1 << (b - 1)) - 1


def check_weight_bits(bits: Any, what: str = "weight bits") -> int:
    """``bits`` as an int if it is a usable weight width (2..16), else ``ValueError``."""
    if isinstance(bits, bool) or not hasattr(bits, "__index__") or not MIN_WEIGHT_BITS <= int(bits) <= MAX_WEIGHT_BITS:
        raise ValueError(f"{what} must be an integer in {MIN_WEIGHT_BITS}..{MAX_WEIGHT_BITS}, got {bits!r}")
    return int(bits)


def is_compressed(name: str, ndim: int, skip: tuple[str, ...] = SKIP) -> bool:
    """Whether the parameter ``name`` (state-dict name) of ``ndim`` dims is a compressed weight:
    every matrix / kernel / embedding (ndim >= 2) outside ``skip``."""
    return ndim >= 2 and not any(name == s or name.startswith(s + ".") for s in skip)


@dataclass(frozen=True)
class ActivationPoint:
    """One requantization point: a per-tensor symmetric ``bits`` grid, ``scale = amax / qmax``
    (``pow2``: rounded up to a power of two)."""

    bits: int
    pow2: bool
    amax: float
    scale: float


@dataclass(frozen=True)
class ActivationSpec:
    """Every requantization point by name (``"encoder.in"``, ``"encoder.l0_c"``, ``"joiner.sum"``, ...)."""

    points: Mapping[str, ActivationPoint]

    def __post_init__(self):
        object.__setattr__(self, "points", MappingProxyType(dict(self.points)))

    def scales(self, part: str) -> dict[str, float]:
        """``{"in": scale, ...}`` of the points of ``part`` (``encoder``, ``predictor``, ``joiner``)."""
        return {n.split(".", 1)[1]: p.scale for n, p in self.points.items() if n.startswith(part + ".")}

    @property
    def amax(self) -> dict[str, float]:
        return {n: p.amax for n, p in self.points.items()}

    def layout(self) -> dict[str, tuple[int, bool]]:
        """Point name -> ``(bits, pow2)``: what two specs must share to run the same graph."""
        return {n: (p.bits, p.pow2) for n, p in self.points.items()}

    def to_dict(self) -> dict[str, Any]:
        """The stored form (model-file meta and export header: ``activation_quant``)."""
        return {**_FIXED, "amax": self.amax,
                "points": {n: {"bits": p.bits, "pow2": p.pow2, "scale": p.scale} for n, p in self.points.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> ActivationSpec:
        if not isinstance(d, Mapping):
            raise SpecError(f"{where}: activation_quant is a {type(d).__name__}, not a mapping")
        for key, want in _FIXED.items():
            if d.get(key) != want:
                raise SpecError(f"{where}: activation_quant.{key} is {d.get(key)!r}; this runtime implements {want!r}")
        amax, pts = d.get("amax"), d.get("points")
        if not isinstance(amax, Mapping) or not isinstance(pts, Mapping) or not pts:
            raise SpecError(f"{where}: activation_quant needs 'amax' and 'points' per requantization point")
        if set(amax) != set(pts):
            raise SpecError(f"{where}: activation_quant 'amax' and 'points' name different points: "
                            f"{sorted(set(amax) ^ set(pts))}")
        out = {}
        for name, p in pts.items():
            if not isinstance(name, str) or "." not in name:  # views split "part.point" names
                raise SpecError(f"{where}: activation point name {name!r} is not a 'part.point' string")
            try:
                point = ActivationPoint(int(p["bits"]), bool(p["pow2"]), float(amax[name]), float(p["scale"]))
            except (KeyError, TypeError, ValueError, OverflowError) as e:  # int(inf), float(10**400)
                raise SpecError(f"{where}: activation point {name!r} is malformed ({type(e).__name__}: {e})") from None
            if not (2 <= point.bits <= 32 and math.isfinite(point.scale) and point.scale > 0):
                raise SpecError(f"{where}: activation point {name!r} has bits {point.bits}, scale {point.scale}")
            if not (math.isfinite(point.amax) and point.amax > 0):  # a calibrated range is finite and positive
                raise SpecError(f"{where}: activation point {name!r} has amax {point.amax}")
            out[name] = point
        return cls(out)


@dataclass(frozen=True)
class CompressionSpec:
    """How a student was compressed; see the module docstring for what each field fixes.

    ``scope`` (``"layer"`` / ``"global"``) is how compress chose the masks; the export header does
    not carry it (``None`` there), the masks being the zeros of the stored levels.
    ``activations`` is ``None`` for weights-only compression (the integer runtime then refuses).
    ``source`` names the file it was read from, for messages; it is not part of the contract.
    """

    bits: int
    sparsity: float
    scope: str | None = None
    activations: ActivationSpec | None = None
    source: str = field(default="", compare=False)

    def __post_init__(self):
        object.__setattr__(self, "bits", check_weight_bits(self.bits))
        object.__setattr__(self, "sparsity", float(self.sparsity))
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"target sparsity must be in [0, 1), got {self.sparsity}")

    @property
    def act_bits(self) -> int:
        """Bits of the int8 activation points (what ``attach_activation_quant``'s ``bits`` built)."""
        return self.require_activations("the activation bits").points["encoder.in"].bits

    @property
    def residual_bits(self) -> int:
        return self.require_activations("the residual bits").points["encoder.res0"].bits

    def require_activations(self, who: str) -> ActivationSpec:
        if self.activations is None:
            where = f"{self.source}: " if self.source else ""
            raise SpecError(f"{where}{who} needs quantized activations, but this model was compressed weights-only "
                            "(run the compress stage with compress.activations.enabled=true)")
        return self.activations

    def to_dict(self) -> dict[str, Any]:
        """The model file's ``meta["compression"]``."""
        d: dict[str, Any] = {"bits": self.bits, "sparsity": self.sparsity}
        if self.scope is not None:
            d["scope"] = self.scope
        if self.activations is not None:
            d["activation_quant"] = self.activations.to_dict()
        return d

    def header_fields(self) -> dict[str, Any]:
        """The export header's keys (``docs/export_format.md``): no ``scope``, activations required."""
        return {"bits": self.bits, "sparsity": self.sparsity,
                "activation_quant": self.require_activations("an exported student").to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> CompressionSpec:
        missing = [k for k in ("bits", "sparsity") if k not in d]
        if missing:
            raise SpecError(f"{where}: the compression spec lacks {missing}")
        act = d.get("activation_quant")
        activations = None if act is None else ActivationSpec.from_dict(act, where)
        try:
            return cls(d["bits"], float(d["sparsity"]), None if d.get("scope") is None else str(d["scope"]), activations,
                       source=where)
        except (TypeError, ValueError, OverflowError) as e:
            raise SpecError(f"{where}: malformed compression spec ({e})") from None


SPARSITY_SLACK = 0.01  # per-layer rounding of round(sparsity * numel) zeros; kept weights may add zeros


def check_sparsity(spec: CompressionSpec, zeros: int, weights: int, where: str) -> None:
    """Raise :class:`SpecError` if ``zeros`` of ``weights`` compressed weights fall short of the
    spec's target sparsity (beyond rounding): the tensors are not what the spec describes."""
    measured = zeros / max(1, weights)
    if measured + SPARSITY_SLACK < spec.sparsity:
        raise SpecError(f"{where}: the weights are {measured:.4f} sparse, but the compression spec's target is "
                        f"{spec.sparsity}: the tensors do not belong to this spec")


def read_spec(doc: Mapping[str, Any], where: str, need: str | None = None) -> CompressionSpec | None:
    """The spec of a model file's meta (``meta["compression"]``) or of an export header (its
    top-level ``bits`` / ``sparsity`` / ``activation_quant``). ``None``: an fp32 model; with ``need``
    (what requires a spec, e.g. ``"the integer runtime"``) a missing spec raises :class:`SpecError`."""
    if "compression" in doc:
        fields = doc["compression"]
    elif "bits" in doc or "activation_quant" in doc:
        fields = doc
    else:
        fields = None
    if fields is None:
        if need is None:
            return None
        raise SpecError(f"{where}: {need} needs a compressed model, but it has no compression spec "
                        "(meta['compression']): it is an fp32 model; use the compress or mwer stage's output")
    if not isinstance(fields, Mapping):
        raise SpecError(f"{where}: the compression spec is a {type(fields).__name__}, not a mapping")
    return CompressionSpec.from_dict(fields, where)


__all__ = ["GATE_SCALE", "INT16", "MAX_WEIGHT_BITS", "MIN_WEIGHT_BITS", "ROUNDING", "SKIP", "TANH_OUT_SCALE",
           "UNIT_SCALE", "ActivationPoint", "ActivationSpec", "CompressionSpec", "SpecError", "check_sparsity",
           "check_weight_bits", "is_compressed", "qmax", "read_spec"]
