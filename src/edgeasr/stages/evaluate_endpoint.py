"""The evaluate stage's end-pointing part (``evaluate.endpoint``): the dual end-pointers of issue 16.

The end-pointing splits (``data/prepare/endpoint/cuts_{dev_pause,test_pause}``: trailing silence,
hesitations inside some requests, the true end of speech from the synthesis) are streamed through
the integer runtime ``chunk_ms`` at a time with modified beam search carried across chunks
(:func:`edgeasr.endpoint.stream_decisions`); after the recording the stream goes on with its own
trailing noise floor (its last ``tail_s`` repeated) for ``max_wait_s``, as a microphone would.

The final rule (:class:`edgeasr.endpoint.EndpointRule`) is chosen on ``tune_split`` over the grid
``tune.*``: the lowest median latency whose early-cut rate is at most ``tune.max_early_cut``; the
speculative rule is the grid's rule whose median latency there is closest to the final's less
``speculative_lead_s`` (then the fewest early cuts: each is a reset). Per split:

* ``endpoint/{final,speculative}/latency_p50_ms|latency_p90_ms/<split>``: decision time minus the
  true end of speech, over the utterances not cut early (a stream that never decided counts as
  infinitely late: the percentile is left out when it falls there, ``missed_rate`` says how often);
* ``endpoint/{final,speculative}/early_cut_rate/<split>``: the (standing) decision came before the
  end of speech; ``endpoint/speculative/lead_ms/<split>``: the final's median latency less the
  speculative's; ``endpoint/lead_p50_ms/<split>``: the median per utterance of final minus standing
  speculative decision time;
* ``endpoint/reset_rate/<split>`` (utterances where speech came back after a speculative decision),
  ``endpoint/revised_rate/<split>`` (the final lattice's word strings differ from those of the
  speculative one that stood: the cloud must redo its work);
* ``endpoint/wer/{speculative,final,stream}/<split>``: the beam's best at the standing speculative
  decision, at the final one, and at the end of the whole stream (no end-pointing);
* ``endpoint/lattice_bytes_per_event``. Files under ``results/endpoint/``: ``tradeoff.csv`` and
  ``tradeoff.png`` (latency against early cuts over the grid, every split), ``rule.json``,
  ``events-<split>.jsonl`` (per utterance its events with times and transcripts).
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing global
from lhotse import CutSet
from omegaconf import DictConfig, OmegaConf

from edgeasr.data.features import KaldiFbank, KaldiFbankConfig
from edgeasr.endpoint import EndOfQuery, EndpointConfig, EndpointRule, Events, StreamTrace, simulate, stream_decisions
from edgeasr.lattice import build_lattice, score_nbest, serialize
from edgeasr.metrics import WerAccumulator
from edgeasr.runtime import load_student, tokens_to_text

log = logging.getLogger(__name__)


@dataclass
class Stream:
    """One utterance of an end-pointing split, streamed: reference, true end of speech, trace."""

    id: str
    ref: str
    speech_end: float
    trace: StreamTrace


def speech_end(cut) -> float:
    sup = cut.supervisions[0]
    end = (sup.custom or {}).get("speech_end")
    if not isinstance(end, (int, float)) or not 0 < end <= cut.duration:
        raise ValueError(f"{cut.id}: supervision custom speech_end={end!r} must be a time inside the recording "
                         f"(0, {cut.duration}]: the end-pointing splits record it from the synthesis")
    return float(end)


def padded_features(cut, fbank: KaldiFbank, tail_s: float, max_wait_s: float) -> torch.Tensor:
    """The cut's fbank with ``max_wait_s`` more of its own last ``tail_s`` (its noise floor) after it."""
    audio = cut.load_audio()[0]
    sr = cut.sampling_rate
    tail = audio[-max(1, int(tail_s * sr)):]
    extra = np.resize(tail, int(max_wait_s * sr))
    return torch.from_numpy(fbank.extract(np.concatenate([audio, extra]), sr))


def stream_split(rt, cuts, ec: dict, eoq: EndOfQuery, fbank: KaldiFbank, stop_s: float) -> list[Stream]:
    """Every cut streamed (:func:`edgeasr.endpoint.stream_decisions`), in id order."""
    chunk = max(1, int(round(float(ec["chunk_ms"]) / fbank.config.frame_shift_ms)))
    shift, window = fbank.config.frame_shift_ms / 1000, fbank.config.frame_length_ms / 1000
    to_words = lambda ids: tokens_to_text(rt.tokens, ids, rt.blank_id).split()  # noqa: E731
    out = []
    for cut in sorted(cuts, key=lambda c: c.id):
        feats = padded_features(cut, fbank, float(ec["tail_s"]), float(ec["max_wait_s"]))
        trace = stream_decisions(rt, feats, chunk, int(ec["beam"]), eoq, to_words, shift, window, stop_s,
                                 float(ec["vad_margin_db"]), float(ec["support_s"]), float(ec["beam_temperature"]),
                                 encode_once=True, max_sym_per_frame=int(ec["max_sym_per_frame"]))
        out.append(Stream(cut.id, cut.supervisions[0].text or "", speech_end(cut), trace))
    return out


