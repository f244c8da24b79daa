"""Synthetic room impulse responses and background noises for reverberation/noise augmentation.

Each item has its own random stream (seed, kind, index), so asking for more items never changes the
earlier ones. Babble is synthesised by eSpeak in freshly forked processes (see workers.py) so that
it is deterministic.
"""

from __future__ import annotations

import os
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, lfilter, resample_poly, sosfilt

from . import tts
from .corpus import common_generator, derive_rng
from .workers import run_fresh, worker_pool

NOISE_KINDS = ("white", "pink", "brown", "hum", "babble", "fan")


def _recording(rec_id: str, path: Path, num_samples: int, sample_rate: int):
    from lhotse import AudioSource, Recording  # not at the top: see make_rir_pool

    return Recording(
        id=rec_id,
        sources=[AudioSource(type="file", channels=[0], source=str(path))],
        sampling_rate=sample_rate,
        num_samples=num_samples,
        duration=num_samples / sample_rate,
    )


# ---------------------------------------------------------------------------------------------
# Room impulse responses


def synthetic_rir(rng: np.random.Generator, sample_rate: int = 16000) -> np.ndarray:
    """One RIR: direct-path impulse, sparse early reflections, exponentially decaying noisy tail.

    RT60 ~ U(0.2, 0.8) s; the tail's amplitude falls by 60 dB over RT60 (exp(-ln(1000) t / RT60)).
    Peak-normalised to 0.9.
    """
    rt60 = rng.uniform(0.2, 0.8)
    decay = np.log(1000.0) / rt60
    length = int((1.1 * rt60 + 0.05) * sample_rate)
    d0 = int(rng.uniform(0.001, 0.01) * sample_rate)  # 0.3-3.4 m source distance
    h = np.zeros(length)
    h[d0] = 1.0
    for _ in range(int(rng.integers(6, 15))):
        t = d0 + int(rng.uniform(0.002, 0.06) * sample_rate)
        if t < length:
            h[t] += (
                rng.choice((-1.0, 1.0))
                * rng.uniform(0.2, 0.8)
                * np.exp(-decay * (t - d0) / sample_rate)
            )
    t = np.arange(length - d0) / sample_rate
    tail = rng.standard_normal(length - d0) * np.exp(-decay * t)
    tail *= 1.0 - np.exp(-t / rng.uniform(0.005, 0.02))  # reverberant field builds up
    a = rng.uniform(0.2, 0.7)  # wall/air absorption damps high frequencies
    tail = lfilter([1.0 - a], [1.0, -a], tail)
    drr_db = rng.uniform(-5.0, 10.0)  # direct+early vs late energy
    early = float(np.sum(h**2))
    tail *= np.sqrt(early / (np.sum(tail**2) * 10 ** (drr_db / 10)))
    h[d0:] += tail
    return (0.9 * h / np.abs(h).max()).astype(np.float32)


def make_rir_pool(n: int, seed: int, out_dir: Path, sample_rate: int = 16000):
    """`n` synthetic room impulse responses as 24-bit FLAC under out_dir; ids rir-0000, ..."""
    # lhotse not at the top: spawn synthesis workers import this package (edgeasr.data.synthetic),
    # and lhotse (it imports torch) costs each worker 2.2 s of CPU (measured, see corpus.py).
    from lhotse import RecordingSet

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(int(n)):
        h = synthetic_rir(derive_rng(seed, "rir", i), sample_rate)
        path = out_dir / f"rir-{i:04d}.flac"
        sf.write(path, h, sample_rate, format="FLAC", subtype="PCM_24")
        recs.append(_recording(f"rir-{i:04d}", path, len(h), sample_rate))
    return RecordingSet.from_recordings(recs)


# ---------------------------------------------------------------------------------------------
# Noises


