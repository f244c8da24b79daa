"""Reliability drill (issue 15): 1,000 mutated manifests -> 0 crashes, 0 code executed.

A real lhotse cuts manifest (three utterances of real wav files: audio only, audio + lilcom
features, features only) is mutated 1,000 ways with a seeded RNG: audio source types (command,
url, shar, unknown) and source strings with shell metacharacters, ``.sph`` names, URLs and
devices; feature storages that pipe, fetch or unpickle; negative / huge / NaN numbers, wrong
types, missing keys, odd transcripts; lhotse transforms (a reverb whose impulse response is a
command, absurd speed factors), mixed cuts and custom fields holding recordings; raw damage
(truncated gzip, flipped bytes, non-UTF-8, broken JSON); and YAML manifests (``!!binary``).

Each one goes to ``edgeasr score`` (``cli.main``) and to the prepare stage's manifests source
(``sources.prepare_manifests`` + ``clean_split``). Expected: the command exits 0, 1 (some
utterances unusable) or 2 (one-line error); the stage source returns cleaned cuts or raises a
``ValueError`` (``UnsafeManifestError`` and friends). Anything else is a crash (an unexpected
exception, a case over its time limit, a process grown by gigabytes); and every command payload
touches one MARKER file, which must never appear.
"""

from __future__ import annotations

import base64
import copy
import gzip
import io
import json
import logging
import os
import pickle
import time
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import TINY_STUDENT_CFG
from drill_limits import CaseTimeout, arm, drill_limits, peak_rss_mb
from edgeasr import cli
from edgeasr.data import sources
from edgeasr.data.cleaning import FilterLog, clean_split

CASES = 1000
SEED = 151
CASE_LIMIT_S = 20.0  # CPU seconds per case, generous; a hang is minutes
TEXTS = ["turn on the kitchen lights", "play some music please", "set a timer for ten minutes"]


