"""Deterministic synthetic voice-assistant corpus: texts -> eSpeak NG -> 16 kHz FLAC + lhotse.

Determinism: every split has its own random stream derived from (seed, split name), and each
utterance's text, voice and prosody are drawn from it in a fixed order. eSpeak carries synthesis
state from one utterance to the next inside a process (see tts.py), so utterances are synthesised
in fixed chunks of CHUNK_SIZE, each chunk in a child forked from a pool worker that never
synthesises itself (workers.py): the audio then depends only on the chunk's contents, never on
num_jobs or scheduling.
"""

from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import soundfile as sf
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from .. import BIASING_SPLITS, PAUSE_SPLITS
from . import tts
from .render import render_marked
from .text import Inventory, RareRequestGenerator, RequestGenerator, build_inventory, long_tail_generator
from .workers import run_fresh, worker_pool

SPLITS = ("train", "unlabeled", "dev", "test", "test_noisy", "test_rare", "dev_pause", "test_pause") + BIASING_SPLITS
RARE_SPLITS = ("test_rare",) + BIASING_SPLITS
VOICE_POOL = {
    "train": "train",
    "unlabeled": "train",
    "dev": "dev",
    "test": "test",
    "test_noisy": "test",
    "test_rare": "test",
    "dev_pause": "dev",
    "test_pause": "test",
    "dev_rare": "dev",
}

SAMPLE_RATE = tts.SAMPLE_RATE
CHUNK_SIZE = 64  # utterances per forked child: ~110 s of audio, ~0.25 s of CPU
_EXPECTED_UTT_S = 2.2  # prior for scheduling only; results never depend on it


def derive_rng(seed: int, *names: str | int) -> np.random.Generator:
    """Independent generator for a named purpose (e.g. ("split", "train")) under `seed`."""
    key = tuple(zlib.crc32(str(n).encode()) for n in names)
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key))


