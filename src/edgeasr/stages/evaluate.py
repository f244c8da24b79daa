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

* N-best word lattices from the runtime's modified beam search (``evaluate.lattice``,
  :mod:`edgeasr.stages.evaluate_lattice`): oracle WER beside the 1-best for each N, bytes per
  utterance against the audio's, drawings of a few as MLflow artifacts.

* The dual end-pointers (``evaluate.endpoint``, :mod:`edgeasr.stages.evaluate_endpoint`): the
  end-pointing splits streamed through the runtime; latency after the end of speech, early cuts,
  resets, WER at each decision, the latency/early-cut trade-off over thresholds.

* Shallow-fusion context biasing (``evaluate.biasing``, :mod:`edgeasr.stages.evaluate_biasing`):
  each utterance's list of names (true entities + distractors) boosting the runtime's beam search;
  WER, B-WER, U-WER, entity recall per list size, weights chosen on ``dev_rare``.

* The cloud side (``evaluate.rescore``, :mod:`edgeasr.stages.evaluate_rescore`): those lattices
  rescored with the ``train_lm`` stage's LM, weights tuned on dev, WER before and after per split.

* Beside the reference recognizer (the ``reference`` stage, ``reports/reference.json``): our
  transcripts re-scored under Whisper's English normalizer (``wer_whisper_norm/<split>``, files in
  ``results/whisper_norm/``, when the ``reference`` extra is installed), the reference's report as
  ``reference/<key>``, and ``size_ratio_reference`` / ``wer_ratio_reference`` /
  ``wer_whisper_norm_ratio_reference`` (ours over the reference's).

The NPU steps (2-4 in :func:`run`) are in :mod:`edgeasr.stages.evaluate_npu`.

Outputs: ``data/evaluate/results/`` (recogs/errs, ``layers.json`` + ``layers.txt`` per-layer tables,
``latency.json`` per utterance, ``profiles.json``, ``roofline.png``, ``lattices/``, ``rescore/``),
``reports/evaluate.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from edgeasr import pipeline_report, reference
from edgeasr.data.features import KaldiFbankConfig
from edgeasr.deploy.sherpa import hotword_wer, utterances_from_cuts, verify_bundle
from edgeasr.emulator.modelspec import VARIANTS, ModelSpec
from edgeasr.emulator.plot import roofline_figure
from edgeasr.evaluation import add_test_totals, evaluate_splits, wer_metrics
from edgeasr.export import read_container
from edgeasr.export.sherpa import SherpaBundle
from edgeasr.metrics import WerAccumulator
from edgeasr.models.io import load_model
from edgeasr.runtime import load_student

from .common import stage_datamodule
from .evaluate_biasing import biasing_metrics
from .evaluate_endpoint import endpoint_metrics
from .evaluate_lattice import lattice_metrics, pytorch_student
from .evaluate_rescore import rescore_metrics
from .evaluate_npu import (
    calibration_metrics,
    emulate_sample,
    headline,
    hw_profiles,
    profile_metrics,
    profile_row,
    stream_sample,
    streaming_metrics,
    write_latencies,
    write_layer_tables,
)
from .prologue import Stage, open_stage

log = logging.getLogger(__name__)

STAGE = "evaluate"


@dataclass
class Student:
    """The exported student as this stage reads it: the file, the integer runtime, the emulator's spec."""

    path: Path
    container: Any
    rt: Any
    spec: ModelSpec


def load_exported(data_dir: Path, host_layers) -> Student:
    path = data_dir / "export" / "student.edgeasr"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the export stage first (`dvc repro export`)")
    container = read_container(path)
    rt = load_student(path, container)
    return Student(path, container, rt, ModelSpec.from_container(container, host_layers=list(host_layers)))


def model_figures(student: Student) -> dict[str, float]:
    """Size on disk, sparsity, parameters and the NPU weight bytes of every variant."""
    spec = student.spec
    return {
        "size_bytes": int(student.path.stat().st_size),
        "sparsity": round(spec.sparsity, 6),
        "params": int(sum(s.weights for s in spec.layers.values())),
        **{f"{v}/weight_bytes": spec.stored_bytes(v) for v in VARIANTS},
    }


def runtime_wer(rt, dm, section: DictConfig, results: Path, decoded: dict[str, WerAccumulator]) -> dict[str, float]:
    """WER of the integer runtime, every utterance of every split, and the time it took. ``decoded``:
    splits the lattice pass already transcribed with this very search (``evaluate.decoding`` beam
    = ``lattice.beam``), scored from it instead of decoding them again."""
    t0 = time.perf_counter()
    dec = section.decoding
    reuse = {s: acc for s, acc in decoded.items() if s in section.eval_splits}
    for split, acc in reuse.items():
        acc.write_recogs(results / f"recogs-{split}.txt")
        acc.write_errs(results / f"errs-{split}.txt")
    per_frame = int(dec.max_sym_per_frame) if dec.method == "beam" else rt.max_sym_per_frame  # greedy: the header's
    metrics = evaluate_splits(rt, dm, [s for s in section.eval_splits if s not in reuse], results, dec.method,
                              dec.beam, per_frame)
    for acc_split, acc in reuse.items():
        metrics.update(wer_metrics(acc, acc_split))
    metrics = add_test_totals(metrics)
    metrics["runtime/wer_decode_s"] = round(time.perf_counter() - t0, 3)
    metrics["runtime/wer_splits_from_lattices"] = len(reuse)
    return metrics


def same_search(section: DictConfig) -> bool:
    """Whether the lattice pass runs the WER decode's search (then its 1-best is the WER's)."""
    lc, dec = section.lattice, section.decoding
    return (bool(lc.enabled) and dec.method == "beam" and int(dec.beam) == int(lc.beam)
            and int(dec.max_sym_per_frame) == int(lc.max_sym_per_frame))


def verify_sherpa(cfg: DictConfig, sc: DictConfig, data_dir: Path, dm, results: Path) -> dict[str, float]:
    """sherpa-onnx (in a subprocess: its errors exit the process) against our own greedy decode of
    the same float weights, offline and streaming, fp32 and int8; and contextual biasing through
    its modified beam search with each utterance's context list as hotwords."""
    model, _ = load_model(data_dir / str(cfg.export.source) / "model.pt")
    root = data_dir / "export" / "sherpa"
    metrics: dict[str, float] = {}
    mismatches = {}
    timeout = sc.get("timeout_s")  # None: the worker's default, scaled to the audio it decodes
    for split in sc.splits:
        utts = utterances_from_cuts(dm.cuts(split))
        for mode in ("offline", "streaming"):
            bundle = SherpaBundle.load(root / mode)
            for int8 in ((False, True) if bundle.int8 else (False,)):
                key = f"sherpa/{mode}/{'int8' if int8 else 'fp32'}/{split}/"
                ag = verify_bundle(model, bundle, utts, int8=int8, timeout=timeout)
                metrics.update(ag.as_dict(key))
                mismatches[key] = ag.mismatches
    if sc.hotwords_split:
        utts = utterances_from_cuts(dm.cuts(str(sc.hotwords_split)))
        hw = hotword_wer(SherpaBundle.load(root / "offline"), utts, hotwords_score=float(sc.hotwords_score),
                         max_active_paths=int(sc.beam), timeout=timeout)
        metrics.update({f"sherpa/hotwords/{k}": v for k, v in hw.items() if isinstance(v, (int, float))})
    (results / "sherpa_mismatches.json").write_text(json.dumps(mismatches, indent=1))
    return metrics


def whisper_norm_wer(splits, results: Path) -> dict[str, float]:
    """``wer_whisper_norm/<split>`` of our recogs files re-scored under Whisper's English normalizer
    (as the reference stage scores Whisper), files under ``results/whisper_norm/``; nothing without
    the ``reference`` extra."""
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


def log_outputs(stage: Stage, metrics: dict[str, float]) -> None:
    """The report, ``results/`` as artifacts, and the whole pipeline (teacher -> exported student) now
    that this stage's report exists: ``reports/pipeline.csv`` (dvc plots show) and the same as a figure,
    also on the pipeline's parent run (whose MLflow note shows it: edgeasr.tracking.note)."""
    tracker, results = stage.tracker, stage.results
    report_path = tracker.log_report(metrics)
    for f in sorted(results.glob("*")):
        if f.is_file():
            tracker.log_artifact(f, "results")
    if (results / "whisper_norm").is_dir():
        tracker.log_artifact(results / "whisper_norm", "results/whisper_norm")
    rows = pipeline_report.collect(report_path.parent)
    tracker.log_artifact(pipeline_report.write_csv(rows, report_path.parent / "pipeline.csv"), "pipeline")
    tracker.log_figure(pipeline_report.figure(rows), "pipeline.png", on_parent=True)


def run(cfg: DictConfig) -> dict[str, float]:
    section = cfg[STAGE]
    placement = str(section.placement)

    # threads: see conf, intra-op threads only slow the runtime down
    with open_stage(STAGE, cfg, threads=section.num_threads) as stage:
        results, tracker = stage.results, stage.tracker
        student = load_exported(stage.data_dir, section.host_layers)
        rt, spec = student.rt, student.spec
        metrics = model_figures(student)

        # 1. N-best word lattices (oracle WER, bytes on the wire against the audio's), the cloud's
        # rescoring of them, and WER of the integer runtime on every utterance of every split
        dm = stage_datamodule(cfg, section)
        lc, bc, one_best = section.lattice, section.biasing, {}
        if lc.enabled:
            fq = pytorch_student(stage.data_dir / str(cfg.export.source) / "model.pt") if lc.compare_pytorch else None
            lattice_m, one_best = lattice_metrics(rt, dm, lc, results, fq)
            metrics.update(lattice_m)
            if (results / "lattices" / "draw").is_dir():
                tracker.log_artifact(results / "lattices" / "draw", "lattices")
            if section.rescore.enabled:
                prep = stage.data_dir / "prepare"
                metrics.update(rescore_metrics(section.rescore, stage.data_dir / "train_lm" / "lm.pt",
                                               prep / "tokenizer" / "bpe.model", rt.tokens, dm, results))
                tracker.log_artifact(results / "rescore", "rescore")
        metrics.update(runtime_wer(rt, dm, section, results, one_best if same_search(section) else {}))
        if section.endpoint.enabled:  # the dual end-pointers on the end-pointing splits
            metrics.update(endpoint_metrics(rt, student.path, section.endpoint, lc, stage.data_dir / "prepare",
                                            KaldiFbankConfig.from_cfg(cfg.prepare.features), results, tracker))
            if (results / "endpoint").is_dir():
                tracker.log_artifact(results / "endpoint", "endpoint")
        if bc.enabled:  # shallow fusion towards each utterance's context list
            src = stage.data_dir / str(cfg.export.source) / "model.pt"
            metrics.update(biasing_metrics(student.path, bc, int(cfg.seed), stage.data_dir / "prepare",
                                           KaldiFbankConfig.from_cfg(cfg.prepare.features), results,
                                           src if bc.compare_pytorch else None))
            tracker.log_artifact(results / "biasing", "biasing")
        if section.sherpa.enabled:
            metrics.update(verify_sherpa(cfg, section.sherpa, stage.data_dir, dm, results))
        # the same transcripts under Whisper's normalizer, and the reference stage's figures beside ours
        metrics.update(whisper_norm_wer(section.eval_splits, results))
        metrics.update(reference_metrics(tracker.report_dir / "reference.json", metrics))

        # 2. stream a sample through the runtime, recording each chunk's work
        lat = stream_sample(rt, spec, dm.cuts(str(section.latency_split)), section)
        metrics.update(streaming_metrics(rt, lat))

        # 3. emulate: every variant on the configured profile, the speed-ups on every listed profile
        main, profiles = hw_profiles(cfg.hw, section.profiles)
        emulated = emulate_sample(lat, spec, profiles, placement)
        per_profile = {pname: profile_row(res, profiles[pname]) for pname, res in emulated.items()}
        res_main = emulated[main.name]
        metrics.update(profile_metrics(per_profile, res_main, main))
        offline, figures = headline(rt, spec, lat, res_main["sparse_int8"][lat.median_index], main, placement)
        metrics.update(figures)

        # 4. calibration against cost.py on the exported weights
        metrics.update(calibration_metrics(rt, spec, student.container, lat, main, offline, placement))

        # 5. artifacts: per-layer tables, per-utterance latencies, per-profile summary, roofline
        write_layer_tables(results, spec, lat, res_main, main, placement)
        write_latencies(results, lat, res_main, main)
        (results / "profiles.json").write_text(json.dumps(per_profile, indent=1))
        fig = roofline_figure({v: res_main[v][lat.median_index].report for v in VARIANTS}, main,
                              f"roofline on {main.name}: per layer, median-length utterance")
        fig.savefig(results / "roofline.png", dpi=120)
        tracker.log_figure(fig, "roofline.png")

        log_outputs(stage, metrics)
        log.info("%s: %s", STAGE, metrics)
    return metrics
