"""The prepare stage on the tiny synthetic corpus: splits, voices, unlabeled isolation, features,
tokenizer, DataModule batches, determinism."""

import gzip
import json

import pytest
from lhotse import CutSet, load_manifest

from edgeasr.data import ALL_SPLITS
from edgeasr.data.datamodule import AsrDataModule

pytestmark = pytest.mark.slow


def _cuts(root, split):
    return CutSet.from_file(root / f"data/prepare/manifests/cuts_{split}.jsonl.gz")


@pytest.fixture(autouse=True)
def _in_repo_root(tiny_prepared, monkeypatch):
    # Manifests hold paths relative to the repository root (DVC moves workspaces around).
    monkeypatch.chdir(tiny_prepared[0])


def test_report_has_corpus_statistics(tiny_prepared):
    root, _, metrics = tiny_prepared
    report = json.loads((root / "reports/prepare.json").read_text())
    assert report == pytest.approx(metrics)
    for split in ALL_SPLITS + ("train_aug",):
        assert report[f"hours/{split}"] > 0 and report[f"utterances/{split}"] > 0
    assert report["vocab_words"] > 20 and report["tokenizer_vocab_size"] > 30
    assert 0 <= report["oov_rate_percent/test"] < 50  # the default (not tiny) is <= 2 %: see test_synthetic
    assert "filtered/total" in report


def test_no_test_voice_in_train(tiny_prepared):
    root = tiny_prepared[0]
    voices = {s: {c.supervisions[0].speaker for c in _cuts(root, s)} for s in ALL_SPLITS}
    held_out = voices["test"] | voices["test_noisy"] | voices["test_rare"]
    assert voices["train"] and held_out
    assert not held_out & (voices["train"] | voices["unlabeled"])
    assert not voices["dev"] & voices["train"]


def test_unlabeled_transcripts_unreachable_from_training_manifests(tiny_prepared):
    root = tiny_prepared[0]
    scoring = load_manifest(root / "data/prepare/scoring/supervisions_unlabeled.jsonl.gz")
    texts = [s.text for s in scoring]
    assert texts and all(texts)
    for path in (root / "data/prepare/manifests").glob("*unlabeled*"):
        raw = gzip.open(path, "rt").read()
        assert '"text"' not in raw or all(f'"text": "{t}"' not in raw for t in texts)
    for cut in _cuts(root, "unlabeled"):
        assert all(s.text is None for s in cut.supervisions)
    batch = next(iter(AsrDataModule(root / "data/prepare/manifests", root / "data/prepare/tokenizer/bpe.model",
                                    max_duration=20).split_dataloader("unlabeled")))
    assert batch["texts"] == [None] * len(batch["texts"]) and all(t == [] for t in batch["tokens"])


def test_test_rare_carries_context_lists(tiny_prepared):
    root = tiny_prepared[0]
    for cut in _cuts(root, "test_rare"):
        ctx = cut.supervisions[0].custom["context"]
        assert len(ctx) >= 2 and any(name in cut.supervisions[0].text for name in ctx)


def test_datamodule_batches(tiny_prepared):
    root, cfg, _ = tiny_prepared
    dm = AsrDataModule(root / "data/prepare/manifests", root / "data/prepare/tokenizer/bpe.model", max_duration=15)
    batch = next(iter(dm.train_dataloader()))
    n, t, f = batch["features"].shape
    assert f == 80 and n == len(batch["tokens"]) == batch["feature_lens"].numel()
    assert batch["feature_lens"].max() == t
    assert all(tokens and 0 not in tokens for tokens in batch["tokens"])  # blank never a label
    assert dm.tokenizer.decode(batch["tokens"][0]) == batch["texts"][0]
    ids = {c for b in dm.val_dataloader() for c in b["cut_ids"]}
    assert ids == {c.id for c in _cuts(root, "dev")}


def test_features_match_kaldi_fbank_on_the_audio(tiny_prepared):
    import numpy as np
    import torch
    import torchaudio.compliance.kaldi as kaldi

    root = tiny_prepared[0]
    cut = _cuts(root, "test")[0]
    audio = torch.from_numpy(cut.load_audio())
    ref = kaldi.fbank(audio * 32768, num_mel_bins=80, snip_edges=False, low_freq=20, high_freq=-400, dither=0.0,
                      energy_floor=0.0).numpy()
    feats = cut.load_features()
    n = min(len(ref), len(feats))
    assert abs(len(ref) - len(feats)) <= 1
    assert np.abs(feats[:n] - ref[:n]).max() < 0.1  # lilcom compression error only


def test_same_seed_same_corpus(tiny_prepared, tmp_path, monkeypatch):
    from conftest import compose
    from edgeasr.stages.prepare import run

    root, _, metrics = tiny_prepared
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    again = run(compose(["experiment=tiny", "prepare.progress=false"]))
    assert again == metrics
    a = [(c.id, c.supervisions[0].text, round(c.duration, 4)) for c in _cuts(root, "train")]
    b = [(c.id, c.supervisions[0].text, round(c.duration, 4)) for c in _cuts(tmp_path, "train")]
    assert a == b


