"""Convenience: a PyTorch model's parameters as container records (the reader never needs torch).

The export stage builds its own records (it also maps biases to int32 and fills activation
quantization into the header); this helper is the plain version for tests, benchmarks and quick looks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .container import TensorRecord


def qweight_record(name: str, weight, bits: int, encoding: str = "auto") -> TensorRecord:
    """A weight tensor (torch) -> qweight record via ``edgeasr.compression.quantize``.

    A weight that already sits on the grid (materialized by the compress stage) gets the same levels
    back: the recomputed scale is ``max|w| / qmax`` as before, and pruned entries stay exactly 0.
    """
    from edgeasr.compression import quantize

    q, scale = quantize(weight.detach().float().cpu(), bits)
    return TensorRecord.qweight(name, q.numpy(), scale.numpy().astype(np.float32), bits, encoding)


def records_from_model(model, bits: int, encoding: str = "auto",
                       skip: Sequence[str] = ("ctc_head",)) -> dict[str, TensorRecord]:
    """Every parameter of ``model`` outside ``skip``: weights (ndim >= 2, the compressed ones) as
    qweight at ``bits``, the rest (biases, norm affines) as float32. Names are ``named_parameters`` names."""
    from edgeasr.compression import weight_targets

    weights = {name for name, _, _ in weight_targets(model, tuple(skip))}
    out: dict[str, TensorRecord] = {}
    for name, p in model.named_parameters():
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if name in weights:
            out[name] = qweight_record(name, p, bits, encoding)
        else:
            out[name] = TensorRecord(name, "float32", p.detach().float().cpu().numpy())
    return out
