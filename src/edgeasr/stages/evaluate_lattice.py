"""The evaluate stage's lattice part (``evaluate.lattice``): N-best word lattices from the integer
runtime's modified beam search (:mod:`edgeasr.lattice`), what the device would send the cloud
instead of audio.

* Oracle WER (the lattice path closest to the reference, errors summed over the split's words)
  for each N in ``nbest`` beside the 1-best: ``lattice/oracle_wer/n{N}/<split>``,
  ``lattice/wer_1best/<split>`` (the beam search's best hypothesis; equals the oracle at N = 1).
* On the first split: bytes on the wire per utterance (``lattice/bytes_per_utt/n{N}``;
  ``lattice/bytes_per_utt`` at the largest N), states, arcs and paths per utterance; the same
  audio as 16-bit PCM (``lattice/pcm_bytes_per_utt``, ``lattice/pcm_ratio`` = PCM bytes over
  lattice bytes) and, when libsndfile has Opus, as Ogg/Opus at its lowest bitrate: the whole file
  (``lattice/opus_bytes_per_utt``, ``lattice/opus_ratio``) and without the ~0.9 KB of headers a
  stream sends once per session (``lattice/opus_payload_bytes_per_utt``, ``lattice/opus_payload_ratio``).
* With a PyTorch model (``compare_pytorch``): its lattices on the same audio, first split, largest
  N; shares of utterances with the same best path (``lattice/pytorch/same_1best``), the same set of
  paths (``.../same_paths``), and the same lattice but for near-ties within ``compare_tol`` nats
  (``.../same_up_to_ties``, :func:`edgeasr.lattice.same_up_to_ties`). They differ where the
  runtime's integers and the fake-quantized floats round differently, which decides near-ties (as
  in the export stage's identical transcripts).
* Files under ``results/lattices/``: ``<split>.jsonl.gz`` (per utterance the largest-N lattice,
  :func:`edgeasr.lattice.read_lattices` reads it: the input of a rescoring step) and ``draw/<id>.dot`` (+ ``.png`` when
  graphviz's ``dot`` is installed) for the first ``draw_utts`` utterances of the first split.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
from lhotse import CutSet
from omegaconf import DictConfig

from edgeasr.compression import restore_fake_quant
from edgeasr.lattice import WordLattice, decode_lattices, nbest_lattices, oracle_path, same_up_to_ties, serialize, write_lattices
from edgeasr.metrics import WerAccumulator
from edgeasr.models.io import load_model
from edgeasr.quantspec import read_spec

log = logging.getLogger(__name__)


def pytorch_student(path: Path):
    """The fake-quantized PyTorch student the exported file was made from (``data/<export.source>/model.pt``),
    in float64: there it computes the runtime's integers (float32 rounding alone flips a few levels)."""
    model, meta = load_model(path)
    return restore_fake_quant(model, read_spec(meta, str(path), need="the lattice comparison")).double().eval()