def _stream_shard(model_path: str, manifest: str, ids: list[str], ec: dict, fbank_cfg: KaldiFbankConfig,
                  eoq_path: str, stop_s: float) -> list[Stream]:
    """A worker process: its own runtime from the exported file, one thread, the cuts ``ids``."""
    torch.set_num_threads(1)
    keep = set(ids)
    cuts = [c for c in CutSet.from_file(manifest) if c.id in keep]
    return stream_split(load_student(model_path), cuts, ec, EndOfQuery.load(eoq_path), KaldiFbank(fbank_cfg), stop_s)


def stream_splits(rt, model_path: Path, manifests: dict[str, Path], ec: dict, eoq_path: Path,
                  fbank_cfg: KaldiFbankConfig, stop_s: float, workers: int) -> dict[str, list[Stream]]:
    """Each split's streams; ``workers`` > 1: fixed shards (cut i of the id order to shard i % workers)
    in spawned processes, each with one thread. Every utterance is decoded on its own, so the result
    does not depend on ``workers`` (tested)."""
    out: dict[str, list[Stream]] = {}
    if workers <= 1:
        eoq, fbank = EndOfQuery.load(eoq_path), KaldiFbank(fbank_cfg)
        return {s: stream_split(rt, CutSet.from_file(m), ec, eoq, fbank, stop_s) for s, m in manifests.items()}
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {}
        for split, manifest in manifests.items():
            ids = sorted(CutSet.from_file(manifest).ids)
            futures[split] = [pool.submit(_stream_shard, str(model_path), str(manifest), ids[k::workers], ec, fbank_cfg,
                                          str(eoq_path), stop_s) for k in range(workers)]
        for split, fs in futures.items():
            out[split] = sorted((s for f in fs for s in f.result()), key=lambda s: s.id)
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``inf`` entries count: a stream that never decided)."""
    v = sorted(values)
    return v[max(0, math.ceil(q / 100 * len(v)) - 1)] if v else math.nan


@dataclass
class Outcome:
    """One stream under one pair of rules."""

    events: Events
    final_s: float       # decision time; inf: never decided
    spec_s: float        # the standing speculative decision's time; inf: none stood


def outcome(s: Stream, final: EndpointRule, spec: EndpointRule | None) -> Outcome:
    ev = simulate(s.trace.points, final, spec)
    pts = s.trace.points
    return Outcome(ev, pts[ev.final].time_s if ev.final is not None else math.inf,
                   pts[ev.standing].time_s if ev.standing is not None else math.inf)


def latency_figures(streams: list[Stream], times: list[float]) -> dict[str, float]:
    """Early-cut and missed rates, latency percentiles (ms) over the streams not cut early."""
    n = len(streams)
    early = [t < s.speech_end for s, t in zip(streams, times)]
    lat = [(t - s.speech_end) * 1000 for s, t, e in zip(streams, times, early) if not e]
    out = {"early_cut_rate": round(sum(early) / n, 4), "missed_rate": round(sum(math.isinf(t) for t in times) / n, 4)}
    for q in (50, 90):
        p = percentile(lat, q)
        if math.isfinite(p):
            out[f"latency_p{q}_ms"] = round(p, 1)
    return out


def grid_rules(tc: DictConfig) -> list[EndpointRule]:
    return [EndpointRule(float(c), float(i), float(th)) for c, i, th in
            itertools.product(tc.complete_s, tc.incomplete_s, tc.thresholds) if float(c) <= float(i)]


def tune_rule(streams: list[Stream], rules: list[EndpointRule], max_early: float) -> tuple[EndpointRule, list[dict]]:
    """The rule with the lowest p50 latency (then p90, then fewest early cuts) among those within
    ``max_early`` early cuts on ``streams``; every rule's figures as rows."""
    figures = [latency_figures(streams, [outcome(s, r, None).final_s for s in streams]) for r in rules]
    rank = lambda f: (f.get("latency_p50_ms", math.inf), f.get("latency_p90_ms", math.inf), f["early_cut_rate"])  # noqa: E731
    ok = [i for i, f in enumerate(figures) if f["early_cut_rate"] <= max_early]
    if not ok:  # nothing meets the bound: the fewest early cuts, said loudly
        log.warning("endpoint: no rule keeps early cuts within %.3f on the tuning split; took the one with fewest", max_early)
        ok = [min(range(len(rules)), key=lambda i: (figures[i]["early_cut_rate"], rank(figures[i])))]
    best = min(ok, key=lambda i: rank(figures[i]))
    return rules[best], [{**asdict(r), **f} for r, f in zip(rules, figures)]


