"""The ``prepare`` stage: corpus -> validated lhotse manifests, Kaldi fbank (lilcom), BPE tokenizer.

Outputs (``data/prepare/``, a DVC out):
  manifests/cuts_<split>.jsonl.gz      one cut per utterance, features attached
  manifests/recordings_<split>.jsonl.gz, supervisions_<split>.jsonl.gz
  manifests/cuts_train_aug.jsonl.gz    augmented train copies (speed, reverb, noise)
  scoring/supervisions_unlabeled.jsonl.gz   unlabeled transcripts: for scoring pseudo-labels only
  tokenizer/bpe.model, tokenizer/tokens.txt
  feats/, audio/                        lilcom features, rendered audio
  endpoint/cuts_<split>.jsonl.gz       the end-pointing splits (dev_pause, test_pause; no features:
                                       evaluate streams their audio), apart from what training reads
  endpoint/end_of_query.json           P(end of request | last words) from the train transcripts
  biasing/cuts_dev_rare.jsonl.gz       the biasing dev split (rare entities + context lists; no features)
  filtered.jsonl                        every dropped item with its reason
and ``reports/prepare.json`` with corpus statistics (same keys on the MLflow run).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import torch
from lhotse import CutSet, LilcomChunkyWriter, SupervisionSet
from lhotse.qa import validate
from omegaconf import DictConfig

from edgeasr.data import ALL_SPLITS, BIASING_SPLITS, EVAL_SPLITS, PAUSE_SPLITS, sources
from edgeasr.data.augment import audio_pool, augment, corrupt
from edgeasr.data.cleaning import FilterLog, clean_split, filter_by_tokens
from edgeasr.data.disk import disk_full_as_error, write_manifest
from edgeasr.endpoint.eoq import EndOfQuery
from edgeasr.data.features import KaldiFbank, KaldiFbankConfig
from edgeasr.models.subsampling import frames_after_subsampling
from edgeasr.data.tokenizer import Tokenizer, train_tokenizer

log = logging.getLogger(__name__)

STAGE = "prepare"


def load_raw(cfg: DictConfig, out: Path, flog: FilterLog):
    """Raw manifests per split from ``data.source``; returns (raw, decode_check)."""
    data, source = cfg.data, cfg.data.source
    if source == "synthetic":
        # Not at the top: the spawned feature workers import this module (for _worker_init), and
        # edgeasr.data.synthetic would cost each of them ~1.2 s (measured after this module's imports).
        from edgeasr.data.synthetic import synthesize_corpus

        raw = synthesize_corpus(data, seed=cfg.seed, out_dir=out / "audio" / "corpus",
                                num_jobs=cfg.prepare.num_jobs, progress=cfg.prepare.progress)
        return raw, False  # we just wrote this audio ourselves
    if source == "librispeech":
        return sources.prepare_librispeech(data, num_jobs=cfg.prepare.num_jobs), True
    if source == "folder":
        return sources.prepare_folder(data, flog), True
    if source == "manifests":
        return sources.prepare_manifests(data), True
    raise ValueError(f"unknown data.source {source!r}; use synthetic, librispeech, folder or manifests")


def _without_classes(custom: dict | None) -> dict | None:
    return {k: v for k, v in custom.items() if k != "word_classes"} if custom else custom


def _oov_rate(train_words: set[str], cuts: CutSet) -> float:
    words = [w for c in cuts for s in c.supervisions for w in (s.text or "").split()]
    return 100.0 * sum(w not in train_words for w in words) / max(1, len(words))


def _hours(cuts: CutSet) -> float:
    return sum(c.duration for c in cuts) / 3600.0


def _noise_pools(cfg: DictConfig, out: Path):
    from edgeasr.data.synthetic import make_noise_pool, make_rir_pool  # not at the top: see load_raw

    a, n = cfg.prepare.augment, cfg.prepare.test_noisy
    sr = cfg.data.sample_rate
    max_dur = float(cfg.prepare.filters.max_duration)
    pools = {}
    # Distinct seeds: test_noisy's rooms and noises are never seen by train augmentation. Real
    # recordings (MUSAN, RIRS_NOISES) replace the synthetic train pools when their folders are given.
    pools["train"] = (audio_pool(a.rir_dir, "prepare.augment.rir_dir", sr) if a.get("rir_dir")
                      else make_rir_pool(a.num_rirs, cfg.seed + 101, out / "audio" / "rir_train", sr),
                      audio_pool(a.noise_dir, "prepare.augment.noise_dir", sr) if a.get("noise_dir")
                      else make_noise_pool(a.num_noises, cfg.seed + 102, out / "audio" / "noise_train", max_dur, sr))
    pools["test"] = (make_rir_pool(n.num_rirs, cfg.seed + 201, out / "audio" / "rir_test", sr),
                     make_noise_pool(n.num_noises, cfg.seed + 202, out / "audio" / "noise_test", max_dur, sr))
    return pools


def _worker_init() -> None:
    torch.set_num_threads(1)  # one thread per worker process: intra-op threads only contend


@contextmanager
def _executor(num_jobs: int):
    """One pool of warm worker processes for rendering and features (spawn: lhotse's workers
    hold torch; a fresh pool per split would pay ~2 s of imports each time)."""
    if num_jobs <= 1:
        yield None
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # lhotse warns (rightly) about threads x processes oversubscription
    try:
        with ProcessPoolExecutor(num_jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
            yield pool
    finally:
        torch.set_num_threads(threads)


def run(cfg: DictConfig) -> dict[str, float]:
    # Imported here: the spawned feature workers import this module (for _worker_init), and the
    # prologue's mlflow import would cost each of them seconds (~1.1 s measured).
    from .prologue import open_stage

    p = cfg.prepare
    timings: dict[str, float] = {}
    flog = FilterLog()
    # fresh: idempotent, a rerun never mixes old and new files; a full disk is one line naming the folder
    with open_stage(STAGE, cfg, fresh="out", results=False) as stage, disk_full_as_error(stage.out, stage.out):
        out, tracker = stage.out, stage.tracker
        (out / "manifests").mkdir()
        (out / "feats").mkdir()
        t0 = time.perf_counter()
        raw, decode_check = load_raw(cfg, out, flog)
        timings["time_s/corpus"] = time.perf_counter() - t0

        t = time.perf_counter()
        f = p.filters
        cuts: dict[str, CutSet] = {}
        for split in ALL_SPLITS + PAUSE_SPLITS + BIASING_SPLITS:
            if split not in raw:
                continue
            recs, sups = raw[split]
            cuts[split] = clean_split(
                split, recs, sups, flog, text_normalization=cfg.data.get("text_normalization", "basic"),
                sample_rate=cfg.data.sample_rate, min_duration=f.min_duration, max_duration=f.max_duration,
                decode_check=decode_check, num_jobs=p.num_jobs, labeled=split != "unlabeled",
            )
        if "train" not in cuts or len(cuts["train"]) == 0:
            raise ValueError(f"no usable train utterances left after filtering; see {out / 'filtered.jsonl'}")

        # Unlabeled: the transcripts (if the source has any) move to a scoring-only manifest, with
        # their word classes (one per word: they would leak the transcript's length).
        if "unlabeled" in cuts:
            scoring = [s for c in cuts["unlabeled"] for s in c.supervisions if s.text]
            (out / "scoring").mkdir()
            write_manifest(SupervisionSet.from_segments(scoring), out / "scoring" / "supervisions_unlabeled.jsonl.gz")
            cuts["unlabeled"] = CutSet.from_cuts(
                c.map_supervisions(lambda s: replace(s, text=None, custom=_without_classes(s.custom)))
                for c in cuts["unlabeled"]
            )

        tok_path = train_tokenizer(
            (c.supervisions[0].text for c in cuts["train"]), out / "tokenizer",
            vocab_size=p.tokenizer.vocab_size, model_type=p.tokenizer.model_type,
            character_coverage=p.tokenizer.character_coverage,
        )
        tok = Tokenizer(tok_path)
        fbank_cfg = KaldiFbankConfig.from_cfg(p.features)
        frame_shift = fbank_cfg.frame_shift_ms / 1000.0
        sub = lambda n: frames_after_subsampling(n, f.subsampling_factor)  # noqa: E731
        for split in cuts:
            if split != "unlabeled":
                cuts[split] = filter_by_tokens(split, cuts[split], tok.encode, tok.unk_id, sub, frame_shift, flog)
        pauses = {split: cuts.pop(split) for split in PAUSE_SPLITS if split in cuts}
        write_endpoint_data(out / "endpoint", pauses, cuts["train"], int(p.end_of_query.order))
        biasing = {split: cuts.pop(split) for split in BIASING_SPLITS if split in cuts}
        write_side_manifests(out / "biasing", biasing)
        timings["time_s/clean"] = time.perf_counter() - t

        # Augmentation: train copies, and the noisy test condition for sources that lack one.
        t = time.perf_counter()
        pools = _noise_pools(cfg, out)
        a = p.augment
        render = {}
        if a.copies > 0:
            render["train_aug"] = augment(
                cuts["train"], *pools["train"], seed=cfg.seed + 1, copies=a.copies, speeds=list(a.speeds),
                reverb_prob=a.reverb_prob, noise_prob=a.noise_prob, snr_db=list(a.snr_db),
            )
        for split in cfg.data.get("noisy_splits", []):
            if split in cuts:
                render[split] = corrupt(cuts[split], *pools["test"], seed=cfg.seed + 2, snr_db=list(p.test_noisy.snr_db))
        with _executor(p.num_jobs) as pool:
            for name, cs in render.items():
                log.info("rendering %s (%d cuts)", name, len(cs))
                cs = cs.save_audios(out / "audio" / name, format="flac", num_jobs=p.num_jobs, executor=pool,
                                    progress_bar=p.progress, shuffle_on_split=False)
                # save_audios gives each cut a new recording; point the supervisions at it.
                cuts[name] = CutSet.from_cuts(
                    c.map_supervisions(lambda s, rid=c.recording_id: replace(s, recording_id=rid)) for c in cs
                )
            timings["time_s/augment"] = time.perf_counter() - t

            # Features: the exact Kaldi fbank sherpa-onnx computes at run time.
            t = time.perf_counter()
            extractor = KaldiFbank(fbank_cfg)
            for split, cs in cuts.items():
                if len(cs) == 0:
                    continue
                log.info("features for %s (%d cuts, %.2f h)", split, len(cs), _hours(cs))
                with disk_full_as_error(out / "feats" / split, out):
                    cs = cs.compute_and_store_features(
                        extractor, storage_path=out / "feats" / split, num_jobs=p.num_jobs, executor=pool,
                        storage_type=LilcomChunkyWriter, progress_bar=p.progress,
                    )
                cuts[split] = CutSet.from_cuts(sorted(cs, key=lambda c: c.id))  # job order must not matter
            timings["time_s/features"] = time.perf_counter() - t

        # Write validated manifests, each atomically (complete or absent); the cuts last, so that a
        # split's cuts manifest implies its recordings and supervisions.
        for split, cs in cuts.items():
            validate(cs, read_data=False)
            r, s, _ = cs.decompose()
            write_manifest(r, out / "manifests" / f"recordings_{split}.jsonl.gz")
            write_manifest(s, out / "manifests" / f"supervisions_{split}.jsonl.gz")
            write_manifest(cs, out / "manifests" / f"cuts_{split}.jsonl.gz")
        flog.write(out / "filtered.jsonl")

        metrics = corpus_metrics({**cuts, **pauses, **biasing}, tok, flog)
        tracker.log_report(metrics)
        timings["time_s/total"] = time.perf_counter() - t0
        tracker.log_metrics(timings)
        tracker.log_artifact(out / "filtered.jsonl")
        tracker.log_artifact(out / "tokenizer" / "tokens.txt")
        log.info("prepare: %s", {k: round(v, 3) for k, v in {**metrics, **timings}.items()})
    return metrics


def write_endpoint_data(out: Path, pauses: Mapping[str, CutSet], train: CutSet, order: int) -> None:
    """The end-pointing splits' manifests (validated, no features) and the end-of-query table of
    the train transcripts, under ``out`` (not a dependency of the training stages)."""
    write_side_manifests(out, pauses)
    EndOfQuery.fit((c.supervisions[0].text for c in train), order).save(out / "end_of_query.json")


def write_side_manifests(out: Path, cuts: Mapping[str, CutSet]) -> None:
    """Validated manifests of evaluation-only splits (no features) under ``out``, a directory the
    training stages do not depend on."""
    out.mkdir()
    for split, cs in cuts.items():
        validate(cs, read_data=False)
        r, s, _ = cs.decompose()
        write_manifest(r, out / f"recordings_{split}.jsonl.gz")
        write_manifest(s, out / f"supervisions_{split}.jsonl.gz")
        write_manifest(cs, out / f"cuts_{split}.jsonl.gz")


def corpus_metrics(cuts: Mapping[str, CutSet], tok: Tokenizer, flog: FilterLog) -> dict[str, float]:
    m: dict[str, float] = {}
    for split, cs in cuts.items():
        m[f"hours/{split}"] = round(_hours(cs), 4)
        m[f"utterances/{split}"] = len(cs)
        m[f"speakers/{split}"] = len({s.speaker for c in cs for s in c.supervisions if s.speaker})
    train_words = {w for c in cuts["train"] for w in c.supervisions[0].text.split()}
    m["vocab_words"] = len(train_words)
    m["tokenizer_vocab_size"] = tok.vocab_size
    for split in EVAL_SPLITS:
        if split in cuts and len(cuts[split]):
            m[f"oov_rate_percent/{split}"] = round(_oov_rate(train_words, cuts[split]), 3)
    m.update(flog.metrics())
    return m
