"""Verify a sherpa-onnx bundle against our own PyTorch decode, and contextual biasing through it.

* :func:`sherpa_decode` runs :mod:`edgeasr.deploy.sherpa_worker` in a subprocess (sherpa-onnx exits
  the process on errors) and returns token strings, texts and per-utterance decode times.
* :func:`torch_greedy` is the reference: Kaldi fbank on the same samples (the prepare stage's
  options, which are sherpa's), then :func:`~edgeasr.decoding.greedy_search` (offline) or
  ``LstmEncoder.infer`` + :func:`~edgeasr.decoding.greedy_search_streaming` fed chunk by chunk
  exactly as sherpa's ``OnlineRecognizer`` does (``T = 4 s m + 3`` frames per call, shift ``4 s m``,
  only whole chunks, ``tail_padding_s`` of zeros appended first).
* :func:`verify_bundle` compares the two token by token; :func:`hotword_wer` decodes with
  ``modified_beam_search`` with and without each utterance's context list as hotwords.

Reference features are computed from the audio, not read from the prepare stage's lilcom feature
files (lilcom is lossy; a device sees audio). sherpa-onnx must be told to scale samples to the
int16 range (see :mod:`edgeasr.deploy.sherpa_worker`); its default feeds the fbank [-1, 1] samples.

One known semantic difference is left visible rather than emulated: sherpa's offline greedy search
treats ``<unk>`` as blank (never emitted, predictor not advanced), ours emits it. A model that
argmaxes ``<unk>`` shows up as a mismatch (measured: never, on the default model's test split).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import soundfile as sf
import torch
from lhotse import CutSet

from edgeasr.data.features import KaldiFbank, KaldiFbankConfig
from edgeasr.decoding import greedy_search, greedy_search_streaming
from edgeasr.metrics import WerAccumulator

SAMPLE_RATE = 16000
DEFAULT_TAIL_PADDING_S = 0.5  # > one streaming chunk (35 frames = 0.35 s), so the last words are decoded
# The worker's default time limit: start-up and model loading, plus a real-time factor of 2 over
# the audio it decodes. sherpa-onnx runs the students at RTF ~0.01-0.05 on one thread, so only a
# hung worker (a deadlock, a model that makes onnxruntime spin) gets near it.
TIMEOUT_BASE_S = 120.0
TIMEOUT_PER_AUDIO_S = 2.0


@dataclass
class Utterance:
    id: str
    samples: np.ndarray  # float32 mono 16 kHz in [-1, 1]
    text: str | None = None
    context: list[str] | None = None  # the user's context list (test_rare), hotword candidates

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def utterances_from_cuts(cuts, limit: int | None = None) -> list[Utterance]:
    """lhotse cuts (a CutSet or a manifest path; paths inside are relative to the cwd) -> utterances
    with reference text and, where present, the supervision's ``custom["context"]`` list."""
    if isinstance(cuts, (str, Path)):
        cuts = CutSet.from_file(cuts)
    out = []
    for i, c in enumerate(cuts):
        if limit is not None and i >= limit:
            break
        if c.sampling_rate != SAMPLE_RATE:
            c = c.resample(SAMPLE_RATE)
        sup = c.supervisions[0] if c.supervisions else None
        custom = (sup.custom or {}) if sup is not None else {}
        out.append(Utterance(c.id, np.ascontiguousarray(c.load_audio()[0], dtype=np.float32),
                             sup.text if sup is not None else None,
                             list(custom["context"]) if "context" in custom else None))
    return out


def utterances_from_wavs(paths: Iterable[str | Path]) -> list[Utterance]:
    out = []
    for p in paths:
        x, sr = sf.read(str(p), dtype="float32", always_2d=True)
        if sr != SAMPLE_RATE:
            raise ValueError(f"{p}: {sr} Hz; sherpa bundles here expect {SAMPLE_RATE} Hz")
        out.append(Utterance(Path(p).stem, np.ascontiguousarray(x[:, 0])))
    return out


# ---- sherpa-onnx in a subprocess ---------------------------------------------------------------
@dataclass
class SherpaResult:
    tokens: list[list[str]]
    texts: list[str]
    decode_s: list[float]
    audio_s: list[float]
    load_s: float = 0.0

    @property
    def rtf(self) -> float:
        return sum(self.decode_s) / max(1e-9, sum(self.audio_s))


