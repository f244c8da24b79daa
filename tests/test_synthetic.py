"""Synthetic eSpeak NG corpus: determinism, voice hold-out, OOV, test_rare contexts, pools."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from edgeasr.data.synthetic import (
    iter_split_specs,
    make_noise_pool,
    make_rir_pool,
    normalize_text,
    split_voices,
    synthesize_corpus,
    tts,
)
from edgeasr.data.synthetic.corpus import SPLITS, common_generator
from edgeasr.data.synthetic.templates import load_templates, parse_templates
from edgeasr.data.synthetic.text import RARE_DIMMABLE_TEMPLATES, RARE_TEMPLATES, TEMPLATES, RareRequestGenerator, _fill
from edgeasr.data.word_classes import check_word_classes, fill_segments, normalize_segments

ROOT = Path(__file__).resolve().parents[1]
SEED = 1234


def default_cfg() -> dict:
    return yaml.safe_load((ROOT / "conf" / "data" / "synthetic.yaml").read_text())


def tiny_cfg(**hours) -> dict:
    cfg = default_cfg()
    sizes = dict(
        train=0.02, unlabeled=0.005, dev=0.005, test=0.01, test_noisy=0.005, test_rare=0.01, dev_pause=0.005,
        test_pause=0.01, dev_rare=0.005,
    )
    sizes.update(hours)
    cfg["splits"] = {k: {"hours": v} for k, v in sizes.items()}
    return cfg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return out, synthesize_corpus(tiny_cfg(), SEED, out, num_jobs=2, progress=False)


def test_normalize_text():
    assert normalize_text("Set a timer for 25 minutes") == "set a timer for twenty five minutes"
    assert normalize_text("Alexa, what's the weather?") == "alexa what's the weather"
    assert normalize_text("Turn the lights to 40%!") == "turn the lights to forty percent"
    assert normalize_text("rock-and-roll  ‘quoted’ it's") == "rock and roll quoted it's"
    assert (
        normalize_text("wake me at 7:05, not 7:00") == "wake me at seven oh five not seven o'clock"
    )
    assert normalize_text("the 3rd of 1,200 Beyoncé songs") == (
        "the third of one thousand two hundred beyonce songs"
    )
    assert normalize_text("  ") == ""


def test_corpus_structure(corpus):
    out, result = corpus
    assert list(result) == list(SPLITS)
    ids = [r.id for recs, _ in result.values() for r in recs]
    assert len(ids) == len(set(ids)), "recording ids must be unique across splits"
    cfg = tiny_cfg()
    for split, (recs, sups) in result.items():
        assert sum(r.duration for r in recs) >= cfg["splits"][split]["hours"] * 3600
        assert len(recs) == len(sups) > 0
        for rec, sup in zip(recs, sups):
            assert rec.id.startswith(f"{split}-") and sup.recording_id == rec.id
            assert Path(rec.sources[0].source) == out / split / f"{rec.id}.flac"
            assert sup.start == 0 and sup.duration == pytest.approx(rec.duration)
            assert sup.text and normalize_text(sup.text) == sup.text
            assert sup.language == "English" and sup.speaker == sup.custom["voice"]
            assert set(sup.custom) >= {"family", "voice", "rate", "pitch"}
            assert 130 <= sup.custom["rate"] <= 230 and 25 <= sup.custom["pitch"] <= 80
            if split.endswith("_pause"):  # where the speech ends (and pauses), inside the recording
                assert 0.3 < sup.custom["speech_end"] <= rec.duration - 0.5 + 0.01
                lo, hi = sup.custom.get("hesitation", (0.1, 0.1))
                assert 0 < lo <= hi < sup.custom["speech_end"]
        # nothing but this run's audio in the split directory
        assert {p.stem for p in (out / split).glob("*.flac")} == {r.id for r in recs}


def test_audio_is_16k_mono_and_not_silent(corpus):
    _, result = corpus
    for split in ("train", "test_rare"):
        recs, _ = result[split]
        for rec in itertools.islice(recs, 10):
            info = sf.info(rec.sources[0].source)
            assert (info.samplerate, info.channels, info.frames) == (16000, 1, rec.num_samples)
            audio = rec.load_audio()
            assert audio.shape == (1, rec.num_samples)
            assert 0.01 < np.abs(audio).max() < 1.0
            assert np.sqrt(np.mean(audio**2)) > 1e-3
            assert 0.5 < rec.duration < 10.0


def test_deterministic_and_independent_of_num_jobs(corpus, tmp_path):
    out, result = corpus
    cfg = tiny_cfg()
    cfg["splits"] = {k: cfg["splits"][k] for k in ("train", "test_rare", "test_pause")}
    again = synthesize_corpus(cfg, SEED, tmp_path, num_jobs=1, progress=False)
    assert list(again) == ["train", "test_rare", "test_pause"]
    for split in again:
        sups_a, sups_b = list(result[split][1]), list(again[split][1])
        assert [s.text for s in sups_a] == [s.text for s in sups_b]
        assert [s.custom for s in sups_a] == [s.custom for s in sups_b]
        for rec in result[split][0]:
            a = (out / split / f"{rec.id}.flac").read_bytes()
            assert a == (tmp_path / split / f"{rec.id}.flac").read_bytes(), rec.id


def test_split_texts_do_not_depend_on_other_splits_hours():
    a, b = tiny_cfg(), tiny_cfg(train=3.0, unlabeled=0.0)
    for split in ("test", "test_rare"):
        sa = list(itertools.islice(iter_split_specs(a, SEED, split), 50))
        sb = list(itertools.islice(iter_split_specs(b, SEED, split), 50))
        assert sa == sb
    other = list(itertools.islice(iter_split_specs(a, SEED + 1, "test"), 50))
    assert [s.text for s in other] != [s.text for s in sa]


def test_zero_hour_and_unknown_splits_and_regeneration(tmp_path):
    cfg = tiny_cfg()
    cfg["splits"] = {"dev": {"hours": 0.004}, "test": {"hours": 0}}
    big = synthesize_corpus(cfg, SEED, tmp_path, num_jobs=1, progress=False)
    cfg["splits"]["dev"]["hours"] = 0.002
    result = synthesize_corpus(cfg, SEED, tmp_path, num_jobs=1, progress=False)
    assert list(result) == ["dev"]
    ids = [r.id for r in result["dev"][0]]
    assert ids == [r.id for r in big["dev"][0]][: len(ids)] and len(ids) < len(big["dev"][0])
    assert sorted(p.stem for p in (tmp_path / "dev").glob("*.flac")) == ids  # stale files removed
    assert not (tmp_path / "test").exists()
    cfg["splits"] = {"trian": {"hours": 0.01}}
    with pytest.raises(ValueError, match="trian"):
        synthesize_corpus(cfg, SEED, tmp_path, progress=False)


def test_no_test_voice_in_train(corpus):
    _, result = corpus
    speakers = {split: {s.speaker for s in sups} for split, (_, sups) in result.items()}
    for held_out in ("test", "test_noisy", "test_rare"):
        assert not speakers[held_out] & (speakers["train"] | speakers["unlabeled"])
    for dev in ("dev", "dev_rare"):
        assert not speakers[dev] & (speakers["train"] | speakers["test"])
    pools = split_voices(default_cfg(), SEED)
    assert not set(pools["test"]) & set(pools["train"])
    assert not set(pools["dev"]) & (set(pools["train"]) | set(pools["test"]))
    n = sum(len(v) for v in pools.values())
    assert n > 700  # 8 accents x ~100 variants
    assert len(pools["test"]) == round(0.12 * n) and len(pools["dev"]) == round(0.08 * n)


def test_test_oov_rate_against_train_is_low():
    # Text-level check at the default sizes (2.5 h train, 0.25 h test, ~1.75 s per utterance);
    # a split's texts are a prefix of its spec stream, so this is what synthesis would produce.
    cfg = default_cfg()
    gen, voices = common_generator(cfg, SEED), split_voices(cfg, SEED)

    def texts(split):
        n = int(cfg["splits"][split]["hours"] * 3600 / 1.75)
        specs = iter_split_specs(cfg, SEED, split, voices, gen)
        return [s.text for s in itertools.islice(specs, n)]

    vocab = {w for t in texts("train") for w in t.split()}
    for split in ("test", "dev"):
        words = [w for t in texts(split) for w in t.split()]
        oov = sum(w not in vocab for w in words) / len(words)
        assert oov <= 0.02, f"{split} OOV {oov:.3%}"


def test_test_rare_context_lists(corpus):
    _, result = corpus
    cfg = default_cfg()
    train_vocab = {w for s in result["train"][1] for w in s.text.split()}
    common_vocab = common_generator(cfg, SEED).vocabulary()
    for sup in list(result["test_rare"][1]) + list(result["dev_rare"][1]):
        ctx, entity = sup.custom["context"], sup.custom["entity"]
        assert len(ctx) == cfg["context_size"] == len(set(ctx))
        assert entity in ctx and f" {entity} " in f" {sup.text} "
        assert all(c and normalize_text(c) == c for c in ctx)
        rare_words = set(entity.split()) - common_vocab
        assert rare_words and not rare_words & train_vocab
    for split in ("train", "test"):
        assert all("context" not in s.custom for s in result[split][1])


def test_long_tail_names_only_in_training_splits_and_never_a_rare_word():
    """Train contacts are partly long-tail names, each word outside the inventory and outside
    test_rare's pools; the test splits draw exactly what they drew without the long tail."""
    cfg = default_cfg()
    gen, voices = common_generator(cfg, SEED), split_voices(cfg, SEED)
    vocab = gen.vocabulary()
    rare = RareRequestGenerator(gen)
    rare_words = set(rare._firsts) | set(rare._lasts) | {w for q in rare._qualifiers for w in q.split()}
    train = [s.text for s in itertools.islice(iter_split_specs(cfg, SEED, "train", voices, gen), 1500)]
    tail = {w for t in train for w in t.split()} - vocab
    assert len(tail) > 50 and not tail & rare_words
    off = dict(cfg, long_tail={"splits": [], "contact_prob": 0.4})
    plain = [s.text for s in itertools.islice(iter_split_specs(off, SEED, "train", voices, gen), 1500)]
    assert not {w for t in plain for w in t.split()} - vocab
    for split in ("test", "test_rare", "dev_rare"):
        a = list(itertools.islice(iter_split_specs(cfg, SEED, split, voices, gen), 100))
        assert a == list(itertools.islice(iter_split_specs(off, SEED, split, voices, gen), 100))
    with pytest.raises(ValueError, match="contact_prob 1.5"):
        next(iter_split_specs(dict(cfg, long_tail={"splits": ["train"], "contact_prob": 1.5}), SEED, "train", voices, gen))


