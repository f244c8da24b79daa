"""NPU cost model: per-layer MACs, weight bytes at a precision/sparsity, and roofline latency on a profile.

    records = profile_layers(lambda: model(x), model)      # MACs from the shapes a real forward sees
    report = estimate(records, model, HwProfile.from_cfg(cfg.hw), bits=8)
    report.total_s, report.table(), report.to_dict()

See transducer.transducer_latency for a whole RNN-T utterance (encoder + greedy decoding loop), and
npu (the NPU emulator) for the same roofline over the work the integer runtime really executes.
"""

from .cost import (
    CostReport,
    LayerCost,
    LayerWork,
    estimate,
    macs_per_s,
    model_size_bytes,
    model_sparsity,
    roofline,
    weight_bytes,
)
from .hw import HwProfile
from .profile import LayerRecord, profile_layers
from .transducer import transducer_latency

__all__ = [
    "CostReport",
    "HwProfile",
    "LayerCost",
    "LayerRecord",
    "LayerWork",
    "estimate",
    "macs_per_s",
    "model_size_bytes",
    "model_sparsity",
    "profile_layers",
    "roofline",
    "transducer_latency",
    "weight_bytes",
]