def as_dict(cfg: Any) -> dict:
    """A plain dict from a dict or an OmegaConf node."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return {k: (as_dict(v) if isinstance(v, Mapping) else v) for k, v in dict(cfg).items()}


# ---------------------------------------------------------------------------------------------
# Voices


def split_voices(cfg: Mapping, seed: int) -> dict[str, list[str]]:
    """Disjoint voice pools {"train", "dev", "test"} from every working (accent, variant) pair."""
    vcfg = as_dict(cfg).get("voices", {})
    voices = sorted(tts.available_voices(vcfg.get("accents", ["en-us"])))
    if not voices:
        raise RuntimeError("no working eSpeak NG voice for the configured accents")
    order = derive_rng(seed, "voices").permutation(len(voices))
    voices = [voices[i] for i in order]
    n = len(voices)

    def count(frac: float) -> int:
        return max(1, int(round(n * frac))) if frac > 0 else 0

    n_dev = count(float(vcfg.get("dev_fraction", 0.08)))
    n_test = count(float(vcfg.get("test_fraction", 0.12)))
    if n_dev + n_test >= n:
        raise ValueError(f"dev/test fractions leave no training voice out of {n}")
    return {
        "dev": voices[:n_dev],
        "test": voices[n_dev : n_dev + n_test],
        "train": voices[n_dev + n_test :],
    }


# ---------------------------------------------------------------------------------------------
# Utterance specifications


@dataclass(frozen=True)
class UtteranceSpec:
    """Everything needed to render one utterance; drawn in the parent, rendered in a worker."""

    id: str
    text: str
    spoken: str
    family: str
    voice: str
    rate: int
    pitch: int
    lead_s: float
    trail_s: float
    peak_dbfs: float
    floor_dbfs: float
    tts_seed: int
    entity: str | None = None
    context: tuple[str, ...] | None = None
    word_classes: str | None = None  # one "s" (slot) / "c" (carrier) per word of `text`
    hesitation: tuple[int, float] | None = None  # (words of `spoken` before the pause, its seconds)


def common_generator(cfg: Mapping, seed: int) -> RequestGenerator:
    """The request generator over the common inventory shared by the main splits."""
    cfg = as_dict(cfg)
    inv: Inventory = build_inventory(cfg.get("inventory", {}), derive_rng(seed, "inventory"))
    return RequestGenerator(inv, cfg.get("wake_word"), cfg.get("wake_word_prob", 0.0))


def iter_split_specs(
    cfg: Mapping,
    seed: int,
    split: str,
    voices: Mapping[str, list[str]] | None = None,
    generator: RequestGenerator | None = None,
) -> Iterator[UtteranceSpec]:
    """The endless, deterministic utterance sequence of one split (a split is a prefix of it)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    cfg = as_dict(cfg)
    voices = voices if voices is not None else split_voices(cfg, seed)
    pool = voices[VOICE_POOL[split]]
    common = generator if generator is not None else common_generator(cfg, seed)
    vcfg = cfg.get("voices", {})
    rate_lo, rate_hi = (int(v) for v in vcfg.get("rate", [130, 230]))
    pitch_lo, pitch_hi = (int(v) for v in vcfg.get("pitch", [25, 80]))
    rng = derive_rng(seed, "split", split)
    pauses = cfg.get("pauses", {}) if split in PAUSE_SPLITS else None
    trail_lo, trail_hi = (float(v) for v in (pauses or {}).get("trail_s", [0.1, 0.2]))
    gen: RequestGenerator | RareRequestGenerator = common
    if split in RARE_SPLITS or split in (cfg.get("long_tail") or {}).get("splits", []):
        inv = cfg.get("inventory", {})
        rare = RareRequestGenerator(
            common, int(inv.get("rare_contact_min_rank", 20000)), int(cfg.get("context_size", 12))
        )
        gen = rare if split in RARE_SPLITS else long_tail_generator(
            common, rare, float(cfg["long_tail"].get("contact_prob", 0.0)))
    i = 0
    while True:
        req = gen.sample(rng)
        hesitation = _draw_hesitation(req.spoken, pauses, rng) if pauses is not None else None
        yield UtteranceSpec(
            id=f"{split}-{i:06d}",
            text=req.text,
            spoken=req.spoken,
            family=req.family,
            voice=pool[int(rng.integers(len(pool)))],
            rate=int(rng.integers(rate_lo, rate_hi + 1)),
            pitch=int(rng.integers(pitch_lo, pitch_hi + 1)),
            lead_s=float(rng.uniform(0.1, 0.2)),
            trail_s=float(rng.uniform(trail_lo, trail_hi)),
            peak_dbfs=float(rng.uniform(-18.0, -1.0)),
            floor_dbfs=float(rng.uniform(-84.0, -72.0)),
            tts_seed=int(rng.integers(1, 2**31 - 1)),
            entity=req.entity,
            context=tuple(req.context) if req.context is not None else None,
            word_classes=req.word_classes,
            hesitation=hesitation,
        )
        i += 1


def _draw_hesitation(spoken: str, pauses: Mapping, rng: np.random.Generator) -> tuple[int, float] | None:
    """A pause inside the request with probability ``hesitation_prob``, at a word boundary drawn
    uniformly (after the wake word counts too), of ``hesitation_s`` seconds (uniform)."""
    prob = float(pauses.get("hesitation_prob", 0.0))
    lo, hi = (float(v) for v in pauses.get("hesitation_s", [0.3, 0.9]))
    draw, where, length = rng.uniform(), rng.uniform(), rng.uniform(lo, hi)  # always drawn: a fixed stream
    words = len(spoken.split())
    if words < 2 or draw >= prob:
        return None
    return 1 + int(where * (words - 1)), float(length)


# ---------------------------------------------------------------------------------------------
# Rendering (runs in worker processes)


