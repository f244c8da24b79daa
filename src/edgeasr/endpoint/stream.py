"""Stream one utterance through the student as a device does: feature chunks -> streaming encoder
-> modified beam search carried across chunks, with a decision :class:`~edgeasr.endpoint.rules.Point`
after every chunk (what the end-pointers see) and the beam at that point (what a lattice sent then
would hold: the search is causal, so it equals the search of the audio so far)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from edgeasr.decoding import Hypothesis, modified_beam_search_streaming

from .eoq import EndOfQuery
from .rules import Events, Point
from .vad import EnergyVad


class EncoderStream:
    """Feature chunks in, encoder frames out, state kept: the integer runtime's encoder
    (``quantize_input`` + ``infer(frames, state)``) or a PyTorch streaming encoder
    (``infer(x, x_lens, state)``). Any chunking gives the whole utterance's output."""

    def __init__(self, model):
        enc = model.encoder
        self.integer = callable(getattr(enc, "quantize_input", None))
        if not self.integer and not callable(getattr(enc, "infer", None)):
            raise ValueError(f"{type(enc).__name__} is full-context (offline): it has no streaming mode")
        self.enc = enc
        self.state = enc.init_state() if self.integer else None
        #: input frames per encoder frame (4x convolutional subsampling x frame stacking)
        self.factor = int(getattr(enc, "subsampling_factor", 0) or 4 * int(enc.k))
        self.min_input = int(enc.min_input_frames)

    def available(self, fed: int) -> int:
        """Encoder frames complete once ``fed`` input frames have arrived (``4 s m + 3`` -> ``m``)."""
        return 0 if fed < self.min_input else (fed - (self.min_input - self.factor)) // self.factor

    @torch.inference_mode()
    def push(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (T, F) float -> the encoder frames it completes, (1, T', J)."""
        if self.integer:
            out, self.state = self.enc.infer(self.enc.quantize_input(feats), self.state)
            return out.unsqueeze(0)
        out, lens, self.state = self.enc.infer(feats.unsqueeze(0).float(), torch.tensor([feats.size(0)]), self.state)
        return out[:, : int(lens[0])]


@dataclass
class StreamTrace:
    """One stream: a decision point per chunk and the beam (best first) at each."""

    points: list[Point]
    beams: list[list[Hypothesis]]
    frame_s: float


def expected_p_end(beam: Sequence[Hypothesis], eoq: EndOfQuery, to_words: Callable[[Sequence[int]], list[str]],
                   frame_time: Callable[[int], float], speech_until: float, temperature: float, cache: dict) -> float:
    """P(end) of the beam's hypotheses averaged with their posteriors (``exp(log_prob / temperature)``,
    normalised), each on its words up to ``speech_until``: tokens the decoder emitted later, deep in
    a silence, are what its predictor guesses comes next ("turn off the ... lights"), not what was said."""
    top = max(h.log_prob for h in beam)
    weights = [math.exp((h.log_prob - top) / temperature) for h in beam]
    total = 0.0
    for w, h in zip(weights, beam):
        said = tuple(t for t, f in zip(h.tokens, h.timestamps) if frame_time(f) <= speech_until)
        if said not in cache:
            cache[said] = eoq.prob(to_words(said)) if said else 0.0
        total += w * cache[said]
    return total / sum(weights)


@torch.inference_mode()
def stream_decisions(model, feats: torch.Tensor, chunk_frames: int, beam: int, eoq: EndOfQuery,
                     to_words: Callable[[Sequence[int]], list[str]], frame_shift_s: float = 0.01,
                     window_s: float = 0.025, stop_silence_s: float | None = None, vad_margin_db: float = 15.0,
                     support_s: float = 0.16, temperature: float = 2.0, encode_once: bool = False,
                     max_sym_per_frame: int = 1) -> StreamTrace:
    """feats (T, F) -> :class:`StreamTrace`. A point's ``time_s`` is when its chunk's last feature
    frame is complete (its window's end: ``snip_edges=False`` centres frame i at (i + 0.5) x shift).
    A point's silence is the shorter of the decoder's (trailing blank frames of the best hypothesis)
    and the audio's (:class:`~edgeasr.endpoint.vad.EnergyVad`, ``vad_margin_db``); its ``p_end``
    is :func:`expected_p_end` with the tokens emitted up to ``support_s`` after the audio's last
    speech. Stops early once the silence reaches ``stop_silence_s`` (every rule of interest has fired
    by then). ``encode_once``: run the encoder on the whole input once and hand its frames out as
    they would complete (:meth:`EncoderStream.available`): the same frames at the same times by the
    streaming contract (tested), without the per-chunk call overhead of the integer runtime."""
    enc, vad, state, cache = EncoderStream(model), EnergyVad(vad_margin_db), None, {}
    if encode_once:
        whole, whole_lens = model.encode(feats.unsqueeze(0).float(), torch.tensor([feats.size(0)]))
        whole = whole[:, : int(whole_lens[0])]
    frame_s = enc.factor * frame_shift_s
    at = lambda fed: (fed - 0.5) * frame_shift_s + window_s / 2  # noqa: E731  time input frame fed-1 is complete
    frame_time = lambda j: at((j + 1) * enc.factor + enc.min_input - enc.factor)  # noqa: E731
    points, beams = [], []
    for start in range(0, feats.size(0), chunk_frames):
        end = min(start + chunk_frames, feats.size(0))
        if encode_once:
            out = whole[:, enc.available(start): enc.available(end)]
        else:
            out = enc.push(feats[start:end])
        vad.push(feats[start:end])
        nbest, state = modified_beam_search_streaming(model, out, torch.tensor([out.size(1)]), state, beam,
                                                      max_sym_per_frame)
        best, now = nbest[0][0], round(at(end), 6)
        frames, last = state.frames[0], (best.timestamps[-1] if best.tokens else -1)
        audio_silence = vad.trailing * frame_shift_s
        silence = min((frames - 1 - last) * frame_s, audio_silence)
        p_end = (expected_p_end(nbest[0], eoq, to_words, frame_time, now - audio_silence + support_s, temperature, cache)
                 if best.tokens else 0.0)
        points.append(Point(now, frames, len(best.tokens), last, round(silence, 6), p_end, vad.speech_frames,
                            round(audio_silence, 6)))
        beams.append(nbest[0])
        if stop_silence_s is not None and best.tokens and silence >= stop_silence_s:
            break
    return StreamTrace(points, beams, frame_s)


def event_lines(trace: StreamTrace, events: Events, to_text: Callable[[Sequence[int]], str]) -> list[tuple[float, str, str]]:
    """``(time_s, kind, text)`` in stream order: ``partial`` whenever the best hypothesis's text
    changes, ``speculative`` / ``reset`` / ``final`` as the end-pointers decide, and ``end`` when the
    input ran out before the final one did. Nothing after ``final``: the stream is closed."""
    kinds: dict[int, list[str]] = {}
    for kind, idxs in (("reset", events.resets), ("speculative", events.speculative)):
        for i in idxs:
            kinds.setdefault(i, []).append(kind)
    last = events.final if events.final is not None else len(trace.points) - 1
    lines, shown = [], ""
    for i in range(last + 1):
        t, text = trace.points[i].time_s, to_text(trace.beams[i][0].tokens)
        if "reset" in kinds.get(i, ()):
            lines.append((t, "reset", text))
        if text != shown:
            lines.append((t, "partial", text))
            shown = text
        if "speculative" in kinds.get(i, ()):
            lines.append((t, "speculative", text))
    if trace.points:
        lines.append((trace.points[last].time_s, "final" if events.final is not None else "end",
                      to_text(trace.beams[last][0].tokens)))
    return lines