def test_tts_synthesize():
    audio = tts.synthesize("hello there", "en-us+m3", rate=175, pitch=50)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.3 < len(audio) / tts.SAMPLE_RATE < 3.0 and np.abs(audio).max() > 0.05
    assert "en-us+m3" in tts.available_voices(["en-us"])
    assert not tts.ESpeak.get().set_voice("en-us+no-such-variant")


def test_rir_pool(tmp_path):
    rirs = make_rir_pool(4, SEED, tmp_path / "rir")
    assert [r.id for r in rirs] == [f"rir-{i:04d}" for i in range(4)]
    for rec in rirs:
        h = rec.load_audio()[0]
        assert rec.sampling_rate == 16000 and 0.2 < rec.duration < 1.0
        assert np.sum(h**2) > 0.1 and np.argmax(np.abs(h)) < 0.02 * 16000  # direct path first
    again = make_rir_pool(2, SEED, tmp_path / "rir2")
    assert np.array_equal(again[0].load_audio(), rirs[0].load_audio())


def test_noise_pool(tmp_path):
    noises = make_noise_pool(6, SEED, tmp_path / "noise", duration=2.0)
    assert [r.id for r in noises] == [f"noise-{i:04d}" for i in range(6)]
    spectra = []
    for rec in noises:
        x = rec.load_audio()[0]
        assert rec.sampling_rate == 16000 and rec.num_samples == 32000 == len(x)
        assert np.sqrt(np.mean(x**2)) > 0.01
        spectra.append(np.abs(np.fft.rfft(x)))
    # white, pink and brown differ in spectral tilt
    lo_hi = [s[:2000].mean() / s[-8000:].mean() for s in spectra[:3]]
    assert lo_hi[0] < lo_hi[1] < lo_hi[2]
    # babble (index 4) is deterministic although synthesised by eSpeak
    again = make_noise_pool(5, SEED, tmp_path / "noise2", duration=2.0)
    assert np.array_equal(again[4].load_audio(), noises[4].load_audio())


