"""Two end-pointers over a streaming decoder's decision points: a speculative one and a final one.

At every decision point (the end of a streaming chunk) a rule sees how long it has been silent
(the shorter of: the best hypothesis's trailing blank frames x frame length, and the audio's trailing
non-speech, :mod:`edgeasr.endpoint.vad`) and how complete the hypothesis's words
look (:class:`~edgeasr.endpoint.eoq.EndOfQuery`); it fires once that silence reaches
``complete_s`` for a request that looks complete (P(end) >= ``threshold``), else ``incomplete_s``.

The speculative rule is the final one made ``lead_s`` more eager: downstream work starts on its
decision. If the decoder emits a token or the audio has speech after it fired (the speaker went
on), a **reset** follows
and the speculative rule re-arms; the final decision ends the stream. :func:`simulate` replays a
recorded :class:`Point` trace under any rules, so thresholds can be swept without decoding again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence


@dataclass(frozen=True)
class EndpointRule:
    complete_s: float     # trailing non-speech needed when the words look complete
    incomplete_s: float   # ... when they do not
    threshold: float      # P(end | last words) from which they look complete (> 1: never)

    def __post_init__(self):
        if not (0 < self.complete_s <= self.incomplete_s) or not self.threshold >= 0.0:
            raise ValueError(f"an end-pointer needs 0 < complete_s <= incomplete_s and a threshold >= 0, got {self}")

    def fires(self, p: Point) -> bool:
        if p.tokens == 0:
            return False
        return p.silence_s >= (self.complete_s if p.p_end >= self.threshold else self.incomplete_s)

    def speculative(self, lead_s: float) -> EndpointRule:
        """This rule ``lead_s`` earlier on both waits (never below one frame's worth: 0.01 s)."""
        return replace(self, complete_s=max(0.01, self.complete_s - lead_s),
                       incomplete_s=max(0.01, self.incomplete_s - lead_s))


@dataclass(frozen=True)
class Point:
    """One decision point: ``time_s`` audio consumed, the best hypothesis's ``tokens`` count and
    ``last_frame`` (encoder frame of its last token, -1 for none), ``frames`` decoded so far,
    ``silence_s`` (see the module docstring), ``p_end`` of its words, ``speech_frames``: feature
    frames the VAD has called speech so far."""

    time_s: float
    frames: int
    tokens: int
    last_frame: int
    silence_s: float
    p_end: float
    speech_frames: int = 0
    audio_silence_s: float = 0.0


@dataclass
class Events:
    """What the two end-pointers did on one stream: indices into the trace. ``speculative``: every
    speculative decision (the last one stood unless ``resets`` says otherwise), ``resets``: the points
    where speech came back after a speculative decision, ``final``: the final decision or ``None``
    (the trace ended first)."""

    speculative: list[int] = field(default_factory=list)
    resets: list[int] = field(default_factory=list)
    final: int | None = None

    @property
    def standing(self) -> int | None:
        """The speculative decision not taken back, if any."""
        if self.speculative and (not self.resets or self.resets[-1] <= self.speculative[-1]):  # a reset comes first
            return self.speculative[-1]
        return None


def simulate(trace: Sequence[Point], final: EndpointRule, speculative: EndpointRule | None) -> Events:
    ev, armed, fired_at = Events(), True, None
    for i, p in enumerate(trace):
        if fired_at is not None and (p.last_frame >= trace[fired_at].frames  # a token, or speech, after the decision
                                     or p.speech_frames > trace[fired_at].speech_frames):
            ev.resets.append(i)
            armed, fired_at = True, None
        if final.fires(p):
            ev.final = i
            if speculative is not None and armed:  # at the same point: the speculative one fired too
                ev.speculative.append(i)
            return ev
        if speculative is not None and armed and speculative.fires(p):
            ev.speculative.append(i)
            armed, fired_at = False, i
    return ev
