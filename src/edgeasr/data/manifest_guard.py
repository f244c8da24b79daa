"""Manifests from outside are data, never code: checked before any of their audio is read.

lhotse reads a recording's ``AudioSource`` by its type: ``file`` (a local path), ``memory`` (bytes in
the manifest), ``command`` (run with a shell), ``url`` (fetched from the network) or ``shar`` (a
placeholder filled by a Shar reader). A ``file`` whose name ends in ``.sph`` (or ``.opus`` with
``LHOTSE_LEGACY_OPUS_LOADING``) is decoded by a shell command built from the path, and names like
``s3://...`` reach network-capable decoders; such paths count as ``command`` / ``url`` here.
Feature storages are classified the same way (``kaldiio`` scp files may hold pipes; ``lilcom_url``
and URL / ``pipe:`` storage paths go through lhotse's ``open_best``).

``memory_raw`` features are pickles (lhotse unpickles them: a YAML manifest's ``!!binary`` makes
them bytes), so they count as ``pickle``. Audio transforms a manifest carries are checked too: a
reverb's impulse response is a recording (its source is checked like any other), and speed /
resampling parameters must keep the resampler small (a 1e12 Hz target, or a 16001 Hz rate,
would make torchaudio build a filter of gigabytes).

Every entry point that takes manifests or paths from a user (``data.source=manifests``,
``data.source=folder``, ``edgeasr score``) calls this module first; anything but ``file`` and
``memory`` stops with a :class:`UnsafeManifestError` naming the manifest, the recording and the
type, unless the caller's setting (``data.allow_source_types``, ``--allow-source-type``) lists it.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Iterable

SAFE_SOURCE_TYPES = ("file", "memory")
SOURCE_TYPES = ("file", "memory", "command", "url", "shar", "pickle")

# What each non-local type would do, for the error message.
_EFFECT = {"command": "run a shell command", "url": "fetch it from the network",
           "shar": "expect a Lhotse Shar reader", "pickle": "unpickle it, which can run any code"}
# p * q of a reduced resampling ratio p:q: torchaudio's polyphase filter holds about p * q floats
# (44.1 -> 16 kHz is 441 * 160; 16001 -> 16000 Hz would be 16001 * 16000, a gigabyte).
MAX_RESAMPLE_PQ = 1 << 20
MIN_RATE = 1000  # Hz: "1 Hz" audio resampled to 16 kHz would be 16000 times its size
_FACTOR = (0.1, 10.0)  # speed / tempo factors: lhotse recipes use 0.9 .. 1.1
# lhotse decodes these extensions through `subprocess.run(..., shell=True)` with the path pasted in.
_SHELL_DECODED = (".sph", ".opus")
_SHELL_SAFE = re.compile(r"[\w./+,:@%=-]+")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # s3://, http://, pipe:, ffmpeg protocols
_LOCAL_FEATURES = {"lilcom_chunky", "lilcom_files", "numpy_files", "lilcom_hdf5", "numpy_hdf5",
                   "chunked_lilcom_hdf5"}


class UnsafeManifestError(ValueError):
    """A manifest entry lhotse would execute or fetch; one line naming it and the opt-in setting."""


class PathOutsideCorpusError(ValueError):
    """A corpus file list names a file outside the corpus folder."""


def path_kind(path: str) -> str:
    """``file``, or ``command`` / ``url`` for a local-looking path lhotse would not just open."""
    if _SCHEME.match(path):
        return "command" if path.startswith("pipe:") else "url"
    if path.lower().endswith(_SHELL_DECODED) and not _SHELL_SAFE.fullmatch(path):
        return "command"
    return "file"


def source_kind(source) -> str:
    """The effective type of a lhotse ``AudioSource``."""
    if source.type == "file" and isinstance(source.source, str):
        return path_kind(source.source)
    return str(source.type)


def features_kind(features) -> str:
    """The effective type of a lhotse ``Features`` (or ``Array``) storage."""
    storage, path = str(features.storage_type), str(features.storage_path or "")
    if storage == "memory_raw":
        return "pickle"
    if storage.startswith("memory_"):
        return "memory"
    if storage == "kaldiio":
        return "command"  # Kaldi scp entries may be `cmd |` pipes
    if storage == "lilcom_url" or path.startswith("pipe:") or _SCHEME.match(path):
        return "command" if path.startswith("pipe:") else "url"
    return "file" if storage in _LOCAL_FEATURES else storage


def allowed_types(setting) -> tuple[str, ...]:
    """Normalise a setting value (None -> the safe default)."""
    if setting is None:
        return SAFE_SOURCE_TYPES
    if isinstance(setting, str):
        setting = [s for s in setting.split(",") if s.strip()]
    return tuple(str(s).strip() for s in setting)


def _reject(manifest, subject: str, kind: str, what: str, allowed, opt_in: str) -> UnsafeManifestError:
    effect = _EFFECT.get(kind, "read it in a way edgeasr does not check")
    return UnsafeManifestError(
        f"{manifest}: {subject} has a {kind!r} source ({what}), which lhotse would {effect}; "
        f"only {', '.join(allowed)} sources are read; if you trust this manifest, {opt_in.format(kind=kind)}")


def _clip(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def resampling_problem(orig, new) -> str | None:
    """Why lhotse should not resample ``orig`` Hz to ``new`` Hz (None: it may)."""
    rates = []
    for r in (orig, new):
        if (isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r != int(r)
                or r < MIN_RATE):
            return f"sampling rate {r!r} is not a whole number of Hz >= {MIN_RATE}"
        rates.append(int(r))
    g = math.gcd(*rates)
    if (rates[0] // g) * (rates[1] // g) > MAX_RESAMPLE_PQ:
        return (f"resampling {rates[0]} Hz to {rates[1]} Hz needs a {rates[0] // g}:{rates[1] // g} polyphase filter "
                f"(~{rates[0] // g * (rates[1] // g) * 4 >> 20} MB)")
    return None


def _transform_problem(t, rate) -> str | None:
    name = type(t).__name__
    if name in ("Speed", "Tempo"):
        f = t.factor
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not _FACTOR[0] <= f <= _FACTOR[1]:
            return f"{name} factor {f!r} is outside {_FACTOR[0]}..{_FACTOR[1]}"
        if name == "Tempo":
            return None
        return resampling_problem(rate, rate) or resampling_problem(round(rate * f), rate)  # lhotse's Speed
    if name == "Resample":
        return resampling_problem(t.source_sampling_rate, t.target_sampling_rate)
    if name == "Narrowband":
        return resampling_problem(t.source_sampling_rate, 8000)
    if name == "DereverbWPE":
        ok = all(isinstance(v, int) and 1 <= v <= hi for v, hi in
                 ((t.n_fft, 8192), (t.hop_length, 8192), (t.taps, 64), (t.delay, 64), (t.iterations, 20)))
        return None if ok else "DereverbWPE parameters out of range"
    return None


def _nested_recordings(rec) -> Iterable:
    """Recordings a recording's transforms read (a reverb's impulse response, a recording or a cut)."""
    for t in getattr(rec, "transforms", None) or []:
        rir = getattr(t, "rir", None)
        if rir is None:
            continue
        if hasattr(rir, "sources"):
            yield rir
        else:
            for part in _mono_parts(rir):
                if getattr(part, "recording", None) is not None:
                    yield part.recording


def _malformed(manifest, subject: str, what: str) -> UnsafeManifestError:
    return UnsafeManifestError(f"{manifest}: {subject} {what}; fix the manifest")


def check_recording(rec, manifest, allowed, opt_in: str) -> None:
    for src in rec.sources:
        if src.type == "file" and not isinstance(src.source, str):  # an int is a file descriptor to lhotse
            raise _malformed(manifest, f"recording {rec.id!r}", f"has a file source that is a "
                                                                  f"{type(src.source).__name__}, not a path")
        kind = source_kind(src)
        if kind not in allowed:
            what = src.source if isinstance(src.source, str) else "<bytes>"
            raise _reject(manifest, f"recording {rec.id!r}", kind, f"type {src.type!r}: {_clip(what)}", allowed, opt_in)
    for t in getattr(rec, "transforms", None) or []:
        problem = _transform_problem(t, rec.sampling_rate)
        if problem:
            raise _malformed(manifest, f"recording {rec.id!r}", f"has a {type(t).__name__} transform that would "
                                                                  f"exhaust memory or time: {problem}")
    for nested in _nested_recordings(rec):
        check_recording(nested, manifest, allowed, opt_in)


def check_recordings(recordings: Iterable, manifest, allowed, opt_in: str) -> None:
    """Raise :class:`UnsafeManifestError` on the first recording whose source is not allowed;
    ``opt_in`` says how to allow it, ``{kind}`` standing for the rejected type."""
    allowed = allowed_types(allowed)
    for rec in recordings:
        check_recording(rec, manifest, allowed, opt_in)


def _mono_parts(cut) -> Iterable:
    tracks = getattr(cut, "tracks", None)  # a MixedCut: its tracks hold the recordings
    if tracks is None:
        yield cut
        return
    for track in tracks:
        yield from _mono_parts(track.cut)


def check_cuts(cuts: Iterable, manifest, allowed, opt_in: str) -> None:
    """Every recording and feature storage in ``cuts`` (mixed cuts included)."""
    allowed = allowed_types(allowed)
    for cut in cuts:
        for part in _mono_parts(cut):
            rec = getattr(part, "recording", None)
            if rec is not None:
                check_recording(rec, manifest, allowed, opt_in)
            feats = getattr(part, "features", None)
            if feats is not None:
                if not isinstance(feats.storage_path, (str, type(None))):
                    raise _malformed(manifest, f"cut {part.id!r}", f"has a feature storage_path that is a "
                                                                   f"{type(feats.storage_path).__name__}, not a path")
                kind = features_kind(feats)
                if kind not in allowed:
                    raise _reject(manifest, f"recording {getattr(part, 'recording_id', None) or part.id!r}", kind,
                                  f"features {feats.storage_type!r} at {_clip(str(feats.storage_path))}",
                                  allowed, opt_in)


def check_path(path: Path, where: str, allowed, opt_in: str) -> None:
    """An audio path from a file list, before lhotse opens it (it reads .sph headers via a shell)."""
    allowed = allowed_types(allowed)
    kind = path_kind(str(path))
    if kind not in allowed:
        raise _reject(where, f"audio path {_clip(str(path))!r}", kind, "a file name", allowed, opt_in)


def check_inside(path: Path, root: Path, where: str, allow: bool, opt_in: str) -> None:
    """Raise :class:`PathOutsideCorpusError` if ``path`` (lexically, ``..`` resolved) is not under
    ``root``. Lexical on purpose: a symlink the corpus owner placed inside the corpus is theirs."""
    if allow:
        return
    p, r = Path(os.path.normpath(os.path.abspath(path))), Path(os.path.normpath(os.path.abspath(root)))
    if p != r and r not in p.parents:
        raise PathOutsideCorpusError(f"{where}: {path} is outside the corpus folder {r}; "
                                     f"move the file into it, or {opt_in}")