def _pattern(words, classes):
    """Carrier words as they are, each run of slot words as one ``{}``."""
    out = []
    for w, c in zip(words, classes):
        if c == "c":
            out.append(w)
        elif not out or out[-1] != "{}":
            out.append("{}")
    return tuple(out)


def _template_patterns(templates):
    out = set()
    for t in templates:
        parts = re.split(r"(\{\w+\})", t)
        words = [
            w for p in parts for w in (["{}"] if p.startswith("{") else normalize_text(p).split())
        ]
        out.add(_pattern(words, ["s" if w == "{}" else "c" for w in words]))
    return out


@pytest.mark.parametrize("seed", [SEED, 7])
def test_word_classes_align_with_the_words_of_every_family(seed):
    """One class per word of the final text (numbers and clocks spelled out), carrier words exactly
    the template's, wake word a carrier, over thousands of draws of every split's generator."""
    cfg = default_cfg()
    gen, voices = common_generator(cfg, seed), split_voices(cfg, seed)
    wake = cfg["wake_word"]
    patterns = {f: _template_patterns(t) for f, t in TEMPLATES.items()}
    rare = {
        f: _template_patterns(t + (RARE_DIMMABLE_TEMPLATES if f == "device" else ()))
        for f, t in RARE_TEMPLATES.items()
    }
    seen, spelled = set(), 0
    for split, n in (("train", 3000), ("test", 500), ("test_rare", 500)):
        for spec in itertools.islice(iter_split_specs(cfg, seed, split, voices, gen), n):
            words, cls = spec.text.split(), spec.word_classes
            assert isinstance(cls, str) and len(cls) == len(words) and set(cls) <= {"s", "c"}, spec
            if spec.spoken.startswith(f"{wake}, "):  # the wake word: a carrier
                assert words[0] == wake and cls[0] == "c"
                words, cls = words[1:], cls[1:]
            allowed = (rare if split == "test_rare" else patterns)[spec.family]
            assert _pattern(words, cls) in allowed, (spec.text, cls)
            if split == "test_rare":  # the rare entity is exactly a run of slot words
                ent = spec.entity.split()
                starts = [i for i in range(len(words)) if words[i : i + len(ent)] == ent]
                assert any(set(cls[i : i + len(ent)]) == {"s"} for i in starts), (spec.text, cls)
            seen.add((split, spec.family))
            spelled += any(
                w in ("five", "thirty", "o'clock", "percent")
                for w, c in zip(words, cls)
                if c == "s"
            )
    assert {f for s, f in seen if s == "train"} == set(TEMPLATES) and spelled > 100