def tune_speculative(rows: list[dict], target_p50_ms: float) -> EndpointRule:
    """From :func:`tune_rule`'s rows: the rule whose median latency is closest to ``target_p50_ms``
    (the final's less the lead), then the fewest early cuts (each one a reset), then the lowest p90."""
    row = min(rows, key=lambda f: (abs(f.get("latency_p50_ms", math.inf) - target_p50_ms), f["early_cut_rate"],
                                   f.get("latency_p90_ms", math.inf)))
    return EndpointRule(row["complete_s"], row["incomplete_s"], row["threshold"])


def event_lattice(rt, beam, n: int, step_log2: int):
    return build_lattice(score_nbest(rt, [beam[:n]], rt.tokens)[0], step_log2)


def split_metrics(rt, split: str, streams: list[Stream], final: EndpointRule, spec: EndpointRule, n: int,
                  step_log2: int, out: Path) -> dict[str, float]:
    """The module docstring's per-split figures, and ``events-<split>.jsonl``."""
    outs = [outcome(s, final, spec) for s in streams]
    m: dict[str, float] = {}
    for name, times in (("final", [o.final_s for o in outs]), ("speculative", [o.spec_s for o in outs])):
        m.update({f"endpoint/{name}/{k}/{split}": v for k, v in latency_figures(streams, times).items()})
    leads = [(o.final_s - o.spec_s) * 1000 for o in outs if math.isfinite(o.final_s) and math.isfinite(o.spec_s)]
    if leads:
        m[f"endpoint/lead_p50_ms/{split}"] = round(percentile(leads, 50), 1)
    if f"endpoint/final/latency_p50_ms/{split}" in m and f"endpoint/speculative/latency_p50_ms/{split}" in m:
        m[f"endpoint/speculative/lead_ms/{split}"] = round(m[f"endpoint/final/latency_p50_ms/{split}"] -
                                                            m[f"endpoint/speculative/latency_p50_ms/{split}"], 1)
    text = lambda beam: tokens_to_text(rt.tokens, beam[0].tokens, rt.blank_id) if beam else ""  # noqa: E731
    accs = {k: WerAccumulator() for k in ("speculative", "final", "stream")}
    resets = revised = events = lattice_bytes = 0
    with open(out / f"events-{split}.jsonl", "w") as f:
        for s, o in zip(streams, outs):
            pts, beams = s.trace.points, s.trace.beams
            ev, rows = o.events, []
            for kind, idx in [("speculative", i) for i in ev.speculative] + [("reset", i) for i in ev.resets] + \
                    ([("final", ev.final)] if ev.final is not None else []):
                rows.append({"event": kind, "time_s": pts[idx].time_s, "text": text(beams[idx])})
            rows.sort(key=lambda r: (r["time_s"], r["event"] != "speculative"))
            lats = {}  # the word strings of each lattice sent, best first
            for kind, idx in (("speculative", ev.standing), ("final", ev.final)):
                if idx is not None:
                    lat = event_lattice(rt, beams[idx], n, step_log2)
                    lats[kind] = [p.words for p in lat.paths()]
                    lattice_bytes += len(serialize(lat))
                    events += 1
            last = len(pts) - 1
            accs["speculative"].update([s.ref], [text(beams[ev.standing if ev.standing is not None else last])], ids=[s.id])
            accs["final"].update([s.ref], [text(beams[ev.final if ev.final is not None else last])], ids=[s.id])
            accs["stream"].update([s.ref], [text(beams[last])], ids=[s.id])
            resets += bool(ev.resets)
            revised += "final" in lats and lats.get("speculative") != lats["final"]
            f.write(json.dumps({"id": s.id, "ref": s.ref, "speech_end": s.speech_end, "events": rows}) + "\n")
    n_utts = len(streams)
    m.update({f"endpoint/wer/{k}/{split}": round(a.wer, 4) for k, a in accs.items()})
    m[f"endpoint/reset_rate/{split}"] = round(resets / n_utts, 4)
    m[f"endpoint/revised_rate/{split}"] = round(revised / n_utts, 4)
    m[f"endpoint/utts/{split}"] = n_utts
    if events:
        m["endpoint/lattice_bytes_per_event"] = round(lattice_bytes / events, 1)
    return m