class _Touch:
    """A pickle that runs a shell command when unpickled."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


def hostile(marker, wav) -> list:
    """Source strings: each would create ``marker`` if any shell or decoder ran it."""
    t = f"touch {marker}"
    return [f"{t}; cat {wav}", f";{t};", f"$({t})", f"`{t}`", f"{wav}; {t}", f"|{t}", f"pipe:{t}",
            f"{wav}.sph; {t}", f"x;{t};.sph", f"$({t}).sph", f"a b.sph", f"{wav}|{t}|.opus", "http://127.0.0.1:9/a.wav",
            "s3://bucket/a.wav", "file:///etc/hostname", "/dev/zero", "/dev/urandom", "/", "", "-",
            "../../../etc/passwd",
            f"{wav}", str(wav).replace(".wav", ".sph"), "\x00", "A" * 5000, "ü.wav", f"{wav}\n{t}"]


EDGE = [None, True, -1, 0, 1, 0.5, -0.5, 1e-300, 1e308, float("nan"), float("inf"), -float("inf"), 2**63, 10**30,
        "", "12", "x", [], [0], {}, {"type": "file"}, "A" * 3000]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_base(tmp_path_factory.mktemp("mdrill"))


def build_base(root) -> dict:
    """Model, tokenizer and the manifest to mutate (its cut dicts), and the MARKER path."""
    from lhotse import CutSet, LilcomChunkyWriter, Recording, SupervisionSegment
    from lhotse.cut import MonoCut

    from edgeasr.data.features import KaldiFbank, KaldiFbankConfig
    from edgeasr.data.tokenizer import Tokenizer, train_tokenizer
    from edgeasr.models import build_transducer
    from edgeasr.models.io import save_model

    tok = Tokenizer(train_tokenizer(TEXTS * 10, root / "tokenizer", vocab_size=32))
    torch.manual_seed(0)
    cfg = {**TINY_STUDENT_CFG, "vocab_size": tok.vocab_size}
    save_model(root / "model.pt", build_transducer(cfg).eval(), cfg, meta={"stage": "distill"})
    rng = np.random.default_rng(0)
    cuts = []
    for i, text in enumerate(TEXTS):
        wav = root / f"utt{i}.wav"
        t = np.arange(int((0.6 + 0.2 * i) * 16000)) / 16000
        sf.write(wav, (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(t.size)).astype("float32"), 16000)
        rec = Recording.from_file(wav, recording_id=f"utt{i}")
        sup = SupervisionSegment(f"utt{i}", f"utt{i}", 0, rec.duration, channel=0, text=text)
        cuts.append(MonoCut(f"utt{i}", 0, rec.duration, 0, recording=rec, supervisions=[sup]))
    featured = CutSet.from_cuts(cuts[1:]).compute_and_store_features(
        KaldiFbank(KaldiFbankConfig()), root / "feats", storage_type=LilcomChunkyWriter, num_jobs=1, progress_bar=False)
    featured = sorted(featured, key=lambda c: c.id)
    cuts = [cuts[0], featured[0], featured[1].drop_recording()]
    return {"root": root, "model": root / "model.pt", "tok": tok.path, "dicts": [c.to_dict() for c in cuts],
            "marker": root / "MARKER", "wav": root / "utt0.wav"}


# --------------------------------------------------------------------------- mutations


def _fields(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix + (k,), v
            yield from _fields(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield prefix + (i,), v
            yield from _fields(v, prefix + (i,))


def _set(root, path, value):
    node = root
    for k in path[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


_DELETE = object()


def _command_recording(marker, wav, rid="rir") -> dict:
    return {"id": rid, "sources": [{"type": "command", "channels": [0], "source": f"touch {marker}; cat {wav}"}],
            "sampling_rate": 16000, "num_samples": 16000, "duration": 1.0, "channel_ids": [0]}


def _mutate_dicts(rng, dicts, marker, wav):
    """One structural mutation of the cut dicts; returns (kind, dicts)."""
    d = copy.deepcopy(dicts)
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    cut = pick(d)
    kind = pick(["source"] * 14 + ["storage"] * 10 + ["number"] * 14 + ["type"] * 10 + ["missing"] * 8
                + ["text"] * 5 + ["transform"] * 7 + ["mixed"] * 3 + ["custom"] * 3)
    strings = hostile(marker, wav)
    if kind == "source":
        rec = cut.get("recording") or d[0]["recording"]
        src = rec["sources"][0]
        if rng.random() < 0.6:
            src["type"] = pick(["command", "url", "shar", "unknown", "file", "memory", "", None, 5])
        src["source"] = pick(strings)
    elif kind == "storage":
        f = pick(d[1:])["features"]
        which = int(rng.integers(4))
        if which == 0:
            f["storage_type"] = pick(["kaldiio", "lilcom_url", "memory_raw", "memory_lilcom", "memory_npy",
                                      "numpy_files",
                                      "lilcom_files", "lilcom_hdf5", "shar", "unknown", "pipe"])
        elif which == 1:
            f["storage_path"] = pick(strings)
        elif which == 2:
            f["storage_key"] = pick(["", "0", "0,1,2", "999999999999", "-5,3", "x", str(2**63), "1," * 2000])
        else:
            f[pick(["num_frames", "num_features", "frame_shift", "start", "duration", "sampling_rate"])] = pick(EDGE)
    elif kind in ("number", "type", "missing"):
        fields = [(p, v) for p, v in _fields(cut) if kind != "number" or isinstance(v, (int, float))]
        if fields:
            path, _ = pick(fields)
            _set(cut, path, _DELETE if kind == "missing" else pick(EDGE))
    elif kind == "text":
        for s in cut.get("supervisions") or []:
            s["text"] = pick([None, 5, ["a"], {"t": 1}, "", " ", "x" * 20000, "\u0000\u202e", "ü ß 中文",
                              f"$(touch {marker})"])
    elif kind == "transform":
        rec = cut.get("recording") or d[0]["recording"]
        t = pick([{"name": "ReverbWithImpulseResponse", "kwargs": {"rir": _command_recording(marker, wav)}},
                  {"name": "ReverbWithImpulseResponse",
                   "kwargs": {"rir": {"id": "c", "start": 0, "duration": 1.0, "channel": 0, "type": "MonoCut",
                                      "recording": _command_recording(marker, wav)}}},
                  {"name": "Speed", "kwargs": {"factor": pick([0, -1, 1e-9, 1e9, "x", None])}},
                  {"name": "Resample", "kwargs": {"source_sampling_rate": 16000,
                                                  "target_sampling_rate": pick([0, -8000, 10**12, 7])}},
                  {"name": "Volume", "kwargs": {"factor": pick([float("nan"), 1e308, -1])}},
                  {"name": "Nope", "kwargs": {}}, {"name": "Speed"}, "Speed", None])
        rec.setdefault("transforms", []).append(t)
    elif kind == "mixed":
        inner = copy.deepcopy(dicts[0])
        inner.pop("type", None)
        if rng.random() < 0.5:
            inner["recording"] = _command_recording(marker, wav, inner["recording"]["id"])
        track = {"cut": {**inner, "type": "MonoCut"}, "offset": pick([0, -1, 1e9])}
        d[0] = {"id": "mix", "type": "MixedCut", "tracks": [track]}
    else:  # custom fields: lhotse turns a recording-shaped dict into a Recording (never loaded here)
        cut["custom"] = {"rir": _command_recording(marker, wav), "x": pick(EDGE)}
    return kind, d


def _jsonl(dicts) -> bytes:
    return "".join(json.dumps(c, ensure_ascii=False, allow_nan=True) + "\n" for c in dicts).encode()


def mutations(rng, dicts, marker, wav, n: int):
    """``n`` cases ``(kind, file suffix, bytes)``, the same for the same seed."""
    for _ in range(n):
        r = rng.random()
        if r < 0.82:
            kind, d = _mutate_dicts(rng, dicts, marker, wav)
            yield kind, ".jsonl.gz", gzip.compress(_jsonl(d), mtime=0)
        elif r < 0.95:  # raw damage
            data = _jsonl(dicts)
            op = int(rng.integers(6))
            if op == 0:
                z = gzip.compress(data, mtime=0)
                yield "raw", ".jsonl.gz", z[: int(rng.integers(len(z)))]
            elif op == 1:
                z = bytearray(gzip.compress(data, mtime=0))
                p = int(rng.integers(10, len(z)))
                z[p] ^= 1 << int(rng.integers(8))
                yield "raw", ".jsonl.gz", bytes(z)
            elif op == 2:
                b = bytearray(data)
                b[int(rng.integers(len(b)))] = int(rng.choice([0x80, 0xC3, 0xFF, 0xFE]))
                yield "raw", ".jsonl.gz", gzip.compress(bytes(b), mtime=0)
            elif op == 3:
                b = bytearray(data)
                p = int(rng.integers(len(b)))
                b[p : p + 1] = rng.choice([b'"', b"{", b"}", b"\\", b"\n", b"]"])
                yield "raw", ".jsonl.gz", gzip.compress(bytes(b), mtime=0)
            elif op == 4:
                yield "raw", ".jsonl.gz", gzip.compress(rng.choice([b"", b"\n", b"[]\n", b"null\n", b"1\n", b'"x"\n',
                                                                    b"[" * 50000 + b"\n", b"{}\n"]), mtime=0)
            else:
                yield "raw", ".jsonl", data[: int(rng.integers(1, len(data)))]  # plain JSON lines, cut short
        else:  # YAML: lhotse reads .yaml manifests with yaml.SafeLoader, whose !!binary gives bytes
            d = copy.deepcopy(dicts)
            f = d[2]["features"]
            payload = base64.b64encode(pickle.dumps(_Touch(f"touch {marker}"))).decode()
            if rng.random() < 0.7:
                f["storage_type"], f["storage_key"], f["storage_path"] = "memory_raw", "@BINARY@", ""
            text = json.dumps(d).replace('"@BINARY@"', f"!!binary {payload}")
            if rng.random() < 0.2:
                text = text.replace('"MonoCut"', "!!python/object/apply:os.system [\"touch " + str(marker) + "\"]", 1)
            yield "yaml", ".yaml", text.encode()


# --------------------------------------------------------------------------- the drill


def _score(base, path, out_dir, messages: list | None = None) -> str:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["score", str(base["model"]), str(path), "--tokenizer", str(base["tok"]),
                         "--out", str(out_dir), "--no-progress"])
    assert "Traceback" not in err.getvalue()
    if code == 2:
        assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()  # one line, no more
    if messages is not None:
        messages.append(err.getvalue())
    return f"exit {code}"


def _stage_source(mdir, messages: list | None = None) -> str:
    data = {"manifest_dir": str(mdir), "split_names": ["train"], "allow_source_types": None}
    try:
        raw = sources.prepare_manifests(data)
        recs, sups = raw["train"]
        cuts = clean_split("train", recs, sups, FilterLog(), min_duration=0.3, max_duration=20.0, num_jobs=1)
    except ValueError as e:
        if messages is not None:
            messages.append(str(e))
        return type(e).__name__
    return f"{len(cuts)} kept"


def _outcome(fn, *args) -> str:
    try:
        with arm(CASE_LIMIT_S):
            return fn(*args)
    except CaseTimeout:
        return "crash timeout"
    except BaseException as e:  # noqa: BLE001 - the drill counts them all
        return f"crash {type(e).__name__}: {str(e)[:300]}"


@pytest.mark.slow  # ~30 s of CPU: two entry points per case
@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # Volume(nan) and friends: refused downstream
def test_manifest_fuzz_1000_files_0_crashes_0_code_executed(base, tmp_path, capsys):
    rng = np.random.default_rng(SEED)
    marker = base["marker"]
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    outcomes = {"score": Counter(), "prepare": Counter()}
    kinds, crashes, executed = Counter(), [], []
    logging.disable(logging.WARNING)  # lhotse warns about every odd manifest; the counts are the result
    rss0, t0, cpu0 = peak_rss_mb(), time.perf_counter(), time.process_time()
    try:
        with drill_limits():
            for i, (kind, suffix, data) in enumerate(mutations(rng, base["dicts"], marker, base["wav"], CASES)):
                kinds[kind] += 1
                path = tmp_path / f"cuts_case{suffix}"
                path.write_bytes(data)
                results = {"score": _outcome(_score, base, path, tmp_path / "out")}
                if suffix != ".yaml":  # the stage reads cuts_<split>.jsonl* only
                    (mdir / "cuts_train.jsonl.gz").write_bytes(data if suffix == ".jsonl.gz" else gzip.compress(data))
                    results["prepare"] = _outcome(_stage_source, mdir)
                for where, res in results.items():
                    outcomes[where][res.split(":")[0] if res.startswith("crash") else res] += 1
                    if res.startswith("crash"):
                        crashes.append(f"case {i} ({kind}) {where}: {res}")
                if marker.exists():
                    executed.append(f"case {i} ({kind})")
                    marker.unlink()
    finally:
        logging.disable(logging.NOTSET)
    grown = peak_rss_mb() - rss0
    with capsys.disabled():
        print(f"\nmanifest fuzz: {CASES} cases ({dict(sorted(kinds.items()))}); "
              f"score: {dict(sorted(outcomes['score'].items()))}; prepare source: "
              f"{dict(sorted(outcomes['prepare'].items()))}; {len(crashes)} crashes, {len(executed)} executed code; "
              f"{time.perf_counter() - t0:.1f} s ({time.process_time() - cpu0:.1f} s CPU), peak RSS +{grown:.0f} MB")
    assert not executed, f"code ran for {executed[:20]}"
    assert not crashes, "\n".join(crashes[:40])
    assert grown < 512, f"the drill grew the process by {grown:.0f} MB"
    assert outcomes["score"]["exit 0"] > 0 and outcomes["score"]["exit 2"] > 0  # both paths exercised


def _yaml_pickle(d, marker, wav):
    f = d[2]["features"]
    f["storage_type"], f["storage_key"], f["storage_path"] = "memory_raw", "@BINARY@", ""
    payload = base64.b64encode(pickle.dumps(_Touch(f"touch {marker}"))).decode()
    return json.dumps(d).replace('"@BINARY@"', f"!!binary {payload}").encode()


def _edit(fn):
    def apply(d, marker, wav):
        fn(d, marker, wav)
        return gzip.compress(_jsonl(d), mtime=0)
    return apply


FOUND = {  # what the drill found, replayed: (edit, score outcome, stage outcome, words in the message)
    "yaml memory_raw pickle": (_yaml_pickle, "exit 2", None, "'pickle' source"),
    "reverb rir is a command": (_edit(lambda d, m, w: d[0]["recording"].update(transforms=[
        {"name": "ReverbWithImpulseResponse", "kwargs": {"rir": _command_recording(m, w)}}])),
        "exit 2", "UnsafeManifestError", "'command' source"),
    "resample to 1e12 Hz": (_edit(lambda d, m, w: d[0]["recording"].update(transforms=[
        {"name": "Resample", "kwargs": {"source_sampling_rate": 16000, "target_sampling_rate": 10**12}}])),
        "exit 2", "UnsafeManifestError", "polyphase filter"),
    "1 Hz recording": (_edit(lambda d, m, w: d[0]["recording"].update(sampling_rate=1)), "exit 1", "1 kept", ">= 1000"),
    "file source is fd 1": (_edit(lambda d, m, w: d[0]["recording"]["sources"][0].update(source=1)),
                            "exit 2", "UnsafeManifestError", "not a path"),
    "storage_path is fd 0": (_edit(lambda d, m, w: d[1]["features"].update(storage_path=0)), "exit 2", "2 kept",
                             "not a path"),
    "transcript is a dict": (_edit(lambda d, m, w: d[0]["supervisions"][0].update(text={"t": 1})), "exit 0",
                             "ValueError", "malformed ['text']"),
    "supervision id is NaN": (_edit(lambda d, m, w: d[1]["supervisions"][0].update(id=float("nan"))), "exit 0",
                              "ValueError", "malformed ['id']"),
    "supervision past the audio": (_edit(lambda d, m, w: d[0]["supervisions"][0].update(duration=1.0)), "exit 0",
                                   "2 kept", None),
    "volume nan": (_edit(lambda d, m, w: d[0]["recording"].update(transforms=[{"name": "Volume", "kwargs": {
        "factor": float("nan")}}])), "exit 1", "1 kept", "NaN/inf samples"),
}


@pytest.mark.parametrize("name", list(FOUND))
@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")
def test_what_the_drill_found(base, tmp_path, name):
    edit, want_score, want_stage, words = FOUND[name]
    d = copy.deepcopy(base["dicts"])
    data = edit(d, base["marker"], base["wav"])
    path = tmp_path / ("cuts_x.yaml" if name.startswith("yaml") else "cuts_x.jsonl.gz")
    path.write_bytes(data)
    messages = []
    with drill_limits(), arm(CASE_LIMIT_S):  # a regression must fail here, not exhaust the machine's memory
        assert _score(base, path, tmp_path / "out", messages) == want_score, messages
        if want_stage:
            (tmp_path / "m").mkdir()
            (tmp_path / "m" / "cuts_train.jsonl.gz").write_bytes(data)
            assert _stage_source(tmp_path / "m", messages) == want_stage, messages
    assert words is None or any(words in m for m in messages), messages
    assert not base["marker"].exists()
