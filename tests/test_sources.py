"""Real corpora and bring-your-own data through the real prepare stage: a LibriSpeech-layout tree,
a folder of audio + TSV transcripts full of bad input, and existing lhotse manifests."""

import json

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet

from conftest import compose
from edgeasr.data import sources
from edgeasr.data.manifest_guard import UnsafeManifestError
from edgeasr.data.synthetic.tts import synthesize
from edgeasr.stages.prepare import run

pytestmark = pytest.mark.slow

SENTENCES = [
    "turn on the kitchen lights", "call john smith", "play some music", "what is the weather in paris",
    "set a timer for ten minutes", "add milk to my shopping list", "stop the alarm", "turn off the fan",
    "message mary johnson", "play jazz in the living room", "what time is it", "volume up",
]
VOICES = ["en-us+m3", "en+f2", "en-gb-x-rp+m1"]


def _speak(path, text, i, sr=16000):
    x = synthesize(text, VOICES[i % len(VOICES)], rate=170, pitch=50)
    if sr != 16000:
        from scipy.signal import resample_poly

        x = resample_poly(x, sr, 16000).astype("float32")
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr)
    return path


def _librispeech_tree(corpus, parts: dict[str, list[str]]):
    """``<part>/<spk>/<chapter>/*.flac`` + ``*.trans.txt`` (upper case) for each part's sentences."""
    for p, (part, texts) in enumerate(parts.items()):
        spk, chap = 100 + p, 200 + p
        d = corpus / part / str(spk) / str(chap)
        lines = []
        for i, text in enumerate(texts):
            uid = f"{spk}-{chap}-{i:04d}"
            _speak(d / f"{uid}.flac", text, i + p)
            lines.append(f"{uid} {text.upper()}")
        (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return corpus


def _report(root):
    return json.loads((root / "reports" / "prepare.json").read_text())


def _cfg(*overrides):
    return compose(["experiment=tiny", "prepare.progress=false", "prepare.num_jobs=1", *overrides])


def test_librispeech_layout(workdir):
    corpus = _librispeech_tree(workdir / "LibriSpeech", {"train-clean-100": SENTENCES * 2, "dev-clean": SENTENCES[:4],
                                                         "test-clean": SENTENCES[4:8]})
    cfg = _cfg("data=librispeech", f"data.corpus_dir={corpus}", "data.parts.unlabeled=[]", "data.parts.test_noisy=[]")
    metrics = run(cfg)
    assert metrics["utterances/train"] == 24 and metrics["utterances/test"] == 4
    assert metrics["filtered/total"] == 0 and metrics["oov_rate_percent/test"] == 0.0
    cuts = CutSet.from_file(workdir / "data/prepare/manifests/cuts_test.jsonl.gz")
    assert {c.supervisions[0].text for c in cuts} == set(SENTENCES[4:8])  # lower-cased
    feats = cuts[0].load_features()
    assert feats.shape[1] == 80 and np.isfinite(feats).all()
    assert _report(workdir) == pytest.approx(metrics)


def test_missing_librispeech_part_names_the_fix(workdir):
    (workdir / "LS" / "train-clean-100").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"dev-clean.*data.parts"):
        run(_cfg("data=librispeech", f"data.corpus_dir={workdir / 'LS'}"))
    with pytest.raises(ValueError, match="data.corpus_dir"):
        run(_cfg("data=librispeech"))