def _render_chunk(out_dir: str, specs: list[UtteranceSpec]) -> list[tuple[int, dict[str, Any]]]:
    engine = tts.ESpeak.get()
    done = []
    for spec in specs:
        audio, marks = render_marked(spec, engine)
        path = Path(out_dir) / f"{spec.id}.flac"
        sf.write(path, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        done.append((len(audio), marks))
    return done


# ---------------------------------------------------------------------------------------------
# Scheduling


class _SplitJob:
    """Chunks of one split, submitted ahead while their expected audio falls short of the target."""

    def __init__(self, name: str, target_s: float, specs: Iterator[UtteranceSpec], out_dir: Path):
        self.name, self.target_s, self.specs, self.out_dir = name, target_s, specs, out_dir
        self.chunks: list[list[UtteranceSpec]] = []
        self.lengths: dict[int, list[int]] = {}
        self.marks: dict[str, dict[str, Any]] = {}  # per utterance id: where its speech is
        self.kept: list[tuple[UtteranceSpec, int]] | None = None  # set once the target is reached
        self.bar = None

    def next_chunk(self) -> tuple[int, list[UtteranceSpec]]:
        chunk = [next(self.specs) for _ in range(CHUNK_SIZE)]
        self.chunks.append(chunk)
        return len(self.chunks) - 1, chunk

    def pending(self) -> int:
        return len(self.chunks) - len(self.lengths)

    def expected_s(self, per_utt_s: float) -> float:
        done = sum(sum(v) for v in self.lengths.values()) / SAMPLE_RATE
        return done + self.pending() * CHUNK_SIZE * per_utt_s

    def finish_if_ready(self) -> bool:
        """Cut the split at the first utterance where the cumulative duration reaches the target."""
        total, kept = 0, []
        for k in range(len(self.chunks)):
            if k not in self.lengths:
                return False
            for spec, n in zip(self.chunks[k], self.lengths[k]):
                kept.append((spec, n))
                total += n
                if total >= self.target_s * SAMPLE_RATE:
                    self.kept = kept
                    return True
        return False

    def contiguous_s(self) -> float:
        total = 0
        for k in range(len(self.chunks)):
            if k not in self.lengths:
                break
            total += sum(self.lengths[k])
        return total / SAMPLE_RATE


def _run_jobs(jobs: list[_SplitJob], num_jobs: int, progress: bool) -> None:
    window = max(2, 2 * num_jobs)
    per_utt_s = _EXPECTED_UTT_S
    done_s, done_n = 0.0, 0
    inflight: deque = deque()
    pool = worker_pool(num_jobs)
    while True:
        # Submit for the first unfinished split whose in-flight work will not cover its target.
        while len(inflight) < window:
            job = next(
                (j for j in jobs if j.kept is None and j.expected_s(per_utt_s) < j.target_s),
                None,
            )
            if job is None:
                break
            k, chunk = job.next_chunk()
            # Absolute: cached workers keep the cwd they were spawned in.
            res = pool.apply_async(run_fresh, (_render_chunk, str(job.out_dir.resolve()), chunk))
            inflight.append((job, k, res))
        if not inflight:
            if all(j.kept is not None for j in jobs):
                break
            raise RuntimeError("synthesis scheduler stalled")  # pragma: no cover
        job, k, res = inflight.popleft()
        done = res.get()
        job.lengths[k] = [n for n, _ in done]
        job.marks.update((spec.id, m) for spec, (_, m) in zip(job.chunks[k], done))
        done_s += sum(job.lengths[k]) / SAMPLE_RATE
        done_n += len(job.lengths[k])
        per_utt_s = done_s / done_n
        if progress and job.kept is None:
            _update_bar(job)
        if job.kept is None and job.finish_if_ready() and job.bar is not None:
            job.bar.update(job.bar.total - job.bar.n)
            job.bar.close()


def _update_bar(job: _SplitJob) -> None:
    if job.bar is None:
        job.bar = tqdm(
            total=round(job.target_s),
            desc=f"synth {job.name}",
            unit="audio-s",
            dynamic_ncols=True,
            leave=True,
        )
    job.bar.update(min(round(job.contiguous_s()), job.bar.total) - job.bar.n)


# ---------------------------------------------------------------------------------------------
# Public entry point


def synthesize_corpus(
    cfg: Mapping, seed: int, out_dir: Path, num_jobs: int = 2, progress: bool = True
):
    """Synthesise the configured splits; returns {split: (RecordingSet, SupervisionSet)}.

    `cfg` is the `data` node (conf/data/synthetic.yaml). Splits listed under cfg.splits with
    hours > 0 are generated until their cumulative duration reaches hours * 3600 s; audio goes to
    out_dir/<split>/<id>.flac (16 kHz mono, 16-bit). Supervisions cover each recording entirely:
    normalised text, speaker = voice name, custom = {family, voice, rate, pitch, word_classes} plus,
    in test_rare, the named `entity` and the user's `context` list. `word_classes` has one "s" (slot
    value) or "c" (carrier word) per word of the text (edgeasr/data/word_classes.py). The
    end-pointing splits (dev_pause, test_pause) add ``speech_end`` and, where the request has a
    hesitation inside, ``hesitation`` [start, end] (seconds, from the synthesis). test_noisy is
    returned clean. Output is identical for the same cfg and seed whatever num_jobs is. Workers
    use the spawn start method, so a calling script needs the usual ``if __name__ == "__main__":``
    guard.
    """
    # Not at the top: spawn workers import this module, and lhotse (which imports torch) costs each
    # of them 2.2 s of CPU (measured: python -c 'import edgeasr.data.synthetic; import lhotse').
    from lhotse import AudioSource, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    cfg = as_dict(cfg)
    if int(cfg.get("sample_rate", SAMPLE_RATE)) != SAMPLE_RATE:
        raise ValueError(f"only {SAMPLE_RATE} Hz is supported")
    splits_cfg = cfg.get("splits", {}) or {}
    unknown = set(splits_cfg) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; expected a subset of {SPLITS}")
    wanted = [
        s for s in SPLITS if s in splits_cfg and float((splits_cfg[s] or {}).get("hours", 0)) > 0
    ]
    out_dir = Path(out_dir)
    if wanted:
        worker_pool(max(1, int(num_jobs)))  # workers start up while the texts are drawn
    voices = split_voices(cfg, seed)
    generator = common_generator(cfg, seed)
    jobs = []
    for split in wanted:
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        jobs.append(
            _SplitJob(
                split,
                float(splits_cfg[split]["hours"]) * 3600.0,
                iter_split_specs(cfg, seed, split, voices, generator),
                out_dir / split,
            )
        )
    if jobs:
        _run_jobs(jobs, max(1, int(num_jobs)), progress)

    result = {}
    for job in jobs:
        assert job.kept is not None
        keep = {spec.id for spec, _ in job.kept}
        for path in job.out_dir.glob(f"{job.name}-*.flac"):  # surplus chunks and older runs
            if path.stem not in keep:
                path.unlink()
        recordings, supervisions = [], []
        for spec, n in job.kept:
            dur = n / SAMPLE_RATE
            path = job.out_dir / f"{spec.id}.flac"
            source = AudioSource(type="file", channels=[0], source=str(path))
            recordings.append(
                Recording(
                    id=spec.id,
                    sources=[source],
                    sampling_rate=SAMPLE_RATE,
                    num_samples=n,
                    duration=dur,
                )
            )
            custom: dict[str, Any] = {
                "family": spec.family,
                "voice": spec.voice,
                "rate": spec.rate,
                "pitch": spec.pitch,
            }
            if spec.word_classes is not None:
                custom["word_classes"] = spec.word_classes
            if spec.context is not None:
                custom["entity"] = spec.entity
                custom["context"] = list(spec.context)
            if job.name in PAUSE_SPLITS:
                custom.update(job.marks[spec.id])
            supervisions.append(
                SupervisionSegment(
                    id=spec.id,
                    recording_id=spec.id,
                    start=0.0,
                    duration=dur,
                    channel=0,
                    text=spec.text,
                    language="English",
                    speaker=spec.voice,
                    custom=custom,
                )
            )
        result[job.name] = (
            RecordingSet.from_recordings(recordings),
            SupervisionSet.from_segments(supervisions),
        )
    return result
