"""End-pointing (issue 16, part 3): the end-of-query table, the two rules and their replay, the
VAD, the configuration file, streaming decision points, and the pause splits' recorded speech end."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from edgeasr.endpoint import (EndOfQuery, EndOfQueryError, EndpointConfig, EndpointConfigError, EndpointRule, Point,
                              event_lines, simulate, stream_decisions)
from edgeasr.compression import activation_spec, float_view
from edgeasr.endpoint.vad import EnergyVad
from edgeasr.quantspec import CompressionSpec
from edgeasr.runtime import IntTransducer

from conftest import TINY_STUDENT_CFG, quantized_tiny_student

TEXTS = ["set a timer for five minutes", "stop", "stop the alarm", "set a timer for ten minutes", "play music"]


def test_end_of_query_counts_prefixes_from_the_start_of_the_request():
    eoq = EndOfQuery.fit(TEXTS, order=2)
    # "stop" alone ended 1 of the 2 requests that began with it; "timer for" never ends one
    assert eoq.counts["<s> stop"] == (1, 2) and eoq.counts["timer for"] == (0, 2)
    assert eoq.prob("set a timer for".split()) < 0.1 < 0.8 < eoq.prob("set a timer for five minutes".split())
    assert 0.3 < eoq.prob(["stop"]) < 0.7
    assert eoq.prob([]) == 0.0
    # an unseen last word backs off to shorter contexts, never fails
    assert 0.0 < eoq.prob("set a timer for fiv".split()) < 1.0


def test_end_of_query_file_round_trips_and_bad_files_name_themselves(tmp_path):
    eoq = EndOfQuery.fit(TEXTS)
    eoq.save(tmp_path / "eoq.json")
    assert EndOfQuery.load(tmp_path / "eoq.json") == eoq
    cases = {"missing.json": None, "text.json": "not json", "list.json": "[1, 2]",
             "version.json": json.dumps({"format": "edgeasr-end-of-query", "version": 9, "order": 2, "counts": {}}),
             "counts.json": json.dumps({"format": "edgeasr-end-of-query", "version": 1, "order": 2,
                                        "counts": {"stop": [3, 2]}}),
             "order.json": json.dumps({"format": "edgeasr-end-of-query", "version": 1, "order": 1,
                                       "counts": {"a b c": [0, 1]}})}
    for name, body in cases.items():
        if body is not None:
            (tmp_path / name).write_text(body)
        with pytest.raises(EndOfQueryError, match=name):
            EndOfQuery.load(tmp_path / name)


def _trace(spec: list[tuple[int, float, float]], frame_s: float = 0.08) -> list[Point]:
    """Points every frame from (tokens, p_end, audio speech?) per frame; a token count change is an emission."""
    pts, last, speech, quiet = [], -1, 0, 0
    for f, (tokens, p_end, talking) in enumerate(spec):
        if f and tokens != spec[f - 1][0]:
            last = f
        speech, quiet = (speech + 1, 0) if talking else (speech, quiet + 1)
        silence = min((f - last) * frame_s, quiet * frame_s)
        pts.append(Point(round((f + 1) * frame_s, 3), f + 1, tokens, last, round(silence, 3), p_end if tokens else 0.0,
                         speech, quiet * frame_s))
    return pts


def test_rules_fire_on_silence_sooner_when_the_words_look_complete():
    final, spec = EndpointRule(0.24, 0.8, 0.5), EndpointRule(0.08, 0.56, 0.5)
    # "set a timer for" ... 0.56 s pause ... "five minutes" ... silence
    frames = ([(1, 0.0, True), (2, 0.0, True), (3, 0.0, True)] + [(3, 0.0, False)] * 7
              + [(4, 0.2, True), (5, 0.95, True)] + [(5, 0.95, False)] * 8)
    pts = _trace(frames)
    ev = simulate(pts, final, spec)
    # the speculative rule took the pause for an end (0.56 s of silence), then speech came back: reset
    assert pts[ev.speculative[0]].time_s < pts[10].time_s <= pts[ev.resets[0]].time_s
    # the final rule waited through the pause (it needs 0.8 s when the words look incomplete) ...
    assert pts[ev.final].time_s > pts[11].time_s
    # ... and ended 0.24 s after "minutes", the standing speculative decision 0.16 s before it
    assert pts[ev.final].silence_s == pytest.approx(0.24)
    assert pts[ev.final].time_s - pts[ev.standing].time_s == pytest.approx(0.16)
    lines = event_lines(_Trace(pts), ev, lambda ids: " ".join(f"w{i}" for i in ids))
    kinds = [k for _, k, _ in lines]
    assert kinds.count("speculative") == 2 and kinds.count("reset") == 1 and kinds[-1] == "final"
    assert [t for t, _, _ in lines] == sorted(t for t, _, _ in lines)


class _Trace:
    """A trace of points whose best hypothesis has ``tokens`` tokens 0..n-1 (for event_lines)."""

    def __init__(self, pts):
        self.points = pts
        self.beams = [[_Hyp(list(range(p.tokens)))] for p in pts]


class _Hyp:
    def __init__(self, tokens):
        self.tokens = tokens


def test_a_reset_at_the_point_where_the_speculative_rule_fires_again_keeps_it_standing():
    ev = simulate(_trace([(1, 0.9, True), (1, 0.9, False), (1, 0.9, True), (2, 0.9, False)] + [(2, 0.9, False)] * 6),
                  EndpointRule(0.4, 0.8, 0.5), EndpointRule(0.08, 0.08, 0.5))
    assert ev.resets and ev.standing is not None and ev.final is not None


def test_rule_and_config_validation(tmp_path):
    with pytest.raises(ValueError, match="complete_s"):
        EndpointRule(0.5, 0.2, 0.5)
    cfg = EndpointConfig(EndpointRule(0.08, 0.96, 0.55), EndpointRule(0.08, 0.8, 0.35), chunk_ms=40.0)
    cfg.save(tmp_path / "rule.json", tune_split="dev_pause")
    assert EndpointConfig.load(tmp_path / "rule.json") == cfg
    bad = {"final": {"complete_s": 0.1, "incomplete_s": 0.5}, "speculative": cfg.as_dict()["speculative"]}
    for name, doc in {"a.json": bad, "b.json": {**cfg.as_dict(), "beam": 2.5},
                      "c.json": {**cfg.as_dict(), "chunk_ms": -1}, "d.json": [1]}.items():
        (tmp_path / name).write_text(json.dumps(doc))
        with pytest.raises(EndpointConfigError, match=name):
            EndpointConfig.load(tmp_path / name)


def test_energy_vad_finds_speech_above_the_noise_floor():
    vad = EnergyVad(margin_db=15.0)
    quiet, loud = torch.full((30, 80), -10.0), torch.full((20, 80), 0.0)  # 10 nats = 43 dB apart
    vad.push(quiet)
    vad.push(loud)
    assert (vad.speech_frames, vad.trailing) == (20, 0)
    vad.push(quiet[:7])
    assert (vad.speech_frames, vad.trailing, vad.frames) == (20, 7, 57)


@pytest.fixture(scope="module")
def runtime():
    """The tiny int8 student in the integer runtime (what the evaluate stage streams)."""
    model, _ = quantized_tiny_student()
    spec = activation_spec(model)
    with float_view(model) as plain:
        return IntTransducer.from_model(plain, CompressionSpec(8, 0.5, "layer", spec), TINY_STUDENT_CFG)


@pytest.mark.parametrize("chunk", [4, 8, 35])
def test_stream_decisions_encoding_once_equals_streaming_chunk_by_chunk(runtime, chunk):
    """The evaluate stage's shortcut (one encoder call, frames handed out as they would complete)
    gives the very trace of the device's chunk-by-chunk streaming."""
    model, eoq = runtime, EndOfQuery.fit(TEXTS)
    gen = torch.Generator().manual_seed(1)
    quiet = torch.full((90, 80), -2.0)  # the microphone's floor before and after the speech-like part
    feats = torch.cat([quiet[:30], torch.randn(120, 80, generator=gen) * 3 + 10, quiet])
    words = lambda ids: [f"w{i}" for i in ids]  # noqa: E731
    a = stream_decisions(model, feats, chunk, 4, eoq, words)
    b = stream_decisions(model, feats, chunk, 4, eoq, words, encode_once=True)
    assert a.points == b.points and len(a.points) == -(-240 // chunk)
    assert [[(h.tokens, h.log_prob) for h in x] for x in a.beams] == [[(h.tokens, h.log_prob) for h in x] for x in b.beams]
    assert a.frame_s == pytest.approx(0.08)
    assert [p.time_s for p in a.points] == sorted(p.time_s for p in a.points)
    # the VAD heard the loud part and then the quiet tail
    assert a.points[-1].audio_silence_s == pytest.approx(0.9, abs=0.01 * chunk)


def test_pause_split_records_where_the_speech_ends():
    from edgeasr.data.synthetic.corpus import iter_split_specs
    from edgeasr.data.synthetic.render import render_marked

    cfg = {"pauses": {"trail_s": [0.5, 2.0], "hesitation_prob": 0.5, "hesitation_s": [0.3, 0.9]},
           "voices": {"accents": ["en-us"]}, "inventory": {"contacts": 20, "appliances": 8, "songs": 10, "artists": 8,
                                                           "cities": 10, "shopping_items": 10}}
    specs = list(itertools.islice(iter_split_specs(cfg, 7, "test_pause"), 12))
    assert all(0.5 <= s.trail_s <= 2.0 for s in specs)
    hesitating = [s for s in specs if s.hesitation is not None]
    assert 2 <= len(hesitating) <= 10
    for spec in specs[:6] + hesitating[:2]:
        audio, marks = render_marked(spec)
        x = audio.astype(np.float64) / 32768
        end = int(marks["speech_end"] * 16000)
        db = lambda seg: 10 * np.log10(np.mean(seg ** 2) + 1e-12)  # noqa: E731
        assert db(x[end - 800:end]) > db(x[end + 160:]) + 20  # speech just before, floor after
        assert len(x) / 16000 == pytest.approx(marks["speech_end"] + spec.trail_s, abs=0.01)
        if spec.hesitation is not None:
            start, stop = (int(t * 16000) for t in marks["hesitation"])
            assert stop - start == pytest.approx(spec.hesitation[1] * 16000, abs=2)
            assert db(x[start + 80:stop - 80]) < db(x[end - 800:end]) - 30