def test_folder_with_bad_input(workdir):
    corpus = workdir / "mine"
    rows = {"train": [], "test": []}
    for i, text in enumerate(SENTENCES * 2):
        rows["train"].append((_speak(corpus / "audio" / f"utt{i:02d}.wav", text, i), text.capitalize() + "."))
    # 22.05 kHz: resampled, kept
    rows["train"].append((_speak(corpus / "audio" / "hifi.wav", "turn on the fan", 1, sr=22050), "turn on the fan"))
    # corrupt audio
    bad = corpus / "audio" / "corrupt.flac"
    bad.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    rows["train"].append((bad, "call john"))
    # empty transcript
    rows["train"].append((_speak(corpus / "audio" / "silent_text.wav", "volume up", 2), "   "))
    # duplicate id: same file name in another folder
    rows["train"].append((_speak(corpus / "other" / "utt00.wav", "stop the alarm", 3), "stop the alarm"))
    # audio file missing on disk
    rows["train"].append((corpus / "audio" / "nowhere.wav", "play music"))
    # test: fine, unknown characters, too short for its labels
    for i, text in enumerate(SENTENCES[:5]):
        rows["test"].append((_speak(corpus / "test" / f"t{i}.wav", text, i + 1), text))
    rows["test"].append((_speak(corpus / "test" / "digits.wav", "set a timer for five minutes", 0), "set a timer for 5 minutes"))
    fast = corpus / "test" / "fast.wav"
    sf.write(fast, 0.05 * np.random.default_rng(0).standard_normal(5600).astype("float32"), 16000)  # 0.35 s
    rows["test"].append((fast, "play jazz in the living room and turn on the kitchen lights"))
    for split, items in rows.items():
        (corpus / f"{split}.tsv").write_text(
            "audio\ttext\n" + "".join(f"{p.relative_to(corpus)}\t{t}\n" for p, t in items))

    metrics = run(_cfg("data=folder", f"data.corpus_dir={corpus}"))
    assert metrics["filtered/unreadable_audio"] == 1  # corrupt
    assert metrics["filtered/missing_audio"] == 1  # not on disk
    assert metrics["filtered/empty_transcript"] == 1
    assert metrics["filtered/duplicate_id"] == 1
    assert metrics["filtered/unknown_characters"] == 1
    assert metrics["filtered/too_short_for_labels"] == 1
    assert metrics["filtered/total"] == 6
    assert metrics["resampled"] == 1
    assert metrics["utterances/train"] == 25 and metrics["utterances/test"] == 5
    filtered = [json.loads(line) for line in (workdir / "data/prepare/filtered.jsonl").read_text().splitlines()]
    assert any("corrupt.flac" in f["detail"] for f in filtered)
    assert any("nowhere.wav" in f["detail"] and f["reason"] == "missing_audio" for f in filtered)
    train = CutSet.from_file(workdir / "data/prepare/manifests/cuts_train.jsonl.gz")
    assert "hifi" in {c.id for c in train} and all(c.sampling_rate == 16000 for c in train)
    assert {c.supervisions[0].text for c in train} >= {"turn on the kitchen lights"}  # normalized


def test_folder_without_train_tsv(workdir):
    (workdir / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="train.tsv"):
        run(_cfg("data=folder", f"data.corpus_dir={workdir / 'empty'}"))


