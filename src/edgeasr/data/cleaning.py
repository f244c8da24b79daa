"""Bad input never disappears silently: every dropped item is counted under a reason and logged.

The prepare stage either filters an item here (counted in ``reports/prepare.json`` as
``filtered/<reason>`` and listed with its file in ``data/prepare/filtered.jsonl``) or stops with an
error that names the file and the fix.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from lhotse import CutSet, RecordingSet, SupervisionSet

from edgeasr.data.manifest_guard import resampling_problem
from edgeasr.data.word_classes import check_word_classes

log = logging.getLogger(__name__)

REASONS = (
    "unreadable_audio",      # the header or the decoding failed, or zero samples
    "missing_audio",         # a transcript whose recording or audio file does not exist
    "duplicate_id",          # a second item with an id already seen (first one kept)
    "empty_transcript",
    "unknown_characters",    # the tokenizer (trained on train text) cannot represent the text
    "too_short",             # below filters.min_duration
    "too_long",              # above filters.max_duration
    "too_short_for_labels",  # fewer encoder frames after subsampling than tokens
)


@dataclass
class FilterLog:
    """Counts and records every dropped item; a few examples per reason go to the log."""

    counts: Counter = field(default_factory=Counter)
    items: list[dict] = field(default_factory=list)
    resampled: int = 0
    max_logged_per_reason: int = 5

    def drop(self, split: str, item_id: str, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown filter reason {reason!r}")
        self.counts[reason] += 1
        self.items.append({"split": split, "id": item_id, "reason": reason, "detail": detail})
        if self.counts[reason] <= self.max_logged_per_reason:
            log.warning("[%s] dropped %s: %s%s", split, item_id, reason, f" ({detail})" if detail else "")

    def metrics(self) -> dict[str, int]:
        out = {f"filtered/{r}": int(self.counts[r]) for r in REASONS}
        out["filtered/total"] = int(sum(self.counts.values()))
        out["resampled"] = int(self.resampled)
        return out

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for item in self.items:
                f.write(json.dumps(item, sort_keys=True) + "\n")


_PUNCT = re.compile(r"[^\w\s']", flags=re.UNICODE)
_SPACES = re.compile(r"\s+")


def normalize_transcript(text: str | None, mode: str = "basic") -> str:
    """``none``: whitespace only; ``lower``: lowercase; ``basic``: lowercase, punctuation except
    apostrophes removed. Digits are NOT spelled out: a tokenizer without them filters such
    utterances (counted as ``unknown_characters``) instead of learning a wrong spelling."""
    if text is None:
        return ""
    if mode in ("lower", "basic"):
        text = text.lower()
    if mode == "basic":
        text = _PUNCT.sub(" ", text).replace("_", " ")
    elif mode not in ("none", "lower"):
        raise ValueError(f"unknown text normalization {mode!r}; use none, lower or basic")
    return _SPACES.sub(" ", text).strip()


def _aligned_classes(custom: dict | None, text: str) -> dict | None:
    """``custom`` with its ``word_classes`` (synthetic corpus: one slot/carrier class per word) kept
    only while they still align with the normalized ``text``."""
    if not custom or "word_classes" not in custom:
        return custom
    classes = check_word_classes(text, custom["word_classes"])
    rest = {k: v for k, v in custom.items() if k != "word_classes"}
    return rest if classes is None else {**rest, "word_classes": classes}


def _source_of(rec) -> str:
    return ", ".join(s.source for s in rec.sources if isinstance(s.source, str)) or rec.id


def _readable(rec) -> str | None:
    """Return an error message if the recording cannot be decoded, else None."""
    try:
        audio = rec.load_audio()
    except Exception as e:  # soundfile/audioread raise many types for corrupt files
        return f"{_source_of(rec)}: {type(e).__name__}: {e}"
    if audio.size == 0:
        return f"{_source_of(rec)}: no samples"
    if not np.isfinite(audio).all():  # a float file with NaNs, or a manifest's Volume(nan): NaN features
        return f"{_source_of(rec)}: NaN/inf samples"
    return None


def clean_split(
    split: str,
    recordings: RecordingSet,
    supervisions: SupervisionSet | None,
    log_: FilterLog,
    *,
    text_normalization: str = "basic",
    sample_rate: int = 16000,
    min_duration: float = 0.0,
    max_duration: float = float("inf"),
    decode_check: bool = True,
    num_jobs: int = 2,
    labeled: bool = True,
) -> CutSet:
    """Validate raw manifests and turn them into one cut per supervision at ``sample_rate``.

    Drops (counted): duplicate recording/supervision ids, supervisions without a recording or
    outside it (one reaching past the recording's end is shortened to it), empty
    transcripts (labeled splits), durations outside ``[min_duration, max_duration]``, unreadable
    audio. The durations come from the manifests (audio headers) and are filtered BEFORE the full
    decode of ``decode_check``, so a huge file is dropped as ``too_long`` without being decoded;
    only recordings some kept supervision needs are decoded. Resamples other rates (counted as
    ``resampled``, not dropped).
    """
    recs, seen = {}, {}
    for rec in recordings:
        if rec.id in seen:
            log_.drop(split, rec.id, "duplicate_id", f"{_source_of(rec)} repeats {seen[rec.id]}")
            continue
        seen[rec.id] = _source_of(rec)
        recs[rec.id] = rec

    sups, seen_sup = [], set()
    for sup in supervisions or []:
        if sup.id in seen_sup:
            log_.drop(split, sup.id, "duplicate_id", f"supervision id repeated (recording {sup.recording_id})")
            continue
        seen_sup.add(sup.id)
        if sup.recording_id not in recs:
            log_.drop(split, sup.id, "missing_audio", f"recording {sup.recording_id!r} not found")
            continue
        end = min(sup.end, recs[sup.recording_id].duration)
        if sup.start < 0 or sup.end > end:  # shortened to the audio there is (lhotse's trim would assert)
            if end <= max(0.0, sup.start):
                log_.drop(split, sup.id, "missing_audio", f"[{sup.start}, {sup.end}] s is outside its recording "
                          f"({seen[sup.recording_id]}, {recs[sup.recording_id].duration} s)")
                continue
            sup = replace(sup, start=max(0.0, sup.start), duration=end - max(0.0, sup.start))
        text = normalize_transcript(sup.text, text_normalization)
        if labeled and not text:
            log_.drop(split, sup.id, "empty_transcript", seen[sup.recording_id])
            continue
        if not _duration_ok(split, sup.id, sup.duration, min_duration, max_duration, log_):
            continue
        sups.append(replace(sup, text=text or None, custom=_aligned_classes(sup.custom, text)))

    used = {s.recording_id for s in sups}
    needed = [r for r in recs.values() if r.id in used]  # input order, as before
    if decode_check:
        with ThreadPoolExecutor(max(1, num_jobs)) as pool:
            errors = list(pool.map(_readable, needed))
        bad = set()
        for rec, err in zip(needed, errors):
            if err:
                log_.drop(split, rec.id, "unreadable_audio", err)  # its supervisions go with it, uncounted
                bad.add(rec.id)
        needed = [r for r in needed if r.id not in bad]
        sups = [s for s in sups if s.recording_id not in bad]

    if not sups:
        return CutSet.from_cuts([])
    cuts = CutSet.from_manifests(
        RecordingSet.from_recordings(needed), SupervisionSet.from_segments(sups)
    ).trim_to_supervisions(keep_overlapping=False)

    out = []
    for cut in cuts:
        if cut.sampling_rate != sample_rate:
            problem = resampling_problem(cut.sampling_rate, sample_rate)
            if problem:  # a bogus header rate: resampling would take gigabytes
                log_.drop(split, cut.id, "unreadable_audio", f"{seen.get(cut.recording_id, cut.id)}: {problem}")
                continue
            cut = cut.resample(sample_rate)
            log_.resampled += 1
        # again on the cut: a supervision reaching past its recording's end is shortened here
        if _duration_ok(split, cut.id, cut.duration, min_duration, max_duration, log_):
            out.append(cut)
    return CutSet.from_cuts(out)


def _duration_ok(split: str, item_id: str, duration: float, lo: float, hi: float, log_: FilterLog) -> bool:
    if duration < lo:
        log_.drop(split, item_id, "too_short", f"{duration:.2f}s < {lo}s")
    elif duration > hi:
        log_.drop(split, item_id, "too_long", f"{duration:.2f}s > {hi}s")
    else:
        return True
    return False


def filter_by_tokens(
    split: str, cuts: CutSet, encode: Callable[[str], list[int]], unk_id: int,
    frames_after_subsampling: Callable[[int], int], frame_shift: float, log_: FilterLog,
) -> CutSet:
    """Drop texts with characters the tokenizer cannot represent and utterances with fewer
    encoder frames (after subsampling) than tokens."""
    out = []
    for cut in cuts:
        text = cut.supervisions[0].text
        ids = encode(text)
        if unk_id in ids:
            bad = sorted({ch for ch, i in _char_ids(text, encode) if i == unk_id})
            log_.drop(split, cut.id, "unknown_characters", f"characters {bad} not in the train text")
            continue
        frames = frames_after_subsampling(int(round(cut.duration / frame_shift)))
        if frames < len(ids):
            log_.drop(split, cut.id, "too_short_for_labels",
                      f"{frames} encoder frames < {len(ids)} tokens ({cut.duration:.2f}s)")
            continue
        out.append(cut)
    return CutSet.from_cuts(out)


def _char_ids(text: str, encode) -> Iterable[tuple[str, int]]:
    for ch in set(text.replace(" ", "")):
        ids = encode(ch)
        yield ch, (ids[-1] if ids else -1)