def test_classified_fill_draws_exactly_what_the_plain_fill_draws():
    """The random stream is unchanged: same text, same generator state after every template."""
    gen = common_generator(default_cfg(), SEED)
    all_templates = [t for ts in (*TEMPLATES.values(), *RARE_TEMPLATES.values()) for t in ts]
    for i, t in enumerate(all_templates):
        a, b = np.random.default_rng(i), np.random.default_rng(i)
        segs = fill_segments(t, gen.slots, a)
        assert "".join(s for s, _ in segs) == _fill(t, gen.slots, b)
        assert a.random() == b.random()
        text, cls = normalize_segments(segs, normalize_text)
        assert text == normalize_text(_fill(t, gen.slots, np.random.default_rng(i)))
        assert len(cls) == len(text.split())


def test_normalize_segments_counts_spelled_out_words():
    segs = [("set a timer for ", "c"), ("25 minutes", "s")]
    want = ("set a timer for twenty five minutes", "ccccsss")
    assert normalize_segments(segs, normalize_text) == want
    segs = [("wake me at ", "c"), ("7:05", "s"), (" on the ", "c"), ("3rd", "s")]
    want = ("wake me at seven oh five on the third", "cccsssccs")
    assert normalize_segments(segs, normalize_text) == want
    with pytest.raises(ValueError, match="do not normalize"):
        # "{n}th": a template gluing text to a placeholder
        normalize_segments([("5", "s"), ("th minute", "c")], normalize_text)
    assert check_word_classes("a b", "cs") == "cs" and check_word_classes("a b", ["c", "s"]) == "cs"
    assert check_word_classes("a b c", "cs") is None and check_word_classes(None, "cs") is None
    assert check_word_classes("a b", "cx") is None and check_word_classes("a b", 3) is None


