"""The roofline figure of emulated (or analytical) cost reports, one marker per variant."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing global

from .cost import CostReport, macs_per_s
from .hw import HwProfile


def roofline_figure(reports: Mapping[str, CostReport], hw: HwProfile, title: str = ""):
    """Per layer: operational intensity (executed MACs per weight byte moved) vs attained MAC/s, one
    marker per variant, with the profile's compute roofs (int8, fp32) and one bandwidth roof per level."""
    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    pts = [(c.macs_executed / c.bytes_moved, c.macs_executed / c.time_s)
           for r in reports.values() for c in r.layers if c.macs_executed > 0 and c.bytes_moved > 0 and c.time_s > 0]
    if not pts:
        ax.text(0.5, 0.5, "no layer with MACs", ha="center", transform=ax.transAxes)
        return fig
    ois = np.array([p[0] for p in pts])
    lo, hi = ois.min() / 4, ois.max() * 4
    oi = np.logspace(np.log10(lo), np.log10(hi), 200)
    bits_seen = sorted({r.bits for r in reports.values()})
    for bits in bits_seen:
        peak = macs_per_s(hw, bits)
        ax.plot(oi, np.full_like(oi, peak), "k-" if bits <= 8 else "k--", lw=1.2,
                label=f"compute roof {'int8' if bits <= 8 else f'{bits}-bit'} {peak:.3g} MAC/s")
    for level, bw in sorted(hw.bandwidth_bytes_per_s.items()):
        ax.plot(oi, np.minimum(oi * bw, macs_per_s(hw, 8)), ":", lw=1.2, label=f"{level} {bw:.3g} B/s")
    markers = {"fp32": "s", "dense_int8": "o", "sparse_int8": "^"}
    for variant, r in reports.items():
        xs = [c.macs_executed / c.bytes_moved for c in r.layers if c.macs_executed > 0 and c.bytes_moved > 0]
        ys = [c.macs_executed / c.time_s for c in r.layers if c.macs_executed > 0 and c.bytes_moved > 0]
        ax.scatter(xs, ys, marker=markers.get(variant, "x"), s=36, alpha=0.8, label=variant)
    if "sparse_int8" in reports:
        for c in reports["sparse_int8"].layers:
            if c.macs_executed > 0 and c.bytes_moved > 0:
                ax.annotate(c.name.split(".", 1)[-1], (c.macs_executed / c.bytes_moved, c.macs_executed / c.time_s),
                            fontsize=6, alpha=0.7, xytext=(3, -8), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("operational intensity (executed MACs / weight byte moved)")
    ax.set_ylabel("attained MAC/s")
    ax.set_title(title or f"roofline on {hw.name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