def _coloured(rng, n: int, alpha: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f**alpha (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    spec[1:] /= f[1:] ** (alpha / 2)
    spec[0] = 0.0
    return np.fft.irfft(spec, n)


def _hum(rng, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    f0 = rng.choice((50.0, 60.0)) * rng.uniform(0.995, 1.005)
    x = np.zeros(n)
    for k in range(1, int(rng.integers(4, 13)) + 1):
        if k * f0 < sr / 2:
            x += (
                rng.uniform(0.1, 1.0)
                / k ** rng.uniform(0.5, 1.5)
                * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
            )
    x *= 1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.1, 1.0) * t)
    return x + 0.01 * np.std(x) * rng.standard_normal(n)


def _fan(rng, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    lo = rng.uniform(60, 200)
    hi = min(rng.uniform(800, 4000), 0.45 * sr)
    x = sosfilt(
        butter(int(rng.integers(2, 5)), [lo, hi], btype="bandpass", fs=sr, output="sos"),
        rng.standard_normal(n),
    )
    blade = rng.uniform(20, 120)
    tone = sum(
        np.sin(2 * np.pi * k * blade * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 4)
    )
    x = x / np.std(x) + rng.uniform(0.05, 0.5) * tone
    return x * (1 + rng.uniform(0.02, 0.15) * np.sin(2 * np.pi * rng.uniform(0.2, 2.0) * t))


def _babble_specs(rng, duration: float, gen, voices):
    """Talkers (3-7), each a list of (spoken text, voice, rate, pitch, seed, gap_s)."""
    talkers = []
    for _ in range(int(rng.integers(3, 8))):
        # ~0.35 s per word at 130-230 wpm: enough utterances to outlast the noise clip
        words, utts = 0, []
        while words * 0.3 < duration + 2:
            req = gen.sample(rng)
            words += len(req.text.split()) + 1
            utts.append(
                (
                    req.spoken,
                    voices[int(rng.integers(len(voices)))],
                    int(rng.integers(130, 231)),
                    int(rng.integers(25, 81)),
                    int(rng.integers(1, 2**31 - 1)),
                    float(rng.uniform(0.05, 0.6)),
                )
            )
        talkers.append(utts)
    return talkers


def _render_babble(talkers, n: int, sr: int, gains_db, offsets) -> np.ndarray:
    engine = tts.ESpeak.get()
    mix = np.zeros(n)
    for utts, gain_db, offset in zip(talkers, gains_db, offsets):
        parts = []
        for spoken, voice, rate, pitch, seed, gap in utts:
            parts.append(engine.synthesize(spoken, voice, rate, pitch, seed))
            parts.append(np.zeros(int(gap * tts.SAMPLE_RATE), np.float32))
        y = np.concatenate(parts)
        if sr != tts.SAMPLE_RATE:
            g = gcd(sr, tts.SAMPLE_RATE)
            y = resample_poly(y, sr // g, tts.SAMPLE_RATE // g)
        y = np.roll(np.resize(y, n), int(offset * n))  # loop to length, start anywhere
        mix += 10 ** (gain_db / 20) * y / max(np.std(y), 1e-9)
    return mix


def make_noise_pool(
    n: int, seed: int, out_dir: Path, duration: float = 10.0, sample_rate: int = 16000
):
    """`n` background noises (FLAC under out_dir, ids noise-0000, ...), cycling through kinds
    white, pink, brown, hum (mains + harmonics), babble (3-7 overlapped eSpeak talkers) and fan
    (band-limited noise + blade tone); parameters vary per item. RMS-normalised to -26 dBFS."""
    from lhotse import RecordingSet  # not at the top: see make_rir_pool

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_samples = int(round(duration * sample_rate))
    signals: dict[int, np.ndarray] = {}
    babble_jobs = []
    gen = voices = None
    for i in range(int(n)):
        rng = derive_rng(seed, "noise", i)
        kind = NOISE_KINDS[i % len(NOISE_KINDS)]
        if kind in ("white", "pink", "brown"):
            alpha = {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind] + rng.uniform(-0.15, 0.15)
            signals[i] = _coloured(rng, n_samples, max(0.0, alpha))
        elif kind == "hum":
            signals[i] = _hum(rng, n_samples, sample_rate)
        elif kind == "fan":
            signals[i] = _fan(rng, n_samples, sample_rate)
        else:
            if gen is None:
                gen = common_generator({"inventory": {}, "wake_word": None}, seed)
                voices = tts.available_voices(tts.DEFAULT_ACCENTS)
            talkers = _babble_specs(rng, duration, gen, voices)
            gains = rng.uniform(-6.0, 0.0, len(talkers))
            offsets = rng.uniform(0.0, 1.0, len(talkers))
            babble_jobs.append((i, (talkers, n_samples, sample_rate, gains, offsets)))
    if babble_jobs:
        # One fresh process per babble clip: eSpeak output must not depend on earlier synthesis.
        pool = worker_pool(min(2, os.cpu_count() or 1))
        results = [pool.apply_async(run_fresh, (_render_babble, *a)) for _, a in babble_jobs]
        for (i, _), res in zip(babble_jobs, results):
            signals[i] = res.get()
    recs = []
    for i in range(int(n)):
        x = signals[i]
        x = np.clip(x * (0.05 / max(float(np.std(x)), 1e-12)), -0.99, 0.99)
        path = out_dir / f"noise-{i:04d}.flac"
        sf.write(path, x.astype(np.float32), sample_rate, format="FLAC", subtype="PCM_16")
        recs.append(_recording(f"noise-{i:04d}", path, len(x), sample_rate))
    return RecordingSet.from_recordings(recs)
