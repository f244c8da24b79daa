"""Bad input is filtered with a counted reason or stopped with an error naming the file."""

import numpy as np
import pytest
import soundfile as sf
from lhotse import AudioSource, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from edgeasr.data import cleaning, sources
from edgeasr.data.cleaning import REASONS, FilterLog, clean_split, filter_by_tokens, normalize_transcript
from edgeasr.data.manifest_guard import PathOutsideCorpusError, UnsafeManifestError, check_recordings
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


def test_durations_are_filtered_from_the_header_before_any_decode(tmp_path, monkeypatch):
    """Issue 15.5: a huge file is dropped as too_long without its full decode (memory)."""
    decoded = []
    real = cleaning._readable
    monkeypatch.setattr(cleaning, "_readable", lambda rec: decoded.append(rec.id) or real(rec))
    ok, huge = _wav(tmp_path / "ok.wav"), _wav(tmp_path / "huge.wav", seconds=3.0)
    recs, sups = _manifests([("ok", ok, "fine"), ("huge", huge, "far too long")])
    with open(huge, "r+b") as f:  # the header still says 3 s; the samples are gone
        f.truncate(100)
    flog = FilterLog()
    cuts = clean_split("train", recs, sups, flog, max_duration=2.0, decode_check=True)
    assert [c.id for c in cuts] == ["ok"] and decoded == ["ok"]
    assert flog.counts == {"too_long": 1}


def _folder(tmp_path, lines: bytes, **cfg):
    corpus = tmp_path / "corpus"
    (corpus / "audio").mkdir(parents=True, exist_ok=True)
    _wav(corpus / "audio" / "a.wav")
    (corpus / "train.tsv").write_bytes(lines)
    flog = FilterLog()
    raw = sources.prepare_folder({"corpus_dir": str(corpus), "split_names": ["train"], **cfg}, flog)
    return raw["train"], flog, corpus


def test_folder_tsv_with_a_bom_and_a_missing_file(tmp_path):
    tsv = "\ufeffaudio\ttext\naudio/a.wav\thello\naudio/gone.wav\tbye\n"
    (recs, sups), flog, corpus = _folder(tmp_path, tsv.encode())
    assert [r.id for r in recs] == ["a"] and [s.text for s in sups] == ["hello"]  # the BOM header is skipped
    assert flog.counts == {"missing_audio": 1}
    assert str(corpus / "audio" / "gone.wav") in flog.items[0]["detail"] and "train.tsv:3" in flog.items[0]["detail"]


def test_folder_tsv_that_is_not_utf8_names_file_and_line(tmp_path):
    with pytest.raises(ValueError, match=r"train\.tsv:3: not UTF-8"):
        _folder(tmp_path, b"audio\ttext\naudio/a.wav\thello\naudio/a.wav\tcaf\xe9\n")


@pytest.mark.parametrize("escape", ["../outside.wav", "ABS"])
def test_folder_paths_outside_the_corpus_need_the_setting(tmp_path, escape):
    outside = _wav(tmp_path / "outside.wav")
    line = f"{outside if escape == 'ABS' else escape}\tsomewhere else\n".encode()
    with pytest.raises(PathOutsideCorpusError, match=r"train\.tsv:1: .*outside.wav.*data\.allow_paths_outside_corpus"):
        _folder(tmp_path, line)
    (recs, _), flog, _ = _folder(tmp_path, line, allow_paths_outside_corpus=True)
    assert [r.id for r in recs] == ["outside"] and not flog.counts


def test_folder_sph_name_that_lhotse_would_pass_to_a_shell(tmp_path, monkeypatch):
    """lhotse reads .sph headers with `sph2pipe <path>` through a shell: the name is refused unread."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus" / "audio").mkdir(parents=True)
    (tmp_path / "corpus" / "audio" / "x;touch pwned;.sph").write_bytes(b"NIST_1A")
    with pytest.raises(UnsafeManifestError, match=r"train\.tsv:1: audio path .*'command'.*data\.allow_source_types"):
        _folder(tmp_path, b"audio/x;touch pwned;.sph\tgotcha\n")
    assert not (tmp_path / "pwned").exists()


def _rec(rid, kind, source):
    return Recording(id=rid, sources=[AudioSource(type=kind, channels=[0], source=source)],
                     sampling_rate=16000, num_samples=16000, duration=1.0)


def test_manifest_guard_allows_only_local_sources_unless_opted_in(tmp_path):
    ok = [_rec("f", "file", str(tmp_path / "a.wav")), _rec("m", "memory", b"RIFF....")]
    check_recordings(ok, "m.jsonl", None, "opt in {kind}")
    for rid, kind, src, want in [("c", "command", "touch x", "command"), ("u", "url", "https://h/a.wav", "url"),
                                 ("s", "shar", "", "shar"), ("p", "file", "s3://bucket/a.wav", "url"),
                                 ("q", "file", "/d/x;rm -rf ~;.sph", "command")]:
        with pytest.raises(UnsafeManifestError) as e:
            check_recordings(ok + [_rec(rid, kind, src)], "m.jsonl", ["file", "memory"], "add {kind} to X")
        msg = str(e.value)
        assert isinstance(e.value, ValueError) and len(msg.splitlines()) == 1
        assert msg.startswith("m.jsonl: ") and f"recording {rid!r}" in msg and f"{want!r} source" in msg
        assert f"add {want} to X" in msg
        check_recordings([_rec(rid, kind, src)], "m.jsonl", ["file", "memory", want], "")  # opted in
