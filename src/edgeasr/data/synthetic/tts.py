"""eSpeak NG speech synthesis through ctypes (library and data from the `espeakng-loader` wheel).

eSpeak keeps synthesis state in C statics (pitch-flutter phase, glottal phase, filter memories)
that carry over from one utterance to the next and survive ``espeak_Terminate``/``Initialize``.
The audio of an utterance therefore depends on what the same process synthesised before it. The
corpus builder copes by synthesising every fixed chunk of utterances in a fresh process (see
``corpus.py``); within one process, output is reproducible only for the same sequence of calls.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import threading
from pathlib import Path

import espeakng_loader
import numpy as np
from scipy.signal import firwin, resample_poly

NATIVE_SAMPLE_RATE = 22050
SAMPLE_RATE = 16000

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE = 1
_ESPEAK_PITCH = 3
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
# Variant names end up as speaker ids; keep ones that are safe in ids and file names.
_SAFE_VARIANT = re.compile(r"^[A-Za-z0-9_-]+$")
DEFAULT_ACCENTS = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def data_path() -> Path:
    """Directory of the eSpeak NG data shipped by espeakng-loader."""
    return Path(espeakng_loader.get_data_path())


def variant_names() -> list[str]:
    """Voice variant names found in espeak-ng-data/voices/!v (sorted, id-safe names only)."""
    vdir = data_path() / "voices" / "!v"
    return sorted(p.name for p in vdir.iterdir() if p.is_file() and _SAFE_VARIANT.match(p.name))


class ESpeak:
    """One initialised eSpeak NG engine per process (use :meth:`get`).

    eSpeak is a process-wide singleton in C, so this class is too; calls are serialised by a lock.
    """

    _instance: "ESpeak | None" = None
    _instance_pid: int | None = None
    _create_lock = threading.Lock()

    def __init__(self) -> None:
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_Voice)
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        sr = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0
        )
        if sr != NATIVE_SAMPLE_RATE:
            raise RuntimeError(f"espeak_Initialize returned {sr}, expected {NATIVE_SAMPLE_RATE}")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: C holds only the pointer
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()
        self._voice: str | None = None

    @classmethod
    def get(cls) -> "ESpeak":
        """The process-wide engine, created on first use (and again after a fork)."""
        with cls._create_lock:
            if cls._instance is None or cls._instance_pid != os.getpid():
                cls._instance = cls()
                cls._instance_pid = os.getpid()
            return cls._instance

    def _on_audio(self, wav, n, events) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def set_voice(self, voice: str) -> bool:
        """Select "accent+variant"; False when eSpeak did not apply exactly that voice.

        eSpeak silently falls back to the base accent for an unknown variant, so the check reads the
        identifier of the voice it actually selected.
        """
        if voice == self._voice:
            return True
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            self._voice = None
            return False
        ident = self._lib.espeak_GetCurrentVoice().contents.identifier or b""
        ident = ident.decode(errors="replace").lower()
        accent, _, variant = voice.lower().partition("+")
        ok = ident.rsplit("/", 1)[-1] == (f"{accent}+{variant}" if variant else accent)
        self._voice = voice if ok else None
        return ok

    def synthesize_native(
        self, text: str, voice: str, rate: int = 175, pitch: int = 50, seed: int = 0
    ) -> np.ndarray:
        """Speak `text`; int16 samples at 22050 Hz. `seed` seeds eSpeak's noise generators."""
        with self._lock:
            if not self.set_voice(voice):
                raise ValueError(f"eSpeak NG voice not available: {voice!r}")
            self._lib.espeak_SetParameter(_ESPEAK_RATE, int(rate), 0)
            self._lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0)
            self._lib.espeak_ng_SetRandSeed(int(seed))
            self._chunks = []
            data = text.encode("utf-8")
            err = self._lib.espeak_Synth(
                data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            if err != 0:
                raise RuntimeError(f"espeak_Synth failed ({err}) for {text!r}")
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    def synthesize(
        self, text: str, voice: str, rate: int = 175, pitch: int = 50, seed: int = 0
    ) -> np.ndarray:
        """Speak `text`; float32 in [-1, 1] at 16 kHz."""
        x = self.synthesize_native(text, voice, rate, pitch, seed).astype(np.float32) / 32768.0
        return resample_16k(x)


@functools.lru_cache(maxsize=None)
def _resample_filter() -> np.ndarray:
    # scipy's default resample_poly filter, designed once: the design costs as much as filtering.
    return firwin(2 * 10 * 441 + 1, 1.0 / 441, window=("kaiser", 5.0)).astype(np.float32)


def resample_16k(x: np.ndarray) -> np.ndarray:
    """22050 Hz -> 16 kHz, same as scipy.signal.resample_poly(x, 320, 441) (exact ratio)."""
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        return x
    return resample_poly(x, 320, 441, window=_resample_filter()).astype(np.float32)


def synthesize(
    text: str, voice: str, rate: int = 175, pitch: int = 50, seed: int = 0
) -> np.ndarray:
    """Speak `text` with this process's engine; float32 at 16 kHz."""
    return ESpeak.get().synthesize(text, voice, rate, pitch, seed)


@functools.lru_cache(maxsize=None)
def _working_voices(accents: tuple[str, ...]) -> tuple[str, ...]:
    # Selecting a voice synthesises nothing, so probing in this process is harmless.
    engine = ESpeak.get()
    ok = []
    with engine._lock:
        for accent in accents:
            if not engine.set_voice(accent):
                continue
            ok.extend(
                v for v in (f"{accent}+{name}" for name in variant_names()) if engine.set_voice(v)
            )
    return tuple(ok)


def available_voices(accents=DEFAULT_ACCENTS) -> list[str]:
    """All "accent+variant" voices eSpeak actually selects, for the given accents (stable order)."""
    return list(_working_voices(tuple(accents)))
