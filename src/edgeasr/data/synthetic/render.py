"""Rendering one utterance spec (runs in the synthesis workers): eSpeak NG audio, trimmed, padded
to the drawn margins, peak-normalised, with a faint noise floor; and where its speech is."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import tts

if TYPE_CHECKING:
    from .corpus import UtteranceSpec


def render(spec: UtteranceSpec, engine: tts.ESpeak | None = None) -> np.ndarray:
    """Synthesise one spec: trimmed, resampled to 16 kHz, peak-normalised, faint noise floor added
    (eSpeak's pauses are exact zeros, which real microphones never deliver); int16 samples."""
    return render_marked(spec, engine)[0]


def _voiced(x: np.ndarray, peak: float) -> np.ndarray:
    return np.flatnonzero(np.abs(x) > peak * 10 ** (-40 / 20))


def render_marked(spec: UtteranceSpec, engine: tts.ESpeak | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`render` and where the speech is: ``speech_end`` (seconds: the last sample above -40 dB
    of the peak) and, with a hesitation, ``hesitation`` [start, end] in seconds. A hesitation
    synthesises the two halves apart and joins their voiced parts with that much silence."""
    engine = engine or tts.ESpeak.get()
    sr = tts.NATIVE_SAMPLE_RATE
    if spec.hesitation is None:
        native = engine.synthesize_native(spec.spoken, spec.voice, spec.rate, spec.pitch, spec.tts_seed)
        x = native.astype(np.float32) / 32768.0
        gap = None
    else:
        words, (k, seconds) = spec.spoken.split(), spec.hesitation
        halves = [engine.synthesize_native(" ".join(part), spec.voice, spec.rate, spec.pitch, spec.tts_seed).astype(np.float32) / 32768.0
                  for part in (words[:k], words[k:])]
        peak = max((float(np.abs(h).max()) if len(h) else 0.0) for h in halves)
        spans = [_voiced(h, peak) for h in halves]
        if peak <= 0.0 or any(len(v) == 0 for v in spans):
            raise RuntimeError(f"eSpeak produced silence for part of {spec.id}: {spec.spoken!r} ({spec.voice})")
        first = halves[0][spans[0][0]: spans[0][-1] + 1]
        x = np.concatenate([first, np.zeros(int(round(seconds * sr)), np.float32), halves[1][spans[1][0]: spans[1][-1] + 1]])
        gap = (len(first), len(first) + int(round(seconds * sr)))
    peak = float(np.abs(x).max()) if len(x) else 0.0
    if peak <= 0.0:
        raise RuntimeError(f"eSpeak produced silence for {spec.id}: {spec.spoken!r} ({spec.voice})")
    voiced = _voiced(x, peak)
    lead, trail = int(spec.lead_s * sr), int(spec.trail_s * sr)
    start, end = max(0, voiced[0] - lead), min(len(x), voiced[-1] + 1 + trail)
    # eSpeak's own margins can be shorter than the drawn ones: pad with silence.
    x = np.concatenate(
        [
            np.zeros(lead - (voiced[0] - start), np.float32),
            x[start:end],
            np.zeros(trail - (end - voiced[-1] - 1), np.float32),
        ]
    )
    y = tts.resample_16k(x)
    y *= 10 ** (spec.peak_dbfs / 20) / max(float(np.abs(y).max()), 1e-9)
    floor = np.random.default_rng(spec.tts_seed).standard_normal(len(y)).astype(np.float32)
    y += 10 ** (spec.floor_dbfs / 20) * floor
    shift = lead - voiced[0]  # native sample i of the synthesis is sample i + shift of x
    marks: dict[str, Any] = {"speech_end": round(float(voiced[-1] + 1 + shift) / sr, 4)}
    if gap is not None:
        marks["hesitation"] = [round(float(gap[0] + shift) / sr, 4), round(float(gap[1] + shift) / sr, 4)]
    return np.clip(np.round(y * 32767.0), -32768, 32767).astype(np.int16), marks
