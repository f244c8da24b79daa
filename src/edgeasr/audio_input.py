"""What the ``edgeasr`` command decodes: audio files and test sets, as the prepare stage's features.

Audio goes through the prepare stage's feature extractor (:class:`edgeasr.data.features.KaldiFbank`
with its defaults, which are ``prepare.features``), at 16 kHz (other rates are resampled, as the
prepare stage does) on channel 0 (the channel the prepare stage's cuts use). A test set is a lhotse
cuts manifest (features or recordings) or a TSV ``audio_path<TAB>reference text`` (paths relative
to the TSV). A problem with one input is an :class:`~edgeasr.cli_base.AudioError`; with the set
file itself, a :class:`~edgeasr.cli_base.CliError`.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import soundfile
import torch
from lhotse import CutSet, Recording

from edgeasr.cli_base import AudioError, CliError, Notes
from edgeasr.data.cleaning import normalize_transcript
from edgeasr.data.features import KaldiFbank, KaldiFbankConfig
from edgeasr.data.manifest_guard import (SAFE_SOURCE_TYPES, UnsafeManifestError, check_cuts, path_kind,
                                         resampling_problem)

SAMPLE_RATE = 16000


# --------------------------------------------------------------------------- audio and features


def audio_features(samples, sampling_rate: int = SAMPLE_RATE):
    """(T, 80) float32 log-mel fbank exactly as the prepare stage computes it."""
    threads = torch.get_num_threads()
    try:
        return torch.from_numpy(KaldiFbank(KaldiFbankConfig()).extract(samples, sampling_rate))
    finally:
        torch.set_num_threads(threads)  # the extractor pins 1 thread for lhotse's worker processes


def chunk_frames(chunk_ms: float) -> int:
    """Feature frames in a streaming chunk of ``chunk_ms`` (at least 1)."""
    return max(1, int(round(chunk_ms / KaldiFbankConfig().frame_shift_ms)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _audio_reason(path: Path, exc: Exception) -> str:
    """One readable line for an audio file every lhotse backend failed on."""
    try:
        soundfile.info(str(path))
    except Exception as e:  # soundfile says it best for the formats it knows
        return _first_line(e)
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _samples(audio_like, name: str, note: Notes):
    """Mono float32 samples at 16 kHz from a lhotse Recording or Cut (resampled, channel 0)."""
    if audio_like.sampling_rate != SAMPLE_RATE:
        problem = resampling_problem(audio_like.sampling_rate, SAMPLE_RATE)
        if problem:
            raise AudioError(f"{name}: {problem}")
        note("resampled", f"{name}: resampling {audio_like.sampling_rate} Hz -> {SAMPLE_RATE} Hz")
        audio_like = audio_like.resample(SAMPLE_RATE)
    try:
        audio = audio_like.load_audio()
    except Exception as e:
        raise AudioError(f"{name}: cannot decode the audio ({_first_line(e)})") from e
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        if audio.shape[0] > 1:
            note("multichannel", f"{name}: {audio.shape[0]} channels, using channel 0 (as the prepare stage does)")
        audio = audio[0]
    if audio.size == 0:
        raise AudioError(f"{name}: no audio samples")
    if not np.isfinite(audio).all():
        raise AudioError(f"{name}: the audio has NaN/inf samples")
    return audio


def read_audio(path: str | Path, note: Notes | None = None):
    """Samples of one audio file (any format soundfile/lhotse read), 16 kHz mono float32."""
    note = note or Notes(sys.stderr)
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: no such audio file")
    if not p.is_file():
        raise AudioError(f"{p}: not a regular file, expected an audio file")
    if p.stat().st_size == 0:
        raise AudioError(f"{p}: the file is empty (0 bytes), expected audio")
    if path_kind(str(p)) != "file":  # lhotse would paste this name into a shell command (.sph, .opus)
        raise AudioError(f"{p}: lhotse would read this file name through a shell or a URL handler; "
                         "rename the file (letters, digits, . _ - / only)")
    try:
        rec = Recording.from_file(p)
    except Exception as e:  # every backend raises its own types for unreadable files
        raise AudioError(f"{p}: cannot read audio ({_audio_reason(p, e)})") from e
    if rec.num_samples == 0:
        raise AudioError(f"{p}: no audio samples")
    return _samples(rec, str(p), note)


# --------------------------------------------------------------------------- sets


@dataclass
class Utterance:
    id: str
    ref: str
    features: Callable[[Notes], Any]  # -> (T, F) tensor, or raises AudioError
    context: Any = None  # a manifest's supervision custom "context" (the user's list), unchecked


def _normalize(text: str | None) -> str:
    return normalize_transcript(text, "basic")


def _cut_features(cut, note: Notes):
    if cut.has_features:
        if cut.features.type != "edgeasr-kaldi-fbank":
            note("feature-type", f"{cut.id}: features of type {cut.features.type!r}, not the prepare stage's "
                                 "'edgeasr-kaldi-fbank'; results may not match the pipeline")
        try:
            return torch.from_numpy(cut.load_features())
        except Exception as e:
            raise AudioError(f"{cut.id}: cannot load its features ({type(e).__name__}: {e})") from e
    if cut.has_recording:
        return audio_features(_samples(cut, cut.id, note))
    raise AudioError(f"{cut.id}: the cut has neither features nor a recording")


def _read_cuts(path: Path, note: Notes, allow_source_types=SAFE_SOURCE_TYPES) -> list[Utterance]:
    try:
        cuts = CutSet.from_file(path).to_eager()
    except Exception as e:  # first line only: YAML and JSON errors quote the offending text below
        raise CliError(f"{path}: not a readable lhotse cuts manifest ({type(e).__name__}: {_first_line(e)})") from e
    try:  # before any audio or feature is read: a manifest may name shell commands or URLs
        check_cuts(cuts, path, allow_source_types, "pass --allow-source-type {kind}")
    except UnsafeManifestError as e:
        raise CliError(str(e)) from None
    utts = []
    for cut in cuts:
        text = cut.supervisions[0].text if getattr(cut, "supervisions", None) else None
        if text is not None and not isinstance(text, str):
            note("bad-transcript", f"{cut.id}: the transcript is a {type(text).__name__}, not text; skipped")
            continue
        if not text:
            note("unlabeled", f"{cut.id}: no transcript, skipped")
            continue
        custom = cut.supervisions[0].custom or {}
        utts.append(Utterance(cut.id, _normalize(text), lambda n, c=cut: _cut_features(c, n), custom.get("context")))
    return utts


def _read_tsv(path: Path) -> list[Utterance]:
    """``audio_path<TAB>reference`` per line (an ``audio``/``path`` header line and ``#`` comments
    allowed); relative paths are relative to the TSV's folder (as ``data.source=folder`` reads
    them), else to the current directory."""
    utts = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: skip a BOM
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CliError(f"{path}: not a readable UTF-8 TSV ({type(e).__name__}: {e})") from e
    for lineno, row in enumerate(rows, start=1):
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        if lineno == 1 and row[0].strip().lower() in ("audio", "path", "audio_path"):
            continue
        if len(row) < 2:
            raise CliError(f"{path}:{lineno}: expected 'audio_path<TAB>reference text', found no tab")
        name = row[0].strip()
        audio = Path(name)
        if not audio.is_absolute() and ((path.parent / audio).exists() or not audio.exists()):
            audio = path.parent / audio
        utts.append(Utterance(name, _normalize("\t".join(row[1:])),
                              lambda n, a=audio: audio_features(read_audio(a, n))))
    return utts


def read_set(path: str | Path, note: Notes | None = None,
             allow_source_types=SAFE_SOURCE_TYPES) -> list[Utterance]:
    """A lhotse cuts manifest (gzip or JSON lines, by content) or a TSV. A manifest's audio
    sources and feature storages must be of ``allow_source_types`` (see
    :mod:`edgeasr.data.manifest_guard`), else a :class:`~edgeasr.cli_base.CliError`."""
    note = note or Notes(sys.stderr)
    p = Path(path)
    if not p.is_file():
        raise CliError(f"{p}: test set not found; expected a lhotse cuts manifest (cuts_*.jsonl.gz) "
                       "or a TSV of audio_path<TAB>reference text")
    with open(p, "rb") as f:
        head = f.read(2)
    if head in (b"\x1f\x8b",) or head[:1] in (b"{", b"["):
        return _read_cuts(p, note, allow_source_types)
    return _read_tsv(p)