def tradeoff_figure(rows: dict[str, list[dict]], chosen: EndpointRule) -> Figure:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for split, rs in rows.items():
        pts = [(100 * r["early_cut_rate"], r["latency_p50_ms"]) for r in rs if "latency_p50_ms" in r]
        if not pts:  # no rule ever decided before half the requests ended (e.g. an untrained model)
            continue
        ax.scatter(*zip(*pts), s=10, alpha=0.5, label=f"{split}: every rule")
        c = next(r for r in rs if (r["complete_s"], r["incomplete_s"], r["threshold"]) ==
                 (chosen.complete_s, chosen.incomplete_s, chosen.threshold))
        if "latency_p50_ms" in c:
            ax.scatter([100 * c["early_cut_rate"]], [c["latency_p50_ms"]], marker="*", s=160, edgecolor="k",
                       label=f"{split}: chosen")
    ax.set_xlabel("early cuts (% of utterances)")
    ax.set_ylabel("final end-pointer latency p50 (ms after end of speech)")
    ax.set_title("end-pointing trade-off over thresholds")
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def endpoint_metrics(rt, model_path: Path, ec: DictConfig, lattice_cfg: DictConfig, prep_dir: Path,
                     fbank_cfg: KaldiFbankConfig, results: Path, tracker) -> dict[str, float]:
    """Everything of the module docstring; ``{}`` when the prepare stage wrote no end-pointing splits
    (corpora other than the embedded one)."""
    edir = prep_dir / "endpoint"
    splits = [str(ec.tune_split)] + [str(s) for s in ec.splits if str(s) != str(ec.tune_split)]
    manifests = {s: edir / f"cuts_{s}.jsonl.gz" for s in splits if (edir / f"cuts_{s}.jsonl.gz").is_file()}
    if splits[0] not in manifests:
        log.info("endpoint: %s not found: no end-pointing figures (the embedded corpus has them)", edir / f"cuts_{splits[0]}.jsonl.gz")
        return {}
    t0 = time.perf_counter()
    eoq_path = edir / "end_of_query.json"
    eoq = EndOfQuery.load(eoq_path)
    rules = grid_rules(ec.tune)
    stop_s = max(r.incomplete_s for r in rules) + 0.01
    threads = torch.get_num_threads()
    try:
        streams = stream_splits(rt, model_path, manifests, OmegaConf.to_container(ec, resolve=True), eoq_path, fbank_cfg,
                                stop_s, int(ec.workers))
    finally:
        torch.set_num_threads(threads)  # the extractor pins one thread
    final, tune_rows = tune_rule(streams[splits[0]], rules, float(ec.tune.max_early_cut))
    final_p50 = next(r for r in tune_rows if (r["complete_s"], r["incomplete_s"], r["threshold"]) ==
                     (final.complete_s, final.incomplete_s, final.threshold)).get("latency_p50_ms", math.inf)
    spec = tune_speculative(tune_rows, final_p50 - 1000 * float(ec.speculative_lead_s))
    out = results / "endpoint"
    out.mkdir(parents=True, exist_ok=True)
    rows = {splits[0]: tune_rows}
    for s in splits[1:]:
        if s in streams:
            rows[s] = [{**asdict(r), **latency_figures(streams[s], [outcome(x, r, None).final_s for x in streams[s]])}
                       for r in rules]
    with open(out / "tradeoff.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["split", "complete_s", "incomplete_s", "threshold", "early_cut_rate",
                                          "missed_rate", "latency_p50_ms", "latency_p90_ms"])
        w.writeheader()
        w.writerows({"split": s, **r} for s, rs in rows.items() for r in rs)
    EndpointConfig(final, spec, float(ec.chunk_ms), int(ec.beam), float(ec.vad_margin_db), float(ec.support_s),
                   float(ec.beam_temperature), int(ec.max_sym_per_frame)).save(out / "rule.json", tune_split=splits[0])
    fig = tradeoff_figure(rows, final)
    fig.savefig(out / "tradeoff.png", dpi=120)
    tracker.log_figure(fig, "endpoint_tradeoff.png")
    metrics: dict[str, float] = {"endpoint/final/complete_ms": round(final.complete_s * 1000, 1),
                                 "endpoint/final/incomplete_ms": round(final.incomplete_s * 1000, 1),
                                 "endpoint/final/threshold": final.threshold,
                                 "endpoint/speculative/complete_ms": round(spec.complete_s * 1000, 1),
                                 "endpoint/speculative/incomplete_ms": round(spec.incomplete_s * 1000, 1),
                                 "endpoint/speculative/threshold": spec.threshold,
                                 "endpoint/eoq_entries": eoq.entries, "endpoint/eoq_bytes": eoq_path.stat().st_size}
    for s, st in streams.items():
        metrics.update(split_metrics(rt, s, st, final, spec, max(int(n) for n in lattice_cfg.nbest),
                                     int(lattice_cfg.weight_step_log2), out))
    metrics["endpoint/decode_s"] = round(time.perf_counter() - t0, 3)
    return metrics