def hotwords_string(phrases: Sequence[str]) -> str:
    """sherpa-onnx's per-stream hotwords: phrases separated by '/' (words by spaces)."""
    return "/".join(p.strip() for p in phrases if p.strip())


def default_timeout(utts: Sequence[Utterance], repeat: int = 1) -> float:
    """Seconds :func:`sherpa_decode` gives its worker when not told: :data:`TIMEOUT_BASE_S` plus
    :data:`TIMEOUT_PER_AUDIO_S` per second of audio decoded (``repeat`` times)."""
    return TIMEOUT_BASE_S + TIMEOUT_PER_AUDIO_S * max(1, int(repeat)) * sum(u.duration for u in utts)


def sherpa_decode(files: Mapping[str, str], utts: Sequence[Utterance], *, streaming: bool,
                  method: str = "greedy_search", hotwords: Sequence[str | None] | None = None,
                  num_threads: int = 1, max_active_paths: int = 4, hotwords_score: float = 1.5,
                  tail_padding_s: float | None = None, repeat: int = 1, timeout: float | None = None) -> SherpaResult:
    """Decode ``utts`` with sherpa-onnx (``files``: :meth:`SherpaBundle.files`) in a subprocess.

    ``hotwords``: per utterance a '/'-separated string (needs ``method="modified_beam_search"``).
    ``tail_padding_s`` (streaming; default :data:`DEFAULT_TAIL_PADDING_S`): zeros appended before
    ``input_finished`` so the last partial chunk is decoded. Raises ``RuntimeError`` with sherpa's
    stderr when the process fails (a bad model makes sherpa exit). ``timeout``: seconds before the
    worker is killed and ``TimeoutError`` is raised (None: :func:`default_timeout`).
    """
    if hotwords is not None and method != "modified_beam_search":
        raise ValueError("sherpa-onnx applies hotwords only with method='modified_beam_search'")
    if tail_padding_s is None:
        tail_padding_s = DEFAULT_TAIL_PADDING_S if streaming else 0.0
    with tempfile.TemporaryDirectory(prefix="edgeasr-sherpa-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "audio.npz", **{f"a{i}": u.samples.astype(np.float32) for i, u in enumerate(utts)})
        job = {"files": dict(files), "streaming": bool(streaming), "method": method, "num_threads": int(num_threads),
               "max_active_paths": int(max_active_paths), "hotwords_score": float(hotwords_score),
               "tail_padding_s": float(tail_padding_s), "audio": str(tmp / "audio.npz"),
               "hotwords": list(hotwords) if hotwords is not None else None, "repeat": int(repeat),
               "out": str(tmp / "result.json")}
        (tmp / "job.json").write_text(json.dumps(job))
        env = dict(os.environ, OMP_NUM_THREADS=str(num_threads))
        limit = default_timeout(utts, repeat) if timeout is None else float(timeout)
        try:
            p = subprocess.run([sys.executable, "-m", "edgeasr.deploy.sherpa_worker", str(tmp / "job.json")],
                               capture_output=True, text=True, env=env, timeout=limit)
        except subprocess.TimeoutExpired as err:  # run() has killed the worker
            audio_s = sum(u.duration for u in utts) * max(1, int(repeat))
            raise TimeoutError(
                f"sherpa-onnx worker timed out after {limit:g} s ({len(utts)} utterances, {audio_s:.1f} s of "
                f"audio, {method}) on {files.get('encoder')}; raise the timeout (evaluate.sherpa.timeout_s "
                "in the evaluate stage) if the machine is that slow") from err
        if p.returncode != 0 or not (tmp / "result.json").is_file():
            raise RuntimeError(f"sherpa-onnx worker failed (exit {p.returncode}) on {files.get('encoder')}:\n"
                               f"{p.stderr[-3000:]}")
        r = json.loads((tmp / "result.json").read_text())
    return SherpaResult(r["tokens"], r["texts"], r["decode_s"], r["audio_s"], r["load_s"])


# ---- our own decode, the reference -----------------------------------------------------------
def fbank(samples: np.ndarray, feature_cfg: Mapping[str, Any] | None = None):
    """(T, 80) float32 torch tensor: the prepare stage's Kaldi fbank (= sherpa-onnx's) on ``samples``."""
    threads = torch.get_num_threads()
    cfg = KaldiFbankConfig.from_cfg(feature_cfg) if feature_cfg else KaldiFbankConfig()
    try:
        return torch.from_numpy(KaldiFbank(cfg).extract(samples, SAMPLE_RATE))
    finally:
        torch.set_num_threads(threads)  # KaldiFbank.extract pins 1 thread for lhotse workers


def streaming_frames_used(num_frames: int, chunk_shift: int) -> int:
    """Feature frames sherpa's LSTM OnlineRecognizer consumes from ``num_frames``: whole chunks of
    ``T = chunk_shift + 3`` frames advancing by ``chunk_shift``."""
    k = max(0, (num_frames - 3) // chunk_shift)
    return k * chunk_shift + 3 if k else 0


def torch_greedy(model, utts: Sequence[Utterance], *, streaming: bool = False, chunk_frames: int = 4,
                 tail_padding_s: float | None = None, feature_cfg: Mapping[str, Any] | None = None,
                 times: list[float] | None = None) -> list[list[int]]:
    """Token ids per utterance from our PyTorch model (one utterance at a time, like a device).

    ``streaming``: features of the audio plus ``tail_padding_s`` zeros (default as in
    :func:`sherpa_decode`), fed to ``model.encoder.infer`` in sherpa's chunks and decoded by
    :func:`greedy_search_streaming`. ``times``: if given, per-utterance wall seconds are appended
    (features included)."""
    if tail_padding_s is None:
        tail_padding_s = DEFAULT_TAIL_PADDING_S if streaming else 0.0
    model.eval()
    out = []
    with torch.inference_mode():
        for u in utts:
            t0 = time.perf_counter()
            x = u.samples
            if streaming and tail_padding_s > 0:
                x = np.concatenate([x, np.zeros(int(round(tail_padding_s * SAMPLE_RATE)), np.float32)])
            feats = fbank(x, feature_cfg)
            if not streaming:
                enc, lens = model.encode(feats[None], torch.tensor([feats.size(0)]))
                hyp = greedy_search(model, enc, lens)[0]
            else:
                shift = 4 * model.encoder.frame_stack * int(chunk_frames)
                used = streaming_frames_used(feats.size(0), shift)
                state, dstate, hyp = None, None, []
                pos = 0
                while pos < used:
                    n = shift + 3 if pos == 0 else shift
                    chunk = feats[pos:pos + n][None]
                    pos += n
                    enc, lens, state = model.encoder.infer(chunk, torch.tensor([chunk.size(1)]), state)
                    hyps, dstate = greedy_search_streaming(model, enc, lens, dstate)
                    hyp = hyps[0]
            out.append(list(hyp))
            if times is not None:
                times.append(time.perf_counter() - t0)
    return out


# ---- comparisons -----------------------------------------------------------------------------
def read_tokens(tokens_txt: str | Path) -> list[str]:
    syms: dict[int, str] = {}
    for line in Path(tokens_txt).read_text(encoding="utf-8").splitlines():
        if line.strip():
            sym, i = line.rsplit(" ", 1)
            syms[int(i)] = sym
    return [syms[i] for i in range(len(syms))]


def ids_from_symbols(symbols: Sequence[str], table: Sequence[str]) -> list[int]:
    """sherpa-onnx result tokens -> ids (sherpa reports pieces with ``▁`` already turned into a space)."""
    index = {s: i for i, s in enumerate(table)}
    index.update({s.replace("\u2581", " "): i for i, s in enumerate(table)})
    return [index[s] for s in symbols]


def ids_to_text(ids: Sequence[int], table: Sequence[str], blank_id: int = 0) -> str:
    """What a device prints: pieces concatenated, ``▁`` -> space (same as SentencePiece decode)."""
    return " ".join("".join(table[i] for i in ids if i != blank_id).replace("\u2581", " ").split())


@dataclass
class Agreement:
    """sherpa-onnx vs our decode on one set of utterances."""

    n: int
    identical: int
    wer_sherpa: float
    wer_torch: float
    rtf_sherpa: float
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.identical / max(1, self.n)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}identical_rate": round(self.rate, 4), f"{prefix}identical": self.identical,
                f"{prefix}utterances": self.n, f"{prefix}wer_sherpa": round(self.wer_sherpa, 4),
                f"{prefix}wer_torch": round(self.wer_torch, 4), f"{prefix}rtf_sherpa": round(self.rtf_sherpa, 5)}


