"""Where speech comes from: the embedded synthetic corpus, LibriSpeech through lhotse's recipe,
a folder of audio + transcripts (TSV), or existing lhotse manifests.

Each ``prepare_<source>`` follows the lhotse recipe shape: it returns raw manifests per split,
``{split: (RecordingSet, SupervisionSet | None)}``; ``edgeasr.data.cleaning`` validates them.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Mapping

from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet, load_manifest
from lhotse.recipes import prepare_librispeech as lhotse_prepare

from .cleaning import FilterLog
from .manifest_guard import check_inside, check_path, check_recordings

log = logging.getLogger(__name__)

Raw = dict[str, tuple[RecordingSet, SupervisionSet | None]]

_OPT_IN = "add {kind} to data.allow_source_types (e.g. -S 'data.allow_source_types=[file,memory,{kind}]')"


def _require_dir(path, key: str) -> Path:
    if path in (None, "", "???"):
        raise ValueError(f"data.{key} is not set: pass it on the command line, e.g. `-S data.{key}=/path/to/corpus`")
    p = Path(str(path)).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"data.{key}={p} is not a directory; point it at your corpus")
    return p


def prepare_librispeech(cfg: Mapping, num_jobs: int = 2) -> Raw:
    """``data.parts`` maps our split names to LibriSpeech parts, e.g. ``train: [train-clean-100]``;
    several parts per split are concatenated. Reads ``<part>/<spk>/<chapter>/*.flac`` + ``*.trans.txt``."""
    corpus_dir = _require_dir(cfg.get("corpus_dir"), "corpus_dir")
    parts = {split: list(p) for split, p in cfg["parts"].items() if p}
    wanted = sorted({p for ps in parts.values() for p in ps})
    missing = [p for p in wanted if not (corpus_dir / p).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"LibriSpeech parts {missing} not found under {corpus_dir}; download them or change data.parts"
        )
    try:
        manifests = lhotse_prepare(corpus_dir, dataset_parts=wanted, output_dir=None, num_jobs=num_jobs)
    except Exception as e:
        raise RuntimeError(f"lhotse.recipes.prepare_librispeech failed on {corpus_dir}: {e}") from e
    out: Raw = {}
    for split, ps in parts.items():
        recs = [r for p in ps for r in manifests[p]["recordings"]]
        sups = [s for p in ps for s in manifests[p]["supervisions"]]
        out[split] = (RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups))
    return out


def _tsv_rows(tsv: Path):
    """``(line number, fields)`` of a TSV; a UTF-8 BOM is skipped, other bytes name their line."""
    data = tsv.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{tsv}:{line}: not UTF-8 ({e.reason} at byte {e.start}: {data[e.start:e.start + 4]!r}); "
                         "save the file as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    for row in reader:
        yield reader.line_num, row


def prepare_folder(cfg: Mapping, filter_log: FilterLog) -> Raw:
    """Bring-your-own data: ``<corpus_dir>/<split>.tsv`` with lines ``audio_path<TAB>transcript``
    (paths relative to the TSV; a header line ``audio<TAB>text`` is allowed). The recording id is
    the file name without extension, Kaldi style, so two files with the same name are duplicates.
    Paths must stay inside ``corpus_dir`` unless ``data.allow_paths_outside_corpus``; only the
    audio headers are read here (the full decode comes after the duration filters)."""
    corpus_dir = _require_dir(cfg.get("corpus_dir"), "corpus_dir")
    outside_ok = bool(cfg.get("allow_paths_outside_corpus", False))
    allowed = cfg.get("allow_source_types")
    out: Raw = {}
    for split in cfg["split_names"]:
        tsv = corpus_dir / f"{split}.tsv"
        if not tsv.is_file():
            if split == "train":
                raise FileNotFoundError(f"{tsv} not found: a folder corpus needs at least train.tsv")
            log.info("no %s; split %s skipped", tsv, split)
            continue
        recs, sups, seen = [], [], {}
        for lineno, row in _tsv_rows(tsv):
            if not row or (lineno == 1 and row[0].strip().lower() in ("audio", "path")):
                continue
            if len(row) < 2:
                row = row + [""]
            where = f"{tsv}:{lineno}"
            given = tsv.parent / row[0].strip()
            check_inside(given, corpus_dir, where, outside_ok, "set data.allow_paths_outside_corpus=true")
            audio = given.resolve()
            # lhotse reads some headers through a shell (.sph): check the name before touching it
            check_path(audio, where, allowed, _OPT_IN)
            rid = audio.stem
            if rid in seen:
                filter_log.drop(split, rid, "duplicate_id", f"{audio} ({tsv.name}:{lineno}) repeats {seen[rid]}")
                continue
            seen[rid] = audio
            if not audio.exists():
                filter_log.drop(split, rid, "missing_audio", f"{audio} ({tsv.name}:{lineno}): no such file")
                continue
            try:
                rec = Recording.from_file(audio, recording_id=rid)  # header only
            except Exception as e:
                filter_log.drop(split, rid, "unreadable_audio", f"{audio} ({tsv.name}:{lineno}): {type(e).__name__}: {e}")
                continue
            recs.append(rec)
            sups.append(SupervisionSegment(id=rid, recording_id=rid, start=0.0, duration=rec.duration,
                                           channel=0, text=row[1]))
        out[split] = (RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups))
    return out


def prepare_manifests(cfg: Mapping) -> Raw:
    """Existing lhotse manifests in ``data.manifest_dir``: ``cuts_<split>.jsonl.gz`` or
    ``recordings_<split>.jsonl.gz`` + ``supervisions_<split>.jsonl.gz`` (a recipe prefix such as
    ``librispeech_recordings_<split>`` is accepted too). Only ``file`` and ``memory`` audio sources
    pass unless ``data.allow_source_types`` lists more (see :mod:`edgeasr.data.manifest_guard`)."""
    mdir = _require_dir(cfg.get("manifest_dir"), "manifest_dir")
    out: Raw = {}
    for split in cfg["split_names"]:
        cuts = sorted(mdir.glob(f"*cuts_{split}.jsonl*"))
        recs = sorted(mdir.glob(f"*recordings_{split}.jsonl*"))
        sups = sorted(mdir.glob(f"*supervisions_{split}.jsonl*"))
        try:
            if cuts:
                r, s, _ = CutSet.from_file(cuts[0]).decompose()
                out[split] = (r, s)
            elif recs:
                out[split] = (load_manifest(recs[0]), load_manifest(sups[0]) if sups else None)
            elif split == "train":
                raise FileNotFoundError(f"no cuts_train or recordings_train manifest in {mdir}")
        except FileNotFoundError:
            raise
        except Exception as e:
            bad = (cuts or recs or sups)[0]
            raise ValueError(f"{bad} is not a readable lhotse manifest ({type(e).__name__}: {e}); "
                             "regenerate it with lhotse") from e
        if split in out:  # before any audio is read: a manifest may name shell commands or URLs
            check_recordings(out[split][0], (cuts or recs)[0], cfg.get("allow_source_types"), _OPT_IN)
            _check_fields(out[split], (cuts or recs)[0], (cuts or sups or recs)[0])
    return out


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ints(v) -> bool:
    return isinstance(v, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in v)


def _check_fields(raw, rec_file: Path, sup_file: Path) -> None:
    """The fields cleaning does arithmetic on have the types lhotse writes (a hand-edited or hostile
    manifest would otherwise fail deep inside lhotse with a TypeError)."""
    recs, sups = raw
    for r in recs:
        bad = [k for k in ("sampling_rate", "num_samples", "duration") if not _real(getattr(r, k, None))]
        bad += ["id"] if not isinstance(r.id, str) else []
        bad += ["channel_ids"] if r.channel_ids is not None and not _ints(r.channel_ids) else []
        bad += ["sources"] if not all(_ints(src.channels) for src in r.sources) else []
        if bad:
            raise ValueError(f"{rec_file}: recording {r.id!r} has malformed {bad}; regenerate it with lhotse")
    for s in sups or []:
        bad = [k for k in ("start", "duration") if not _real(getattr(s, k, None))]
        bad += [k for k in ("id", "recording_id") if not isinstance(getattr(s, k), str)]
        bad += ["text"] if s.text is not None and not isinstance(s.text, str) else []
        bad += ["channel"] if not _ints(s.channel if isinstance(s.channel, list) else [s.channel]) else []
        if bad:
            raise ValueError(f"{sup_file}: supervision {s.id!r} has malformed {bad}; regenerate it with lhotse")