def test_word_classes_reach_the_manifests_batches_and_every_split_metric(tiny_prepared, tmp_path):
    """Synthetic word classes survive cleaning, augmentation (test_noisy) and features into the cuts
    manifests and batches; evaluate_splits then reports slot_wer/carrier_wer beside wer, and a
    corpus without classes gets none (absent, not zero)."""
    import torch

    from edgeasr.evaluation import decode_loader, evaluate_splits, wer_metrics
    from edgeasr.models import build_transducer

    root, cfg, _ = tiny_prepared
    for split in ("train", "dev", "test", "test_noisy", "test_rare"):
        for cut in _cuts(root, split):
            sup = cut.supervisions[0]
            assert len(sup.custom["word_classes"]) == len(sup.text.split()), (split, cut.id)
    assert all("word_classes" not in (c.supervisions[0].custom or {}) for c in _cuts(root, "unlabeled"))
    scoring = load_manifest(root / "data/prepare/scoring/supervisions_unlabeled.jsonl.gz")
    assert all(len(s.custom["word_classes"]) == len(s.text.split()) for s in scoring)

    dm = AsrDataModule(root / "data/prepare/manifests", root / "data/prepare/tokenizer/bpe.model", max_duration=30)
    batch = next(iter(dm.split_dataloader("test")))
    assert [len(c) for c in batch["word_classes"]] == [len(t.split()) for t in batch["texts"]]
    assert next(iter(dm.split_dataloader("unlabeled")))["word_classes"][0] is None

    torch.manual_seed(0)
    model = build_transducer({**cfg.model.student, "vocab_size": dm.tokenizer.vocab_size}).eval()
    metrics = evaluate_splits(model, dm, ["test", "test_rare"], tmp_path / "results")
    for split in ("test", "test_rare"):
        assert {f"wer/{split}", f"slot_wer/{split}", f"carrier_wer/{split}"} <= set(metrics)
    assert (metrics["wer"], metrics["slot_wer"], metrics["carrier_wer"]) == (
        metrics["wer/test"], metrics["slot_wer/test"], metrics["carrier_wer/test"])
    assert "Slot words: %WER" in (tmp_path / "results/errs-test.txt").read_text()

    acc = decode_loader(model, dm.split_dataloader("test"), dm.tokenizer.decode)
    assert acc.has_classes and sum(acc.class_errors.values()) == acc.errors > 0
    assert sum(acc.class_words.values()) == acc.words and 0 < acc.class_words["s"] < acc.words
    assert round(acc.slot_wer, 4) == metrics["slot_wer/test"]
    # a real corpus has no classes: the per-class metrics are absent
    plain = CutSet.from_cuts(c.map_supervisions(_drop_classes) for c in _cuts(root, "test"))
    acc = decode_loader(model, dm.cuts_dataloader(plain), dm.tokenizer.decode)
    assert not acc.has_classes and wer_metrics(acc, "test") == {"wer/test": metrics["wer/test"]}


def _drop_classes(sup):
    from dataclasses import replace

    return replace(sup, custom={k: v for k, v in sup.custom.items() if k != "word_classes"})


def test_curriculum_first_epoch_is_short_clean_cuts_in_increasing_duration(tiny_prepared):
    """SortaGrad: epoch 0 over `train` cuts of at most 2 s, shortest first; later epochs the full
    shuffled set (train + train_aug); the phase follows set_epoch, so a resume picks it again."""
    from edgeasr.data.datamodule import AsrDataModule

    prep = tiny_prepared[0] / "data" / "prepare"
    cur = {"epochs": 1, "splits": ["train"], "max_cut_duration": 2.0}
    dm = AsrDataModule(prep / "manifests", prep / "tokenizer" / "bpe.model", max_duration=10.0, curriculum=cur)
    sampler = dm.train_dataloader().sampler
    sampler.set_epoch(0)
    easy = [c for batch in sampler for c in batch]
    durations = [c.duration for c in easy]
    train_ids = {c.id for c in dm.cuts("train") if c.duration <= 2.0}
    assert {c.id for c in easy} == train_ids and len(easy) == len(train_ids) > 0
    assert durations == sorted(durations)
    sampler.set_epoch(1)
    full = [c.id for batch in sampler for c in batch]
    assert set(full) == {c.id for c in dm.train_cuts()} and len(full) > len(easy)
    sampler.set_epoch(0)
    assert [c.id for batch in sampler for c in batch] == [c.id for c in easy]
    with pytest.raises(ValueError, match="leaves no training cuts"):
        AsrDataModule(prep / "manifests", prep / "tokenizer" / "bpe.model",
                      curriculum={**cur, "max_cut_duration": 0.01}).train_dataloader()
    with pytest.raises(ValueError, match="unknown curriculum keys"):
        AsrDataModule(prep / "manifests", prep / "tokenizer" / "bpe.model",
                      curriculum={**cur, "max_duration": 2.0}).train_dataloader()


def test_bucketing_with_fewer_cuts_than_buckets(tiny_prepared):
    """A handful of kept pseudo-labels must not crash lhotse's bucketing (it needs >= 1 cut per bucket)."""
    from edgeasr.data.datamodule import AsrDataModule

    prep = tiny_prepared[0] / "data" / "prepare"
    dm = AsrDataModule(prep / "manifests", prep / "tokenizer" / "bpe.model", max_duration=10.0, num_buckets=10)
    for n in (1, 6):
        few = dm.cuts("train").subset(first=n)
        assert sorted(c.id for batch in dm._bucketing(few, 10.0) for c in batch) == sorted(c.id for c in few)