_BOOK_OK = """# comment
[family a 0.25]
stop
call {contact}

[family b 0.75]
play {song}
[rare call]
call {contact}
[rare device]
turn on the {app}
[rare dimmable]
dim the {app}
"""


@pytest.mark.parametrize(
    "edit, error",
    [
        (lambda s: "stop\n" + s, r"t\.txt:1: template 'stop' before the first \[family"),
        (lambda s: s.replace("[family a 0.25]", "[family a]"), r"t\.txt:2: bad header"),
        (lambda s: s.replace("0.25", "-1"), r"t\.txt:2: family weight '-1' is not a positive"),
        (lambda s: s.replace("[rare device]", "[rare devices]"), r":10: unknown section"),
        (lambda s: s.replace("play {song}", "play  {song}"), r"t\.txt:7: '' in 'play  {song}'"),
        (lambda s: s.replace("play {song}", "Play {song}"), r":7: 'Play' in"),
        (lambda s: s.replace("play {song}", "play {n}th"), r":7: '{n}th' in"),
        (lambda s: s.replace("play {song}", "play {song} "), r":7: '' in"),
        (lambda s: s.replace("stop\n", "stop\nstop\n"), r":4: 'stop' repeats t\.txt:3"),
        (lambda s: s + "[family a 0.1]\nx\n", r":14: '\[family a 0.1\]' repeats .*t\.txt:2"),
        (lambda s: s.replace("play {song}\n", ""), r"t\.txt:6: section \[family b\] has no"),
        (lambda s: s.replace("[rare dimmable]\ndim the {app}\n", ""), r"no \[rare dimmable\]"),
        (lambda s: s.replace("0.75", "0.7"), r"t\.txt: the family weights sum to 0\.95, not 1"),
    ],
)
def test_template_file_parsing_is_strict(edit, error):
    """A malformed template file is refused with the file and line, never read differently."""
    parse_templates(_BOOK_OK, "t.txt")
    with pytest.raises(ValueError, match=error):
        parse_templates(edit(_BOOK_OK), "t.txt")


def test_template_slots_are_checked_and_the_shipped_file_loads():
    book = parse_templates(_BOOK_OK, "t.txt")
    assert book.families == {"a": ("stop", "call {contact}"), "b": ("play {song}",)}
    assert book.weights == {"a": 0.25, "b": 0.75} and book.rare["dimmable"] == ("dim the {app}",)
    book.check_slots("family", ("contact", "song"))
    with pytest.raises(ValueError, match=r"t\.txt:7: template 'play \{song\}' names unknown"):
        book.check_slots("family", ("contact",))
    with pytest.raises(ValueError, match=r"t\.txt:11: template 'turn on the \{app\}' names"):
        book.check_slots("rare", ("contact",))
    shipped = load_templates()  # through importlib.resources: the wheel's package data
    assert shipped.families is TEMPLATES and list(shipped.weights) == list(TEMPLATES)
    assert shipped.rare["dimmable"] is RARE_DIMMABLE_TEMPLATES