def test_existing_manifests_and_malformed_manifest(workdir):
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

    mdir = workdir / "manifests_in"
    for split, texts in {"train": SENTENCES, "test": SENTENCES[:3]}.items():
        recs, sups = [], []
        for i, text in enumerate(texts):
            rec = Recording.from_file(_speak(workdir / "wav" / f"{split}{i}.wav", text, i), recording_id=f"{split}{i}")
            recs.append(rec)
            sups.append(SupervisionSegment(f"{split}{i}", rec.id, 0, rec.duration, text=text))
        mdir.mkdir(exist_ok=True)
        RecordingSet.from_recordings(recs).to_file(mdir / f"recordings_{split}.jsonl.gz")
        SupervisionSet.from_segments(sups).to_file(mdir / f"supervisions_{split}.jsonl.gz")
    metrics = run(_cfg("data=manifests", f"data.manifest_dir={mdir}"))
    assert metrics["utterances/train"] == len(SENTENCES) and metrics["utterances/test"] == 3

    (mdir / "recordings_train.jsonl.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(ValueError, match=r"recordings_train.jsonl.gz is not a readable lhotse manifest"):
        run(_cfg("data=manifests", f"data.manifest_dir={mdir}"))


def test_manifest_with_a_command_source_is_refused_before_any_audio_is_read(workdir):
    """Issue 15.1: lhotse runs a `command` source with a shell when its audio is read."""
    from lhotse import AudioSource, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    wav = workdir / "ok.wav"
    sf.write(wav, 0.1 * np.random.default_rng(0).standard_normal(16000).astype("float32"), 16000)
    good = Recording.from_file(wav, recording_id="ok")
    marker = workdir / "command_ran"
    evil = Recording(id="evil", sources=[AudioSource("command", [0], f"touch {marker}; cat {wav}")],
                     sampling_rate=16000, num_samples=good.num_samples, duration=good.duration)
    sups = [SupervisionSegment(r.id, r.id, 0, r.duration, text=SENTENCES[0]) for r in (good, evil)]
    mdir = workdir / "manifests_in"
    mdir.mkdir()
    CutSet.from_manifests(RecordingSet.from_recordings([good, evil]), SupervisionSet.from_segments(sups)).to_file(
        mdir / "cuts_train.jsonl.gz")

    want = r"cuts_train\.jsonl\.gz: recording 'evil' has a 'command' source.*data\.allow_source_types"
    with pytest.raises(UnsafeManifestError, match=want):
        run(_cfg("data=manifests", f"data.manifest_dir={mdir}"))
    assert not marker.exists()
    # the explicit opt-in lets it through (nothing is read here; the stage would run it)
    cfg = _cfg("data=manifests", f"data.manifest_dir={mdir}", "data.allow_source_types=[file,memory,command]")
    assert sorted(r.id for r in sources.prepare_manifests(cfg.data)["train"][0]) == ["evil", "ok"]
    assert not marker.exists()


def test_librispeech_recipes_compose_and_run_their_data_path(workdir):
    """`experiment=librispeech100` / `librispeech960` on a LibriSpeech-layout tree of eSpeak audio:
    prepare (speed-perturbed copies, BPE, features), a training batch through each recipe's
    teacher and student (their literature sizes), the GPU trainer settings composed."""
    import torch
    from omegaconf import OmegaConf

    from edgeasr.data.datamodule import AsrDataModule
    from edgeasr.models import build_transducer

    parts = ["train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "test-clean", "test-other"]
    corpus = _librispeech_tree(workdir / "LibriSpeech", {
        part: SENTENCES if part.startswith("train") else SENTENCES[p % 3::3] for p, part in enumerate(parts)})
    # real noise and RIR recordings (MUSAN / RIRS_NOISES style folders) for the 960 h recipe
    rng = np.random.default_rng(0)
    (workdir / "musan/noise/free-sound").mkdir(parents=True)
    (workdir / "rirs/room1").mkdir(parents=True)
    sf.write(workdir / "musan/noise/free-sound/noise-0001.wav", (0.1 * rng.standard_normal(48000)).astype("float32"), 16000)
    sf.write(workdir / "rirs/room1/rir-1.wav", (np.exp(-np.arange(4000) / 600.0) * rng.standard_normal(4000)).astype("float32"),
             16000)
    real_pools = {"librispeech960": [f"prepare.augment.noise_dir={workdir / 'musan'}", f"prepare.augment.rir_dir={workdir / 'rirs'}",
                                     "prepare.augment.reverb_prob=1.0", "prepare.augment.noise_prob=1.0"]}
    sizes = {}
    for exp in ("librispeech100", "librispeech960"):
        cfg = compose([f"experiment={exp}", f"data.corpus_dir={corpus}", "prepare.progress=false", "prepare.num_jobs=1",
                       f"paths.data_dir=data-{exp}", *real_pools.get(exp, [])])
        assert cfg.trainer.accelerator == "gpu" and cfg.trainer.strategy == "ddp"
        assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.devices == {"librispeech100": 2}.get(exp, 8)
        metrics = run(cfg)
        train_parts = list(cfg.data.parts.train)
        assert metrics["utterances/train"] == len(SENTENCES) * len(train_parts)
        assert metrics["utterances/train_aug"] == 2 * metrics["utterances/train"]  # two speed copies
        assert metrics.get("utterances/unlabeled", 0) == (len(SENTENCES) * 2 if exp == "librispeech100" else 0)
        assert metrics["filtered/total"] == 0
        prep = workdir / f"data-{exp}" / "prepare"
        synthetic_pool = (prep / "audio" / "noise_train").is_dir()
        assert synthetic_pool == (exp not in real_pools)  # the given folders replace the synthetic pools
        dm = AsrDataModule(prep / "manifests", prep / "tokenizer" / "bpe.model", train_splits=list(cfg.train_teacher.train_splits),
                           max_duration=8.0, num_buckets=2, seed=cfg.seed)
        batch = next(iter(dm.train_dataloader()))
        for role in ("teacher", "student"):
            model = build_transducer({**OmegaConf.to_container(cfg.model[role], resolve=True),
                                      "vocab_size": dm.tokenizer.vocab_size})
            sizes[exp, role] = sum(p.numel() for p in model.parameters())
            out = model(batch["features"], batch["feature_lens"], batch["tokens"])
            assert torch.isfinite(out["loss"]) and out["loss"] > 0
    # Conformer-M (~30 M) and -L (~120 M) teachers of Gulati et al. 2020; one ~7 M student
    assert 20e6 < sizes["librispeech100", "teacher"] < 40e6 and 90e6 < sizes["librispeech960", "teacher"] < 140e6
    assert sizes["librispeech100", "student"] == sizes["librispeech960", "student"] < 10e6


def test_noise_and_rir_folders_that_hold_nothing_name_the_setting(workdir):
    from edgeasr.data.augment import audio_pool

    with pytest.raises(FileNotFoundError, match=r"prepare.augment.noise_dir=.*not a directory"):
        audio_pool(workdir / "nowhere", "prepare.augment.noise_dir", 16000)
    (workdir / "empty" / "sub").mkdir(parents=True)
    (workdir / "empty" / "sub" / "readme.txt").write_text("no audio here")
    with pytest.raises(ValueError, match=r"prepare.augment.rir_dir=.*no .wav or .flac"):
        audio_pool(workdir / "empty", "prepare.augment.rir_dir", 16000)
    x = np.zeros(8000, dtype="float32")
    sf.write(workdir / "empty" / "sub" / "a.wav", x, 8000)
    pool = audio_pool(workdir / "empty", "prepare.augment.rir_dir", 16000)
    assert [r.id for r in pool] == ["sub_a"] and pool["sub_a"].sampling_rate == 16000
