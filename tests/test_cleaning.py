"""Bad input is filtered with a counted reason or stopped with an error naming the file."""

import numpy as np
import pytest
import soundfile as sf
from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

from edgeasr.data.cleaning import REASONS, FilterLog, clean_split, filter_by_tokens, normalize_transcript
from edgeasr.models.subsampling import frames_after_subsampling
from edgeasr.data.tokenizer import Tokenizer, train_tokenizer


def _wav(path, seconds=1.0, sr=16000, seed=0):
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * sr))).astype("float32"), sr)
    return path


def _manifests(items):
    recs, sups = [], []
    for rid, path, text in items:
        rec = Recording.from_file(path, recording_id=rid)
        recs.append(rec)
        sups.append(SupervisionSegment(id=rid, recording_id=rid, start=0, duration=rec.duration, text=text))
    return RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups)


def test_normalize_transcript():
    assert normalize_transcript("  Hello, WORLD!  It's  me. ") == "hello world it's me"
    assert normalize_transcript("Set 5 timers", "basic") == "set 5 timers"  # digits stay: filtered later
    assert normalize_transcript(None) == ""
    with pytest.raises(ValueError, match="unknown text normalization"):
        normalize_transcript("x", "fancy")


def test_clean_split_counts_every_drop(tmp_path):
    good = _wav(tmp_path / "good.wav")
    low = _wav(tmp_path / "low.wav", sr=8000)
    short = _wav(tmp_path / "short.wav", seconds=0.1)
    longf = _wav(tmp_path / "long.wav", seconds=3.0)
    corrupt = _wav(tmp_path / "corrupt.wav")
    recs, sups = _manifests([("good", good, "hello there"), ("low", low, "eight kilohertz"),
                             ("short", short, "tiny"), ("long", longf, "long one"),
                             ("empty", good, "  ...  "), ("corrupt", corrupt, "broken")])
    # Duplicate recording id pointing at another file; a supervision without a recording.
    recs = RecordingSet.from_recordings(list(recs) + [Recording.from_file(low, recording_id="good")])
    sups = SupervisionSet.from_segments(list(sups) + [
        SupervisionSegment(id="orphan", recording_id="nope", start=0, duration=1, text="lost")])
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 10)  # header passes Recording.from_file, data does not

    flog = FilterLog()
    cuts = clean_split("train", recs, sups, flog, min_duration=0.3, max_duration=2.0, decode_check=True)
    assert sorted(c.id for c in cuts) == ["good", "low"]
    assert all(c.sampling_rate == 16000 for c in cuts) and flog.resampled == 1
    m = flog.metrics()
    assert m["filtered/duplicate_id"] == 1
    assert m["filtered/unreadable_audio"] == 1
    assert m["filtered/missing_audio"] == 1
    assert m["filtered/empty_transcript"] == 1
    assert m["filtered/too_short"] == 1 and m["filtered/too_long"] == 1
    assert m["filtered/total"] == 6 == len(flog.items)
    assert set(m) == {f"filtered/{r}" for r in REASONS} | {"filtered/total", "resampled"}
    bad = [i for i in flog.items if i["reason"] == "unreadable_audio"][0]
    assert "corrupt.wav" in bad["detail"]  # names the file
    dup = [i for i in flog.items if i["reason"] == "duplicate_id"][0]
    assert "low.wav" in dup["detail"] and "good.wav" in dup["detail"]
    flog.write(tmp_path / "filtered.jsonl")
    assert len((tmp_path / "filtered.jsonl").read_text().splitlines()) == 6


def test_token_filters(tmp_path):
    model = train_tokenizer(["turn on the lights", "call mom", "play some music please"] * 20,
                            tmp_path / "tok", vocab_size=40)
    tok = Tokenizer(model)
    assert tok.blank_id == 0 and tok.decode(tok.encode("call mom")) == "call mom"
    assert (tmp_path / "tok" / "tokens.txt").read_text().splitlines()[0] == "<blk> 0"
    a = _wav(tmp_path / "a.wav", seconds=1.0)
    b = _wav(tmp_path / "b.wav", seconds=0.35)
    recs, sups = _manifests([("ok", a, "call mom"), ("unk", a, "call zoë"),
                             ("fast", b, "play some music please turn on the lights")])
    flog = FilterLog()
    cuts = clean_split("test", recs, sups, flog, decode_check=False)
    kept = filter_by_tokens("test", cuts, tok.encode, tok.unk_id, frames_after_subsampling, 0.01, flog)
    assert [c.id for c in kept] == ["ok"]
    assert flog.counts["unknown_characters"] == 1 and flog.counts["too_short_for_labels"] == 1
    unk = [i for i in flog.items if i["reason"] == "unknown_characters"][0]
    assert "ë" in unk["detail"] or "z" in unk["detail"]


def test_subsampling_formula():
    assert frames_after_subsampling(100) == 24  # (100-3)//2+1 = 49; (49-3)//2+1 = 24
    assert frames_after_subsampling(7) == 1
    assert frames_after_subsampling(100, factor=2) == 49


def test_missing_tokenizer_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare"):
        Tokenizer(tmp_path / "nope.model")
