"""Decode audio with sherpa-onnx in its own process: ``python -m edgeasr.deploy.sherpa_worker job.json``.

sherpa-onnx reports a bad model or option by exiting the process, so the library never imports it
in the caller's process (:func:`edgeasr.deploy.sherpa.sherpa_decode` runs this module). Only numpy,
soundfile and sherpa_onnx are imported here, so the measured time is sherpa's.

job.json::

    {"files": {"encoder", "decoder", "joiner", "tokens", "bpe_vocab"},  # SherpaBundle.files()
     "streaming": false, "method": "greedy_search" | "modified_beam_search",
     "num_threads": 1, "max_active_paths": 4, "hotwords_score": 1.5,
     "tail_padding_s": 0.0,          # zeros appended to every utterance before input_finished
     "audio": "batch.npz",           # arrays a0, a1, ... (float32 in [-1, 1], 16 kHz), or
     "wavs": ["a.wav", ...],         # audio files (soundfile)
     "hotwords": ["w1 w2/w3", ...],  # per utterance, '/'-separated phrases (optional)
     "repeat": 1,                    # decode everything this many times (timing)
     "out": "result.json"}

result.json: ``{"tokens": [[str, ...], ...], "texts": [...], "decode_s": [...], "audio_s": [...],
"load_s": float}`` with ``decode_s`` the best of ``repeat`` wall times per utterance.

Features: the student was trained on Kaldi fbank of int16-scaled samples. sherpa-onnx 2.0.1's
default (``normalize_samples=True``) does NOT scale, so the streaming recognizer is built with
``normalize_samples=False`` and the offline one (whose Python factory lacks the option) gets the
samples multiplied by 32768. Measured: features then match ours to < 3e-3.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import sherpa_onnx
import soundfile as sf

SAMPLE_RATE = 16000


def _audio(job):
    if job.get("audio"):
        z = np.load(job["audio"])
        return [z[f"a{i}"].astype(np.float32) for i in range(len(z.files))]
    out = []
    for p in job["wavs"]:
        x, sr = sf.read(p, dtype="float32", always_2d=True)
        if sr != SAMPLE_RATE:
            raise SystemExit(f"{p}: {sr} Hz, expected {SAMPLE_RATE}")
        out.append(x[:, 0].copy())
    return out


def _recognizer(job):
    f = job["files"]
    kw = dict(encoder=f["encoder"], decoder=f["decoder"], joiner=f["joiner"], tokens=f["tokens"],
              num_threads=int(job.get("num_threads", 1)), sample_rate=SAMPLE_RATE, feature_dim=80,
              decoding_method=job.get("method", "greedy_search"),
              max_active_paths=int(job.get("max_active_paths", 4)))
    if kw["decoding_method"] == "modified_beam_search":
        # hotwords need modified_beam_search + modeling_unit=bpe + bpe_vocab (a missing vocab segfaults)
        kw.update(modeling_unit="bpe", bpe_vocab=f["bpe_vocab"], hotwords_score=float(job.get("hotwords_score", 1.5)))
    if job.get("streaming"):
        # normalize_samples=False: sherpa scales [-1, 1] samples by 32768 before the fbank, as Kaldi
        # and our prepare stage do. Its default (True) computes the fbank on [-1, 1] samples: every
        # bin 20.79 lower (log 32768^2), and different wherever the energy floor clamps.
        return sherpa_onnx.OnlineRecognizer.from_transducer(**kw, enable_endpoint_detection=False,
                                                            normalize_samples=False)
    return sherpa_onnx.OfflineRecognizer.from_transducer(**kw)


# OfflineRecognizer.from_transducer has no normalize_samples option (it always uses True, i.e. no
# scaling): the offline path hands sherpa the samples already in the int16 range instead.
OFFLINE_SAMPLE_SCALE = 32768.0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0], encoding="utf-8") as fh:
        job = json.load(fh)
    audio = _audio(job)
    hotwords = job.get("hotwords") or [None] * len(audio)
    t0 = time.perf_counter()
    rec = _recognizer(job)
    load_s = time.perf_counter() - t0
    tail = np.zeros(int(round(float(job.get("tail_padding_s", 0.0)) * SAMPLE_RATE)), dtype=np.float32)
    streaming = bool(job.get("streaming"))
    if not streaming:
        audio = [x * np.float32(OFFLINE_SAMPLE_SCALE) for x in audio]
    repeat = max(1, int(job.get("repeat", 1)))

    tokens, texts, best = [], [], []
    for x, hw in zip(audio, hotwords):
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            s = rec.create_stream(hotwords=hw) if hw else rec.create_stream()
            s.accept_waveform(SAMPLE_RATE, x)
            if streaming:
                if tail.size:
                    s.accept_waveform(SAMPLE_RATE, tail)
                s.input_finished()
                while rec.is_ready(s):
                    rec.decode_stream(s)
                r = rec.get_result_all(s)
            else:
                rec.decode_stream(s)
                r = s.result
            times.append(time.perf_counter() - t)
        tokens.append(list(r.tokens))
        texts.append(r.text)
        best.append(min(times))
    out = {"tokens": tokens, "texts": texts, "decode_s": best, "audio_s": [len(x) / SAMPLE_RATE for x in audio],
           "load_s": load_s}
    with open(job["out"], "w", encoding="utf-8") as fh:
        json.dump(out, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
