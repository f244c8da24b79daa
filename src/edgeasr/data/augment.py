"""Speed perturbation, reverberation and additive noise through lhotse's cut transforms.

Augmented cuts are rendered to audio once in the prepare stage (``CutSet.save_audios``) and get
their own features: on 2 CPU cores training cannot afford on-the-fly augmentation, and rendered
audio keeps every split decodable by audio-level runtimes (sherpa-onnx) later.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

from lhotse import CutSet, Recording, RecordingSet
from lhotse.cut import Cut


AUDIO_PATTERNS = ("*.wav", "*.flac")


def audio_pool(folder, key: str, sample_rate: int) -> RecordingSet:
    """Every ``.wav`` / ``.flac`` under ``folder`` (e.g. MUSAN's ``noise/`` and ``music/``, or
    RIRS_NOISES' ``real_rirs_isotropic_noises/``) as recordings at ``sample_rate``, sorted by id so the
    draw is reproducible. ``key`` names the setting in errors."""
    root = Path(str(folder)).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{key}={root} is not a directory; point it at a folder of .wav/.flac files or set it to null")
    files = sorted({f for pattern in AUDIO_PATTERNS for f in root.rglob(pattern)})
    if not files:
        raise ValueError(f"{key}={root} holds no .wav or .flac files")
    recs = []
    for f in files:
        rec = Recording.from_file(f, recording_id=str(f.relative_to(root).with_suffix("")).replace("/", "_"))
        recs.append(rec if rec.sampling_rate == sample_rate else rec.resample(sample_rate))
    return RecordingSet.from_recordings(recs)


def add_noise(cut: Cut, noise: Cut, snr_db: float, rng: random.Random) -> Cut:
    """Mix ``noise`` under ``cut`` at ``snr_db``, tiling the noise when the cut is longer."""
    mixed, offset = cut, 0.0
    while offset < cut.duration - 1e-3:
        dur = min(noise.duration, cut.duration - offset)
        start = rng.uniform(0.0, noise.duration - dur)
        seg = noise.truncate(offset=start, duration=dur, preserve_id=True)
        mixed = mixed.mix(seg, offset_other_by=offset, snr=snr_db, preserve_id="left")
        offset += dur
    return mixed


def augment(
    cuts: CutSet, rirs: RecordingSet, noises: RecordingSet, *, seed: int, copies: int = 1,
    speeds: Sequence[float] = (0.9, 1.0, 1.1), reverb_prob: float = 0.5, noise_prob: float = 0.5,
    snr_db: Sequence[float] = (5.0, 20.0), id_prefix: str = "aug",
) -> CutSet:
    """``copies`` augmented versions of each cut: a random speed, then reverberation with
    probability ``reverb_prob`` and noise at a uniform SNR with probability ``noise_prob``.
    Deterministic given ``seed``; ids are ``<prefix><k>-<cut id>``."""
    rng = random.Random(seed)
    rir_list = list(rirs)
    noise_cuts = [r.to_cut() for r in noises]
    out = []
    for k in range(copies):
        for cut in cuts:
            c = cut
            speed = rng.choice(list(speeds))
            if speed != 1.0:
                c = c.perturb_speed(speed, affix_id=False)
            if rir_list and rng.random() < reverb_prob:
                c = c.reverb_rir(rng.choice(rir_list), affix_id=False)
            if noise_cuts and rng.random() < noise_prob:
                c = add_noise(c, rng.choice(noise_cuts), rng.uniform(*snr_db), rng)
            out.append(c.with_id(f"{id_prefix}{k}-{cut.id}"))
    return CutSet.from_cuts(out)


def corrupt(cuts: CutSet, rirs: RecordingSet, noises: RecordingSet, *, seed: int,
            snr_db: Sequence[float] = (5.0, 15.0)) -> CutSet:
    """Reverberation AND noise on every cut (the ``test_noisy`` condition); ids unchanged."""
    rng = random.Random(seed)
    rir_list = list(rirs)
    noise_cuts = [r.to_cut() for r in noises]
    out = []
    for cut in cuts:
        c = cut.reverb_rir(rng.choice(rir_list), affix_id=False)
        c = add_noise(c, rng.choice(noise_cuts), rng.uniform(*snr_db), rng)
        out.append(c.with_id(cut.id))
    return CutSet.from_cuts(out)
