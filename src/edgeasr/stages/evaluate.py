"""The ``evaluate`` stage: the exported student (``data/export/student.edgeasr``) as a device runs it.

* WER per split (``evaluate.eval_splits``, every utterance) from the integer runtime
  (:mod:`edgeasr.runtime`), recogs/errs files as the other stages write them. The
  runtime's streaming is bit-exact to one whole-utterance call and streaming greedy search shares
  the offline loop, so these are also the streaming transcripts.
* The NPU emulator (:mod:`edgeasr.emulator.npu`) on ``num_latency_utts`` utterances of
  ``latency_split``, streamed ``chunk_ms`` at a time through the runtime, which counts the MACs it
  executes per layer: emulated latency (median, p90), RTF, latency after the end of speech,
  energy, utilization, for fp32, dense int8 and sparse int8 on the configured ``hw`` profile;
  the sparse-vs-dense speed-up on every profile in ``evaluate.profiles`` (``conf/hw/<name>.yaml``).
* Calibration against the analytical cost model (``cost.py``, which the model stages report):
  on the median-length utterance, the runtime driven with ``transducer_latency``'s call pattern and
  the analytical model on the exported weights must agree (``calibration/<variant>/max_rel_diff``,
  0 up to float rounding); what the model stages' analytical model says for the real decode of that
  utterance is reported next to the emulated figure (``analytic/emulated_latency_ms``,
  ``calibration/analytic_over_emulated``).
* ``emulated_latency_ms`` / ``emulated_rtf`` are defined as the model stages define theirs (sparse
  int8, the median-length test utterance decoded offline: one encoder pass), so the pipeline report
  compares like with like; ``emulated_streaming_latency_ms`` / ``emulated_eos_latency_ms`` stream it.

* Beside the reference recognizer (the ``reference`` stage, ``reports/reference.json``): our
  transcripts re-scored under Whisper's English normalizer (``wer_whisper_norm/<split>``, files in
  ``results/whisper_norm/``, when the ``reference`` extra is installed), the reference's report as
  ``reference/<key>``, and ``size_ratio_reference`` / ``wer_ratio_reference`` /
  ``wer_whisper_norm_ratio_reference`` (ours over the reference's).

Outputs: ``data/evaluate/results/`` (recogs/errs, ``layers.json`` + ``layers.txt`` per-layer tables,
``latency.json`` per utterance, ``profiles.json``, ``roofline.png``), ``reports/evaluate.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from edgeasr.emulator.plot import roofline_figure

from .prologue import open_stage

log = logging.getLogger(__name__)

STAGE = "evaluate"


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
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else 0.0


def summarize(results: list, hw) -> dict[str, float]:
    """One variant's emulations (``npu.UtteranceEmulation``) on ``hw``: median/p90 of latency, RTF and
    end-of-speech latency; median energy per utterance and average power (energy / audio time);
    utilization over the whole sample (executed MACs / (total time x the variant's peak))."""
    from edgeasr.emulator.cost import macs_per_s

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


def verify_sherpa(cfg: DictConfig, sc: DictConfig, data_dir: Path, dm, results: Path) -> dict[str, float]:
    """sherpa-onnx (in a subprocess: its errors exit the process) against our own greedy decode of
    the same float weights, offline and streaming, fp32 and int8; and contextual biasing through
    its modified beam search with each utterance's context list as hotwords."""
    from edgeasr.deploy.sherpa import hotword_wer, utterances_from_cuts, verify_bundle
    from edgeasr.export.sherpa import SherpaBundle
    from edgeasr.models.io import load_model

    model, _ = load_model(data_dir / str(cfg.export.source) / "model.pt")
    root = data_dir / "export" / "sherpa"
    metrics: dict[str, float] = {}
    mismatches = {}
    for split in sc.splits:
        utts = utterances_from_cuts(dm.cuts(split))
        for mode in ("offline", "streaming"):
            bundle = SherpaBundle.load(root / mode)
            for int8 in ((False, True) if bundle.int8 else (False,)):
                key = f"sherpa/{mode}/{'int8' if int8 else 'fp32'}/{split}/"
                ag = verify_bundle(model, bundle, utts, int8=int8)
                metrics.update(ag.as_dict(key))
                mismatches[key] = ag.mismatches
    if sc.hotwords_split:
        utts = utterances_from_cuts(dm.cuts(str(sc.hotwords_split)))
        hw = hotword_wer(SherpaBundle.load(root / "offline"), utts, hotwords_score=float(sc.hotwords_score),
                         max_active_paths=int(sc.beam))
        metrics.update({f"sherpa/hotwords/{k}": v for k, v in hw.items() if isinstance(v, (int, float))})
    (results / "sherpa_mismatches.json").write_text(json.dumps(mismatches, indent=1))
    return metrics


def whisper_norm_wer(splits, results: Path) -> dict[str, float]:
    """``wer_whisper_norm/<split>`` of our recogs files re-scored under Whisper's English normalizer
    (as the reference stage scores Whisper), files under ``results/whisper_norm/``; nothing without
    the ``reference`` extra."""
    from edgeasr import reference

    try:
        norm = reference.whisper_normalizer()
    except ImportError as e:
        log.info("%s: no Whisper-normalized WER (whisper-normalizer not installed: %s)", STAGE, e)
        return {}
    metrics = {}
    for split in splits:
        path = results / f"recogs-{split}.txt"
        if not path.is_file():
            continue
        acc = reference.score_whisper_norm(reference.read_recogs(path), norm)
        (results / "whisper_norm").mkdir(exist_ok=True)
        acc.write_recogs(results / "whisper_norm" / f"recogs-{split}.txt")
        acc.write_errs(results / "whisper_norm" / f"errs-{split}.txt")
        metrics[f"wer_whisper_norm/{split}"] = round(acc.wer, 4)
    if "wer_whisper_norm/test" in metrics:
        metrics["wer_whisper_norm"] = metrics["wer_whisper_norm/test"]
    return metrics


def reference_metrics(path: Path, ours: dict[str, float]) -> dict[str, float]:
    """The reference stage's report as ``reference/<key>``, and ratios of ours to it:
    ``size_ratio_reference`` (our exported file's bytes / the reference model's bytes),
    ``wer_ratio_reference`` (test WER, our scoring) and ``wer_whisper_norm_ratio_reference``."""
    if not path.is_file():
        log.info("%s: %s not found: no reference figures (run the reference stage)", STAGE, path)
        return {}
    ref = json.loads(path.read_text())
    metrics = {f"reference/{k}": v for k, v in ref.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if ref.get("skipped"):
        log.info("%s: the reference stage was skipped (see data/reference/results/skipped.txt)", STAGE)
        return metrics
    if ref.get("size_bytes") and "size_bytes" in ours:
        metrics["size_ratio_reference"] = float(f"{ours['size_bytes'] / ref['size_bytes']:.6g}")  # ~0.006
    for key, name in (("wer", "wer_ratio_reference"), ("wer_whisper_norm", "wer_whisper_norm_ratio_reference")):
        if ref.get(key) and key in ours:
            metrics[name] = round(ours[key] / ref[key], 6)
    return metrics


def run(cfg: DictConfig) -> dict[str, float]:
    import torch

    from edgeasr import pipeline_report
    from edgeasr.decoding import greedy_search
    from edgeasr.emulator import HwProfile, npu
    from edgeasr.emulator.transducer import transducer_latency
    from edgeasr.evaluation import evaluate_splits
    from edgeasr.export import read_container
    from edgeasr.runtime import load_student

    from .common import stage_datamodule

    section = cfg[STAGE]

    # threads: see conf, intra-op threads only slow the runtime down
    with open_stage(STAGE, cfg, threads=section.num_threads) as stage:
        data_dir, results, tracker = stage.data_dir, stage.results, stage.tracker
        path = data_dir / "export" / "student.edgeasr"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; run the export stage first (`dvc repro export`)")
        container = read_container(path)
        rt = load_student(path, container)
        spec = npu.ModelSpec.from_container(container, host_layers=list(section.host_layers))
        placement = str(section.placement)
        variants = npu.VARIANTS
        metrics: dict[str, float] = {
            "size_bytes": int(path.stat().st_size),
            "sparsity": round(spec.sparsity, 6),
            "params": int(sum(s.weights for s in spec.layers.values())),
            **{f"{v}/weight_bytes": spec.stored_bytes(v) for v in variants},
        }

        # 1. WER of the integer runtime, every utterance of every split
        dm = stage_datamodule(cfg, section)
        t0 = time.perf_counter()
        metrics.update(evaluate_splits(rt, dm, section.eval_splits, results, section.decoding.method,
                                       section.decoding.beam, int(section.decoding.max_sym_per_frame)))
        metrics["runtime/wer_decode_s"] = round(time.perf_counter() - t0, 3)
        if section.sherpa.enabled:
            metrics.update(verify_sherpa(cfg, section.sherpa, data_dir, dm, results))
        # the same transcripts under Whisper's normalizer, and the reference stage's figures beside ours
        metrics.update(whisper_norm_wer(section.eval_splits, results))
        metrics.update(reference_metrics(tracker.report_dir / "reference.json", metrics))

        # 2. stream a sample through the runtime, recording each chunk's work
        cuts = dm.cuts(str(section.latency_split))
        n = section.num_latency_utts
        sample, median_cut = latency_sample(cuts, None if n is None else int(n))
        traces, audio_s = {}, 0.0
        t0 = time.perf_counter()
        for cut in sample:
            shift = float(cut.frame_shift)
            chunk_frames = max(1, round(float(section.chunk_ms) / 1000.0 / shift))
            feats = torch.from_numpy(cut.load_features())
            rt.reset_stats()
            traces[cut.id] = npu.stream_utterance(rt, spec, feats, chunk_frames, shift)
            audio_s += traces[cut.id].duration_s
        trace_s = time.perf_counter() - t0
        # the WER pass decodes offline; the device streams: the same tokens (checked on the sample)
        same = 0
        for cut in sample:
            feats = torch.from_numpy(cut.load_features())
            enc, lens = rt.encode(feats.unsqueeze(0), torch.tensor([feats.shape[0]]))
            same += greedy_search(rt, enc, lens)[0] == traces[cut.id].tokens
        metrics["streaming_identical_to_offline"] = round(same / len(sample), 6)
        metrics.update({"latency_utts": len(traces), "runtime/latency_trace_s": round(trace_s, 3),
                        "runtime/streaming_cpu_rtf": round(trace_s / max(audio_s, 1e-9), 5),
                        "chunk_frames": chunk_frames})

        # 3. emulate: every variant on the configured profile, the speed-ups on every listed profile
        main = HwProfile.from_cfg(cfg.hw)
        profiles = {main.name: main}
        for name in section.profiles:
            if str(name) not in profiles:
                profiles[str(name)] = HwProfile.from_yaml(hw_dir() / f"{name}.yaml")
        emulated: dict[str, dict[str, list]] = {}
        for pname, hw in profiles.items():
            emulated[pname] = {v: [npu.emulate(tr, spec, hw, v, placement) for tr in traces.values()] for v in variants}
        per_profile = {}
        for pname, res in emulated.items():
            tot = {v: sum(r.latency_s for r in res[v]) for v in variants}
            moved = {v: sum(r.report.bytes_moved for r in res[v]) for v in variants}
            row = {
                "speedup_sparse_vs_dense": tot["dense_int8"] / tot["sparse_int8"],
                "speedup_sparse_vs_fp32": tot["fp32"] / tot["sparse_int8"],
                "speedup_dense_vs_fp32": tot["fp32"] / tot["dense_int8"],
                "time_ratio_sparse_vs_dense": tot["sparse_int8"] / tot["dense_int8"],
                "bytes_moved_ratio_sparse_vs_dense": moved["sparse_int8"] / moved["dense_int8"],
                **{f"{v}/{k}": val for v in variants for k, val in _short(summarize(res[v], profiles[pname]), v).items()},
            }
            per_profile[pname] = row
            for k in ("speedup_sparse_vs_dense", "speedup_sparse_vs_fp32", "time_ratio_sparse_vs_dense",
                      "bytes_moved_ratio_sparse_vs_dense", "sparse_int8/latency_ms_median",
                      "sparse_int8/eos_latency_ms_median"):
                metrics[f"hw/{pname}/{k}"] = round(row[k], 6)
        res_main = emulated[main.name]
        for v in variants:
            metrics.update(summarize(res_main[v], main))
        row = per_profile[main.name]
        metrics.update({"speedup/sparse_vs_dense": round(row["speedup_sparse_vs_dense"], 6),
                        "speedup/sparse_vs_fp32": round(row["speedup_sparse_vs_fp32"], 6),
                        "speedup/dense_vs_fp32": round(row["speedup_dense_vs_fp32"], 6)})

        # the model stages' headline figure, defined as they define it (median-length test utterance,
        # decoded offline: one encoder pass), from the runtime's executed work; plus the streaming one
        ids = list(traces)
        med = res_main["sparse_int8"][ids.index(median_cut.id)]
        mfeats = torch.from_numpy(median_cut.load_features())
        offline = npu.emulate(npu.stream_utterance(rt, spec, mfeats, max(1, int(mfeats.shape[0])),
                                                   float(median_cut.frame_shift)), spec, main, "sparse_int8", placement)
        metrics.update({"emulated_latency_ms": round(offline.latency_s * 1e3, 6), "emulated_rtf": round(offline.rtf, 8),
                        "emulated_streaming_latency_ms": round(med.latency_s * 1e3, 6),
                        "emulated_eos_latency_ms": round(med.eos_latency_s * 1e3, 6)})

        # 4. calibration against cost.py on the exported weights
        twin = npu.torch_twin(container)
        mtrace = traces[median_cut.id]
        feats = torch.from_numpy(median_cut.load_features())
        k = int(container.header["model_cfg"]["encoder"].get("frame_stack", 1))
        used = feats[: npu.used_frames(int(feats.shape[0]), k)]
        # sparse_int8 is defined alike in both only for cost.py's formats (dense / bitmap)
        comparable = [v for v in variants if v != "sparse_int8" or set(spec.encodings) <= {"dense", "bitmap"}]
        for v in comparable:
            _, _, diff = npu.calibrate(rt, spec, twin, main, used, len(mtrace.tokens), v, placement)
            metrics[f"calibration/{v}/max_rel_diff"] = float(max(diff.values()))
        # what the model stages report for these weights (transducer_latency, offline) vs the emulator:
        # they differ by the analytical model's extra joiner call per token and the host-side input norm
        analytic = transducer_latency(twin, main, mtrace.num_frames, len(mtrace.tokens), bits=spec.bits,
                                      placement=placement)
        metrics["analytic/emulated_latency_ms"] = round(analytic.total_s * 1e3, 6)
        metrics["calibration/analytic_over_emulated"] = round(analytic.total_s / offline.latency_s, 6)

        # 5. artifacts: per-layer tables, per-utterance latencies, per-profile summary, roofline
        sample_total = {}
        for v in variants:
            counts: dict = {}
            for tr in traces.values():
                counts = npu.add_counts(counts, tr.total)
            sample_total[v] = npu.cost_counts(counts, spec, main, v, placement)
        tables = {"hw": main.name, "placement": placement,
                  "median_utterance": {"cut_id": median_cut.id, "duration_s": med.duration_s,
                                       **{v: _report_dict(res_main[v][ids.index(median_cut.id)].report, main)
                                          for v in variants}},
                  "sample_total": {"utterances": len(traces), **{v: _report_dict(sample_total[v], main)
                                                                 for v in variants}}}
        (results / "layers.json").write_text(json.dumps(tables, indent=1))
        text = [f"# per-layer roofline on {main.name} (placement {placement})", "",
                f"## median-length utterance {median_cut.id} ({med.duration_s:.2f} s, streaming {chunk_frames}-frame chunks)"]
        for v in variants:
            r = res_main[v][ids.index(median_cut.id)]
            text += [npu.summary_line(r), r.report.table(), ""]
        text += [f"## all {len(traces)} sampled utterances together"]
        for v in variants:
            text += [sample_total[v].table(), ""]
        (results / "layers.txt").write_text("\n".join(text) + "\n")
        rows = []
        for i, cid in enumerate(ids):
            tr = traces[cid]
            rows.append({"cut_id": cid, "duration_s": tr.duration_s, "input_frames": tr.num_frames,
                         "encoder_frames": tr.encoder_frames, "tokens": len(tr.tokens), "chunks": len(tr.chunks),
                         **{f"{v}/{key}": val for v in variants for key, val in _utt(res_main[v][i]).items()}})
        (results / "latency.json").write_text(json.dumps({"hw": main.name, "utterances": rows}, indent=1))
        (results / "profiles.json").write_text(json.dumps(per_profile, indent=1))
        fig = roofline_figure({v: res_main[v][ids.index(median_cut.id)].report for v in variants}, main,
                                  f"roofline on {main.name}: per layer, median-length utterance")
        fig.savefig(results / "roofline.png", dpi=120)
        tracker.log_figure(fig, "roofline.png")

        report_path = tracker.log_report(metrics)
        for f in sorted(results.glob("*")):
            if f.is_file():
                tracker.log_artifact(f, "results")
        if (results / "whisper_norm").is_dir():
            tracker.log_artifact(results / "whisper_norm", "results/whisper_norm")
        # The whole pipeline, teacher -> exported student, now that this stage's report exists:
        # reports/pipeline.csv (dvc plots show) and the same as a figure on this run.
        rows = pipeline_report.collect(report_path.parent)
        tracker.log_artifact(pipeline_report.write_csv(rows, report_path.parent / "pipeline.csv"), "pipeline")
        tracker.log_figure(pipeline_report.figure(rows), "pipeline.png")
        log.info("%s: %s", STAGE, metrics)
    return metrics


def _short(d: dict[str, float], variant: str) -> dict[str, float]:
    return {k.split("/", 1)[1]: v for k, v in d.items() if k.startswith(variant + "/")}


def _utt(r) -> dict[str, float]:
    return {"latency_ms": r.latency_s * 1e3, "eos_latency_ms": r.eos_latency_s * 1e3, "rtf": r.rtf,
            "energy_uj": None if r.energy_j is None else r.energy_j * 1e6, "utilization": r.utilization}


def _report_dict(report, hw) -> dict:
    from edgeasr.emulator import npu

    d = report.to_dict()
    d["energy_j"] = npu.energy_j(report, hw)
    d["utilization"] = npu.utilization(report, hw)
    return d
