"""A PyTorch model's parameters as container records (the reader never needs torch).

Integer levels come from :func:`edgeasr.quantspec.levels.weight_levels`, the grid every other
component uses: a weight that already sits on it (materialized by the compress stage) gets the same
levels back, and pruned entries stay exactly 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeasr.quantspec import SKIP, is_compressed
from edgeasr.quantspec.levels import weight_levels

from .container import TensorRecord


def qweight_record(name: str, weight, bits: int, encoding: str = "auto") -> TensorRecord:
    """A weight tensor (torch, (C_out, ...)) -> qweight record of its levels and per-channel scales."""
    q, scale = weight_levels(weight.detach().float().cpu(), bits)
    return TensorRecord.qweight(name, q.numpy(), scale.numpy().astype(np.float32), bits, encoding)


def records_from_model(model, bits: int, encoding: str = "auto", skip: Sequence[str] = SKIP) -> dict[str, TensorRecord]:
    """Every parameter of ``model`` outside ``skip``: the compressed weights
    (:func:`edgeasr.quantspec.is_compressed`) as qweight at ``bits``, the rest (biases, norm affines)
    as float32. Names are ``named_parameters`` names."""
    out: dict[str, TensorRecord] = {}
    for name, p in model.named_parameters():
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if is_compressed(name, p.dim(), tuple(skip)):
            out[name] = qweight_record(name, p, bits, encoding)
        else:
            out[name] = TensorRecord(name, "float32", p.detach().float().cpu().numpy())
    return out
