"""The evaluate stage's NPU part: a sample of utterances streamed through the integer runtime, the
work it counts costed by the NPU emulator (:mod:`edgeasr.emulator.npu`) on every profile,
calibrated against the analytical cost model, and the per-layer / per-utterance tables.
:mod:`edgeasr.stages.evaluate` runs these steps in order."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from edgeasr.decoding import greedy_search
from edgeasr.emulator import HwProfile
from edgeasr.emulator.calibration import calibrate, torch_twin, used_frames
from edgeasr.emulator.cost import CostReport, macs_per_s
from edgeasr.emulator.modelspec import VARIANTS, ModelSpec
from edgeasr.emulator.npu import UtteranceEmulation, cost_counts, emulate, energy_j, summary_line, utilization
from edgeasr.emulator.streaming import UtteranceTrace, add_counts, stream_utterance
from edgeasr.emulator.transducer import transducer_latency


def hw_dir() -> Path:
    """``conf/hw`` of the workspace if it has one, else of the source tree this package runs from."""
    here = Path("conf/hw")
    return here if here.is_dir() else Path(__file__).resolve().parents[3] / "conf" / "hw"


def latency_sample(cuts, n: int | None) -> tuple[list, object]:
    """``n`` cuts evenly spaced over the split sorted by id (deterministic), plus the median-duration
    cut (the utterance the model stages' ``emulated_latency_ms`` is measured on); ``None``: all."""
    by_id = sorted(cuts, key=lambda c: c.id)
    if not by_id:
        raise ValueError("the latency split is empty")
    median = sorted(by_id, key=lambda c: (c.duration, c.id))[len(by_id) // 2]
    if n is None or n >= len(by_id):
        picked = by_id
    else:
        n = max(1, int(n))
        picked = [by_id[(i * len(by_id)) // n] for i in range(n)]
    if median.id not in {c.id for c in picked}:
        picked.append(median)
    return picked, median


def _pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else 0.0


def summarize(results: list, hw) -> dict[str, float]:
    """One variant's emulations (``UtteranceEmulation``) on ``hw``: median/p90 of latency, RTF and
    end-of-speech latency; median energy per utterance and average power (energy / audio time);
    utilization over the whole sample (executed MACs / (total time x the variant's peak))."""
    if not results:
        return {}
    v = results[0].variant
    lat = [r.latency_s * 1e3 for r in results]
    eos = [r.eos_latency_s * 1e3 for r in results]
    rtf = [r.rtf for r in results]
    out = {
        f"{v}/latency_ms_median": round(_pct(lat, 50), 6), f"{v}/latency_ms_p90": round(_pct(lat, 90), 6),
        f"{v}/rtf_median": round(_pct(rtf, 50), 8), f"{v}/rtf_p90": round(_pct(rtf, 90), 8),
        f"{v}/eos_latency_ms_median": round(_pct(eos, 50), 6), f"{v}/eos_latency_ms_p90": round(_pct(eos, 90), 6),
    }
    if results[0].energy_j is not None:
        energy = [r.energy_j for r in results]
        out[f"{v}/energy_uj_median"] = round(_pct([e * 1e6 for e in energy], 50), 6)
        out[f"{v}/power_mw"] = round(1e3 * sum(energy) / max(1e-9, sum(r.duration_s for r in results)), 6)
    total_s = sum(r.latency_s for r in results)
    if total_s > 0:
        executed = sum(r.report.macs_executed for r in results)
        out[f"{v}/utilization"] = round(executed / (total_s * macs_per_s(hw, results[0].report.bits)), 6)
    return out


@dataclass
class LatencySample:
    """The sampled utterances streamed through the runtime (:func:`stream_sample`)."""

    cuts: list  # the sampled cuts, in the order streamed
    median_cut: Any
    traces: dict[str, UtteranceTrace]  # cut id -> its trace, in sample order
    chunk_frames: int  # input frames per chunk (of the last cut streamed)
    trace_s: float  # wall time of streaming them all
    audio_s: float

    @property
    def ids(self) -> list[str]:
        return list(self.traces)

    @property
    def median_index(self) -> int:
        return self.ids.index(self.median_cut.id)


def stream_sample(rt, spec: ModelSpec, cuts, section: DictConfig) -> LatencySample:
    """``num_latency_utts`` cuts (plus the median-length one) streamed ``chunk_ms`` at a time through
    the runtime, each chunk's work recorded."""
    n = section.num_latency_utts
    sample, median_cut = latency_sample(cuts, None if n is None else int(n))
    traces, audio_s = {}, 0.0
    t0 = time.perf_counter()
    for cut in sample:
        shift = float(cut.frame_shift)
        chunk_frames = max(1, round(float(section.chunk_ms) / 1000.0 / shift))
        feats = torch.from_numpy(cut.load_features())
        rt.reset_stats()
        traces[cut.id] = stream_utterance(rt, spec, feats, chunk_frames, shift)
        audio_s += traces[cut.id].duration_s
    return LatencySample(sample, median_cut, traces, chunk_frames, time.perf_counter() - t0, audio_s)


def streaming_metrics(rt, lat: LatencySample) -> dict[str, float]:
    """The WER pass decodes offline; the device streams: the same tokens (checked on the sample)."""
    same = 0
    for cut in lat.cuts:
        feats = torch.from_numpy(cut.load_features())
        enc, lens = rt.encode(feats.unsqueeze(0), torch.tensor([feats.shape[0]]))
        same += greedy_search(rt, enc, lens, rt.max_sym_per_frame)[0] == lat.traces[cut.id].tokens
    return {"streaming_identical_to_offline": round(same / len(lat.cuts), 6),
            "latency_utts": len(lat.traces), "runtime/latency_trace_s": round(lat.trace_s, 3),
            "runtime/streaming_cpu_rtf": round(lat.trace_s / max(lat.audio_s, 1e-9), 5),
            "chunk_frames": lat.chunk_frames}


def hw_profiles(hw_cfg, names) -> tuple[HwProfile, dict[str, HwProfile]]:
    """The configured profile (``cfg.hw``) first, then every listed ``conf/hw/<name>.yaml``."""
    main = HwProfile.from_cfg(hw_cfg)
    profiles = {main.name: main}
    for name in names:
        if str(name) not in profiles:
            profiles[str(name)] = HwProfile.from_yaml(hw_dir() / f"{name}.yaml")
    return main, profiles


def emulate_sample(lat: LatencySample, spec: ModelSpec, profiles: dict[str, HwProfile],
                   placement: str) -> dict[str, dict[str, list[UtteranceEmulation]]]:
    """Profile -> variant -> every sampled utterance's emulation (in sample order)."""
    return {pname: {v: [emulate(tr, spec, hw, v, placement) for tr in lat.traces.values()] for v in VARIANTS}
            for pname, hw in profiles.items()}


def profile_row(res: dict[str, list[UtteranceEmulation]], hw: HwProfile) -> dict[str, float]:
    """One profile's speed-ups over the whole sample and each variant's :func:`summarize`."""
    tot = {v: sum(r.latency_s for r in res[v]) for v in VARIANTS}
    moved = {v: sum(r.report.bytes_moved for r in res[v]) for v in VARIANTS}
    return {
        "speedup_sparse_vs_dense": tot["dense_int8"] / tot["sparse_int8"],
        "speedup_sparse_vs_fp32": tot["fp32"] / tot["sparse_int8"],
        "speedup_dense_vs_fp32": tot["fp32"] / tot["dense_int8"],
        "time_ratio_sparse_vs_dense": tot["sparse_int8"] / tot["dense_int8"],
        "bytes_moved_ratio_sparse_vs_dense": moved["sparse_int8"] / moved["dense_int8"],
        **{f"{v}/{k}": val for v in VARIANTS for k, val in _short(summarize(res[v], hw), v).items()},
    }


def profile_metrics(per_profile: dict[str, dict], res_main: dict[str, list], main: HwProfile) -> dict[str, float]:
    """The speed-ups on every profile, every variant's summary on the configured one."""
    metrics = {}
    for pname, row in per_profile.items():
        for k in ("speedup_sparse_vs_dense", "speedup_sparse_vs_fp32", "time_ratio_sparse_vs_dense",
                  "bytes_moved_ratio_sparse_vs_dense", "sparse_int8/latency_ms_median",
                  "sparse_int8/eos_latency_ms_median"):
            metrics[f"hw/{pname}/{k}"] = round(row[k], 6)
    for v in VARIANTS:
        metrics.update(summarize(res_main[v], main))
    row = per_profile[main.name]
    metrics.update({"speedup/sparse_vs_dense": round(row["speedup_sparse_vs_dense"], 6),
                    "speedup/sparse_vs_fp32": round(row["speedup_sparse_vs_fp32"], 6),
                    "speedup/dense_vs_fp32": round(row["speedup_dense_vs_fp32"], 6)})
    return metrics


def headline(rt, spec: ModelSpec, lat: LatencySample, med: UtteranceEmulation, main: HwProfile,
             placement: str) -> tuple[UtteranceEmulation, dict[str, float]]:
    """The model stages' headline figure, defined as they define it (median-length test utterance,
    decoded offline: one encoder pass), from the runtime's executed work; plus the streaming one
    (``med``: the median utterance streamed, sparse int8)."""
    cut = lat.median_cut
    mfeats = torch.from_numpy(cut.load_features())
    trace = stream_utterance(rt, spec, mfeats, max(1, int(mfeats.shape[0])), float(cut.frame_shift))
    offline = emulate(trace, spec, main, "sparse_int8", placement)
    return offline, {"emulated_latency_ms": round(offline.latency_s * 1e3, 6), "emulated_rtf": round(offline.rtf, 8),
                     "emulated_streaming_latency_ms": round(med.latency_s * 1e3, 6),
                     "emulated_eos_latency_ms": round(med.eos_latency_s * 1e3, 6)}


def calibration_metrics(rt, spec: ModelSpec, container, lat: LatencySample, main: HwProfile,
                        offline: UtteranceEmulation, placement: str) -> dict[str, float]:
    """The emulator against cost.py on the exported weights (``calibration/<variant>/max_rel_diff``),
    and what the model stages' analytical model says for the median utterance."""
    metrics = {}
    twin = torch_twin(container)
    mtrace = lat.traces[lat.median_cut.id]
    feats = torch.from_numpy(lat.median_cut.load_features())
    k = int(container.header["model_cfg"]["encoder"].get("frame_stack", 1))
    used = feats[: used_frames(int(feats.shape[0]), k)]
    # sparse_int8 is defined alike in both only for cost.py's formats (dense / bitmap)
    comparable = [v for v in VARIANTS if v != "sparse_int8" or set(spec.encodings) <= {"dense", "bitmap"}]
    for v in comparable:
        _, _, diff = calibrate(rt, spec, twin, main, used, len(mtrace.tokens), v, placement)
        metrics[f"calibration/{v}/max_rel_diff"] = float(max(diff.values()))
    # what the model stages report for these weights (transducer_latency, offline) vs the emulator:
    # they differ by the analytical model's extra joiner call per token and the host-side input norm
    analytic = transducer_latency(twin, main, mtrace.num_frames, len(mtrace.tokens), bits=spec.bits,
                                  placement=placement)
    metrics["analytic/emulated_latency_ms"] = round(analytic.total_s * 1e3, 6)
    metrics["calibration/analytic_over_emulated"] = round(analytic.total_s / offline.latency_s, 6)
    return metrics


def write_layer_tables(results: Path, spec: ModelSpec, lat: LatencySample, res_main: dict[str, list],
                       main: HwProfile, placement: str) -> None:
    """``layers.json`` + ``layers.txt``: per-layer rooflines of the median utterance and of the whole sample."""
    counts: dict = {}
    for tr in lat.traces.values():
        counts = add_counts(counts, tr.total)
    sample_total: dict[str, CostReport] = {v: cost_counts(counts, spec, main, v, placement) for v in VARIANTS}
    med = {v: res_main[v][lat.median_index] for v in VARIANTS}
    duration_s = med["sparse_int8"].duration_s
    tables = {"hw": main.name, "placement": placement,
              "median_utterance": {"cut_id": lat.median_cut.id, "duration_s": duration_s,
                                   **{v: _report_dict(med[v].report, main) for v in VARIANTS}},
              "sample_total": {"utterances": len(lat.traces),
                               **{v: _report_dict(sample_total[v], main) for v in VARIANTS}}}
    (results / "layers.json").write_text(json.dumps(tables, indent=1))
    text = [f"# per-layer roofline on {main.name} (placement {placement})", "",
            f"## median-length utterance {lat.median_cut.id} ({duration_s:.2f} s, streaming "
            f"{lat.chunk_frames}-frame chunks)"]
    for v in VARIANTS:
        text += [summary_line(med[v]), med[v].report.table(), ""]
    text += [f"## all {len(lat.traces)} sampled utterances together"]
    for v in VARIANTS:
        text += [sample_total[v].table(), ""]
    (results / "layers.txt").write_text("\n".join(text) + "\n")


def write_latencies(results: Path, lat: LatencySample, res_main: dict[str, list], main: HwProfile) -> None:
    """``latency.json``: every sampled utterance's figures for every variant on the configured profile."""
    rows = []
    for i, cid in enumerate(lat.ids):
        tr = lat.traces[cid]
        rows.append({"cut_id": cid, "duration_s": tr.duration_s, "input_frames": tr.num_frames,
                     "encoder_frames": tr.encoder_frames, "tokens": len(tr.tokens), "chunks": len(tr.chunks),
                     **{f"{v}/{key}": val for v in VARIANTS for key, val in _utt(res_main[v][i]).items()}})
    (results / "latency.json").write_text(json.dumps({"hw": main.name, "utterances": rows}, indent=1))


def _short(d: dict[str, float], variant: str) -> dict[str, float]:
    return {k.split("/", 1)[1]: v for k, v in d.items() if k.startswith(variant + "/")}


def _utt(r) -> dict[str, float]:
    return {"latency_ms": r.latency_s * 1e3, "eos_latency_ms": r.eos_latency_s * 1e3, "rtf": r.rtf,
            "energy_uj": None if r.energy_j is None else r.energy_j * 1e6, "utilization": r.utilization}


def _report_dict(report, hw) -> dict:
    d = report.to_dict()
    d["energy_j"] = energy_j(report, hw)
    d["utilization"] = utilization(report, hw)
    return d