def pick_cuts(cuts, n: int | None) -> list:
    """``n`` cuts evenly spaced over the split sorted by id (deterministic); ``None``: all."""
    by_id = sorted(cuts, key=lambda c: c.id)
    if n is None or n >= len(by_id):
        return by_id
    return [by_id[(i * len(by_id)) // max(1, int(n))] for i in range(max(1, int(n)))]


@lru_cache(maxsize=8)
def _opus_headers(sampling_rate: int, level: float) -> int:
    """Bytes of an Ogg/Opus file of no audio: its headers."""
    return len(_opus(np.zeros(0, dtype=np.float32), sampling_rate, level))


def _opus(samples: np.ndarray, sampling_rate: int, level: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sampling_rate, format="OGG", subtype="OPUS", compression_level=level)
    return buf.getvalue()


def audio_bytes(cut, opus_level: float | None) -> Counter:
    """The cut's audio as 16-bit mono PCM (``pcm``) and, with ``opus_level`` and a libsndfile that
    writes Opus, as an Ogg/Opus file at that ``compression_level`` (1.0: libsndfile's lowest bitrate):
    ``opus`` the whole file, ``opus_payload`` less the bytes of an empty file (the Ogg/Opus headers a
    stream sends once per session, not per utterance)."""
    out = Counter(pcm=cut.num_samples * 2)
    if opus_level is not None and "OPUS" in sf.available_subtypes("OGG"):
        size = len(_opus(cut.load_audio()[0], cut.sampling_rate, opus_level))
        out.update(opus=size, opus_payload=size - _opus_headers(cut.sampling_rate, opus_level))
    return out


def agreement(a: WordLattice, b: WordLattice, tol: float) -> Counter:
    """Two lattices of one utterance: ``same_1best`` (best path's words), ``same_paths`` (the set of
    word strings), ``same_up_to_ties`` (:func:`edgeasr.lattice.same_up_to_ties`); 1 or 0 each."""
    pa, pb = a.paths(), b.paths()
    return Counter(same_1best=int(pa[0].words == pb[0].words), same_paths=int({p.words for p in pa} == {p.words for p in pb}),
                   same_up_to_ties=int(same_up_to_ties(a, b, tol)))


def draw(lat: WordLattice, cut_id: str, ref: str, out: Path) -> None:
    """``out/<id>.dot``, and ``<id>.png`` when graphviz's ``dot`` is on PATH."""
    out.mkdir(parents=True, exist_ok=True)
    dot = out / f"{cut_id}.dot"
    dot.write_text(lat.draw(f"{cut_id}: {ref}"))
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tpng", str(dot), "-o", str(dot.with_suffix(".png"))], check=True, timeout=60)


@dataclass
class SplitTally:
    """One split's lattices summed up: oracle accumulators and sizes per N, the audio's bytes, the
    agreement with the PyTorch student, and the serialized largest-N lattice per utterance."""

    oracle: dict[int, WerAccumulator]
    sizes: dict[int, Counter]
    one_best: WerAccumulator  # the beam search's best hypotheses as a 1-best decode transcribes them
    audio: Counter = field(default_factory=Counter)
    agree: Counter = field(default_factory=Counter)
    sent: list[tuple[str, WordLattice]] = field(default_factory=list)


def decode_split(rt, pytorch_model, dm, cuts, lc: DictConfig, ns: list[int], draw_dir: Path | None) -> SplitTally:
    """Lattices of ``cuts`` for every N in ``ns`` from ``rt`` (and ``pytorch_model`` if given);
    audio bytes and drawings (``draw_dir``) only where asked: the first split."""
    top, by_id = max(ns), {c.id: c for c in cuts}
    tally = SplitTally({n: WerAccumulator() for n in ns}, {n: Counter() for n in ns}, WerAccumulator())
    opus_level = float(lc.opus_compression_level) if lc.opus and draw_dir is not None else None
    for batch in dm.cuts_dataloader(CutSet.from_cuts(cuts)):
        args = (batch["features"], batch["feature_lens"], rt.tokens, ns, int(lc.beam), int(lc.weight_step_log2),
                int(lc.max_sym_per_frame))
        decoded = decode_lattices(rt, *args)
        lats = [d.lattices for d in decoded]
        tally.one_best.update(batch["texts"], [dm.tokenizer.decode(d.best_tokens) for d in decoded],
                              ids=batch["cut_ids"], classes=batch.get("word_classes"))
        other = nbest_lattices(pytorch_model, *args) if pytorch_model is not None else None
        for k, (cut_id, ref) in enumerate(zip(batch["cut_ids"], batch["texts"])):
            for n, lat in lats[k].items():
                paths = lat.paths()
                tally.oracle[n].update([ref], [" ".join(oracle_path(paths, ref.split())[0].words)], ids=[cut_id])
                tally.sizes[n].update(bytes=len(serialize(lat)), states=lat.num_states, arcs=lat.num_arcs, paths=len(paths))
            tally.sent.append((cut_id, lats[k][top]))
            if other is not None:
                tally.agree.update(agreement(lats[k][top], other[k][top], float(lc.compare_tol)))
            if draw_dir is not None:
                tally.audio.update(audio_bytes(by_id[cut_id], opus_level))
                if len(tally.sent) <= int(lc.draw_utts):
                    draw(lats[k][top], cut_id, ref, draw_dir)
    return tally


def _rate(num: float, den: float) -> float:
    return round(num / den, 4) if den else 0.0


def size_metrics(t: SplitTally, wanted: list[int], compared: bool) -> dict[str, float]:
    """Per utterance bytes / states / arcs / paths for each N, the audio's bytes and the ratios
    (audio bytes over lattice bytes at the largest N), agreement shares with the PyTorch student."""
    utts, top = len(t.sent), max(wanted)
    metrics: dict[str, float] = {"lattice/utts": utts}
    for n in wanted:
        metrics.update({f"lattice/{k}_per_utt/n{n}": _rate(t.sizes[n][k], utts) for k in ("bytes", "states", "arcs", "paths")})
    metrics["lattice/bytes_per_utt"] = metrics[f"lattice/bytes_per_utt/n{top}"]
    for kind in ("pcm", "opus", "opus_payload"):
        if kind in t.audio:
            metrics[f"lattice/{kind}_bytes_per_utt"] = _rate(t.audio[kind], utts)
            metrics[f"lattice/{kind}_ratio"] = _rate(t.audio[kind], t.sizes[top]["bytes"])
    if compared:
        metrics.update({f"lattice/pytorch/{k}": _rate(t.agree[k], utts) for k in ("same_1best", "same_paths", "same_up_to_ties")})
    return metrics


def lattice_metrics(rt, dm, lc: DictConfig, results: Path, pytorch_model=None
                    ) -> tuple[dict[str, float], dict[str, WerAccumulator]]:
    """Decode ``lc.splits`` with ``rt`` (the integer runtime, ``rt.tokens`` its BPE pieces); the
    metrics and files of the module docstring, and per split the 1-best transcripts' accumulator
    (the same search as ``evaluate.decoding`` beam ``lc.beam``: the stage need not decode twice).
    ``pytorch_model``: the same student in PyTorch to compare lattices with, or ``None``."""
    wanted = sorted({int(n) for n in lc.nbest})
    ns = sorted(set(wanted) | {1})  # N = 1 always: the 1-best
    out = results / "lattices"
    out.mkdir(parents=True, exist_ok=True)
    if lc.opus and "OPUS" not in sf.available_subtypes("OGG"):
        log.info("lattice: this libsndfile (%s) writes no Ogg/Opus: no codec figure", sf.__libsndfile_version__)
    metrics: dict[str, float] = {}
    one_best: dict[str, WerAccumulator] = {}
    t0 = time.perf_counter()
    splits = [s for s in lc.splits if (dm.manifest_dir / f"cuts_{s}.jsonl.gz").is_file()]
    for i, split in enumerate(splits):
        first = i == 0
        t = decode_split(rt, pytorch_model if first else None, dm, pick_cuts(dm.cuts(split), lc.get("max_utts")), lc, ns,
                         out / "draw" if first else None)
        write_lattices(out / f"{split}.jsonl.gz", t.sent)
        if lc.get("max_utts") is None:
            one_best[split] = t.one_best
        metrics[f"lattice/wer_1best/{split}"] = round(t.oracle[1].wer, 4)
        metrics.update({f"lattice/oracle_wer/n{n}/{split}": round(t.oracle[n].wer, 4) for n in wanted})
        if first:
            metrics.update(size_metrics(t, wanted, pytorch_model is not None))
    metrics["lattice/decode_s"] = round(time.perf_counter() - t0, 3)
    return metrics, one_best