def wer_percent(refs: Sequence[str | None], hyps: Sequence[str]) -> float:
    """Corpus WER (summed errors / summed reference words) over pairs with a reference."""
    pairs = [(r, h) for r, h in zip(refs, hyps) if r is not None]
    if not pairs:
        return float("nan")
    acc = WerAccumulator()
    acc.update([r for r, _ in pairs], [h for _, h in pairs])
    return acc.wer


def verify_bundle(model, bundle, utts: Sequence[Utterance], *, int8: bool = False, num_threads: int = 1,
                  feature_cfg: Mapping[str, Any] | None = None, timeout: float | None = None) -> Agreement:
    """sherpa-onnx greedy search on ``bundle`` (offline or streaming, as exported) against
    :func:`torch_greedy` on the same samples; identical = same token sequence."""
    files = bundle.files(int8=int8)
    table = read_tokens(files["tokens"])
    chunk = int(bundle.info.get("chunk", {}).get("chunk_frames", 4))
    res = sherpa_decode(files, utts, streaming=bundle.streaming, num_threads=num_threads, timeout=timeout)
    ref = torch_greedy(model, utts, streaming=bundle.streaming, chunk_frames=chunk, feature_cfg=feature_cfg)
    got = [ids_from_symbols(t, table) for t in res.tokens]
    mism = [{"id": u.id, "sherpa": ids_to_text(g, table), "torch": ids_to_text(r, table), "ref": u.text}
            for u, g, r in zip(utts, got, ref) if g != r]
    refs = [u.text for u in utts]
    return Agreement(len(utts), len(utts) - len(mism), wer_percent(refs, [ids_to_text(g, table) for g in got]),
                     wer_percent(refs, [ids_to_text(r, table) for r in ref]), res.rtf, mism)


