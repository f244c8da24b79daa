"""Manifests from outside are data, never code: checked before any of their audio is read.

lhotse reads a recording's ``AudioSource`` by its type: ``file`` (a local path), ``memory`` (bytes in
the manifest), ``command`` (run with a shell), ``url`` (fetched from the network) or ``shar`` (a
placeholder filled by a Shar reader). A ``file`` whose name ends in ``.sph`` (or ``.opus`` with
``LHOTSE_LEGACY_OPUS_LOADING``) is decoded by a shell command built from the path, and names like
``s3://...`` reach network-capable decoders; such paths count as ``command`` / ``url`` here.
Feature storages are classified the same way (``kaldiio`` scp files may hold pipes; ``lilcom_url``
and URL / ``pipe:`` storage paths go through lhotse's ``open_best``).

Every entry point that takes manifests or paths from a user (``data.source=manifests``,
``data.source=folder``, ``edgeasr score``) calls this module first; anything but ``file`` and
``memory`` stops with a :class:`UnsafeManifestError` naming the manifest, the recording and the
type, unless the caller's setting (``data.allow_source_types``, ``--allow-source-type``) lists it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

SAFE_SOURCE_TYPES = ("file", "memory")
SOURCE_TYPES = ("file", "memory", "command", "url", "shar")

# What each non-local type would do, for the error message.
_EFFECT = {"command": "run a shell command", "url": "fetch it from the network",
           "shar": "expect a Lhotse Shar reader"}
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


def check_recording(rec, manifest, allowed, opt_in: str) -> None:
    for src in rec.sources:
        kind = source_kind(src)
        if kind not in allowed:
            what = src.source if isinstance(src.source, str) else "<bytes>"
            raise _reject(manifest, f"recording {rec.id!r}", kind, f"type {src.type!r}: {_clip(what)}", allowed, opt_in)


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