def hotword_wer(bundle, utts: Sequence[Utterance], *, int8: bool = False, max_active_paths: int = 4,
                hotwords_score: float = 1.5, num_threads: int = 1, timeout: float | None = None) -> dict[str, float]:
    """WER of sherpa-onnx ``modified_beam_search`` without and with each utterance's context list
    as hotwords (utterances without one get none), plus greedy for reference. Also the share of
    utterances whose hypothesis contains the reference's context phrase (entity recall)."""
    files = bundle.files(int8=int8)
    table = read_tokens(files["tokens"])
    refs = [u.text for u in utts]
    common = dict(streaming=bundle.streaming, num_threads=num_threads, timeout=timeout)
    greedy = sherpa_decode(files, utts, **common)
    beam = sherpa_decode(files, utts, method="modified_beam_search", max_active_paths=max_active_paths, **common)
    hw = [hotwords_string(u.context) if u.context else None for u in utts]
    biased = sherpa_decode(files, utts, method="modified_beam_search", max_active_paths=max_active_paths,
                           hotwords=hw, hotwords_score=hotwords_score, **common)

    def texts(r: SherpaResult) -> list[str]:
        return [ids_to_text(ids_from_symbols(t, table), table) for t in r.tokens]

    def recall(hyps: list[str]) -> float:
        hits = n = 0
        for u, h in zip(utts, hyps):
            if u.context and u.text:
                ent = [c for c in u.context if f" {c} " in f" {u.text} "]
                if ent:
                    n += 1
                    hits += any(f" {e} " in f" {h} " for e in ent)
        return hits / n if n else float("nan")

    t_g, t_b, t_h = texts(greedy), texts(beam), texts(biased)
    return {"utterances": len(utts), "with_context": sum(h is not None for h in hw),
            "wer_greedy": round(wer_percent(refs, t_g), 4), "wer_beam": round(wer_percent(refs, t_b), 4),
            "wer_beam_hotwords": round(wer_percent(refs, t_h), 4),
            "entity_recall_beam": round(recall(t_b), 4), "entity_recall_beam_hotwords": round(recall(t_h), 4),
            "max_active_paths": max_active_paths, "hotwords_score": hotwords_score}
