"""The cloud's LM (edgeasr.lm): scoring, its file, the text it trains on, rescoring weights tuned on
dev; the train_lm stage on the tiny corpus."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
import torch

from conftest import compose, stage_runs

from edgeasr.data.lm_text import build_lm_text, generated_sentences
from edgeasr.lattice import LatticePath
from edgeasr.lm import PieceLM, RescoreWeights, load_lm, save_lm, tune_weights
from edgeasr.lm.rescore import Utterance, total_errors


def _lm(seed: int = 0, vocab: int = 12) -> PieceLM:
    torch.manual_seed(seed)
    return PieceLM(vocab, embed_dim=8, hidden=16, layers=2, dropout=0.3).eval()


def test_log_prob_is_the_chain_rule_with_an_end_and_ignores_padding():
    lm = _lm()
    seq = [3, 5, 7]
    inputs = torch.tensor([[0, 3, 5, 7]])
    logp = lm(inputs, torch.tensor([4])).log_softmax(-1)[0]
    manual = sum(float(logp[u, t].detach()) for u, t in enumerate([3, 5, 7, 0]))  # ..., then </s> = 0
    alone = lm.log_prob([seq])[0]
    assert alone == pytest.approx(manual, abs=1e-5)
    batched = lm.log_prob([[1] * 9, seq, [2]])  # padded beside longer and shorter sentences
    assert batched[1] == pytest.approx(alone, abs=1e-5)
    with torch.no_grad():
        end_first = float(lm(torch.tensor([[0]]), torch.tensor([1])).log_softmax(-1)[0, 0, 0])
    assert lm.log_prob([[]])[0] == pytest.approx(end_first, abs=1e-6)
    # probabilities over every one-piece sentence and the empty one sum to < 1 (longer ones take the rest)
    total = sum(math.exp(x) for x in lm.log_prob([[]] + [[t] for t in range(1, 12)]))
    assert 0 < total < 1
    assert lm.training is False and lm.log_prob([seq])[0] == alone  # eval mode: dropout off, deterministic


def test_lm_file_round_trips_and_bad_files_get_one_line(tmp_path):
    lm = _lm(1)
    save_lm(tmp_path / "lm.pt", lm, {"steps": 3})
    back, meta = load_lm(tmp_path / "lm.pt")
    assert meta == {"steps": 3} and back.config == lm.config
    assert back.log_prob([[4, 2]]) == pytest.approx(lm.log_prob([[4, 2]]))
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk.pt is not a readable edgeasr LM file .*dvc repro train_lm") as e:
        load_lm(tmp_path / "junk.pt")
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value)
    torch.save({"format": "edgeasr-lm", "config": {**lm.config, "hidden": 8}, "state_dict": lm.state_dict()},
               tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match=r"mismatch.pt: LM weights do not match its config"):
        load_lm(tmp_path / "mismatch.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt: not an edgeasr LM file"):
        load_lm(tmp_path / "other.pt")


def _write_cuts(path, texts):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"{path.name}-{i}", "supervisions": [{"text": t}]}) + "\n")


def test_held_out_sentences_are_removed_from_every_source_and_counted(tmp_path):
    _write_cuts(tmp_path / "cuts_dev.jsonl.gz", ["turn on the lights", "stop"])
    _write_cuts(tmp_path / "cuts_test.jsonl.gz", ["stop", "call bob"])
    sources = {"train": ["stop", "play jazz", "call bob"],
               "generated": ["stop", "turn on the lights", "", "what time is it", "stop"]}
    lm = build_lm_text(tmp_path, sources, ["dev", "test", "test_rare"])  # test_rare has no manifest: nothing
    assert lm.train == ["play jazz", "what time is it"]
    assert lm.dev == ["turn on the lights", "stop"]
    stats = lm.stats()
    assert stats["overlap_removed"] == 5 and stats["overlap_removed/train"] == 2
    assert stats["overlap_removed/generated"] == 3 and stats["empty_dropped"] == 1
    assert stats["overlap_distinct/dev"] == 2 and stats["overlap_distinct/test"] == 2
    assert stats["overlap_distinct/test_rare"] == 0
    assert stats["sentences/train"] == 1 and stats["sentences/generated"] == 1


def test_generated_text_is_the_corpus_inventory_on_its_own_stream():
    cfg = compose(["experiment=tiny"])
    data = dict(cfg.data)
    a = generated_sentences(data, 42, 1009, 300, "basic")
    assert a == generated_sentences(data, 42, 1009, 300, "basic")  # deterministic
    b = generated_sentences(data, 42, 7, 300, "basic")
    assert a != b and all(s == s.lower().strip() and s for s in a)
    assert len(set(a)) > 50  # varied requests, not one sentence repeated


def _utt(uid, ref, paths, lm):
    ref_w = ref.split()
    import kaldialign

    errs = [kaldialign.edit_distance(ref_w, list(p.words))["total"] for p in paths]
    return Utterance(uid, ref, paths, np.array(lm, dtype=float), np.array(errs))


def test_tuning_finds_the_lm_weight_that_fixes_errors_and_keeps_the_1best_when_it_cannot():
    # the device prefers a wrong path by a little; the LM prefers the right one by a lot
    good = [_utt(f"u{i}", "call bob", [LatticePath(("call", "rob"), 1.0, 2.0), LatticePath(("call", "bob"), 1.2, 2.1)],
                 [-9.0, -3.0]) for i in range(3)]
    w, errors, grid = tune_weights(good, [0.0, 0.5, 1.0], [1.0, 0.0], [0.0])
    assert errors == 0 and w.lm_weight > 0
    assert total_errors(good, RescoreWeights()) == 3  # the 1-best
    assert len(grid) == 6 and grid[0] == {"lm_weight": 0.0, "ilm_weight": 1.0, "length_bonus": 0.0, "errors": 3}
    # an LM that prefers the wrong path: nothing beats the 1-best, which the first grid point is
    bad = [_utt("v", "call bob", [LatticePath(("call", "bob"), 1.0, 2.0), LatticePath(("call", "rob"), 1.2, 2.1)],
                [-9.0, -3.0])]
    w, errors, _ = tune_weights(bad, [0.0, 0.5, 1.0], [1.0], [0.0])
    assert (w, errors) == (RescoreWeights(0.0, 1.0, 0.0), 0)
    # a length bonus brings back a deleted word
    short = [_utt("w", "turn it on", [LatticePath(("turn", "on"), 1.0, 1.0), LatticePath(("turn", "it", "on"), 1.5, 1.0)],
                  [-5.0, -5.0])]
    w, errors, _ = tune_weights(short, [0.0], [1.0], [0.0, 1.0])
    assert errors == 0 and w.length_bonus == 1.0
    with pytest.raises(ValueError, match="no utterances"):
        tune_weights([], [0.0], [1.0], [0.0])


@pytest.mark.slow
def test_tiny_train_lm_stage(tiny_prepared, tmp_path, monkeypatch):
    import shutil

    from edgeasr.stages.train_lm import run

    root, _, _ = tiny_prepared
    shutil.copytree(root / "data" / "prepare", tmp_path / "data" / "prepare")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose(["experiment=tiny", "trainer.progress=false"])
    metrics = run(cfg)
    report = json.loads((tmp_path / "reports/train_lm.json").read_text())
    assert report == pytest.approx(metrics)
    assert report["train_steps"] == cfg.train_lm.max_steps
    assert report["sentences/generated"] > 0 and report["sentences/train"] > 0
    assert report["sentences"] == report["sentences/generated"] + report["sentences/train"]
    assert report["overlap_removed"] > 0  # frequent requests occur in dev / test
    vocab = compose(["experiment=tiny"]).prepare.tokenizer.vocab_size
    assert 1 < report["ppl_dev"] < vocab  # learned something: better than uniform over the pieces
    lm, meta = load_lm(tmp_path / "data/train_lm/lm.pt")
    assert meta["steps"] == cfg.train_lm.max_steps and report["params"] == sum(p.numel() for p in lm.parameters())
    assert (tmp_path / "data/train_lm/results/learning_curve.csv").is_file()
    # same config, same data: the same model (a rerun trains from scratch: resume off)
    again = run(compose(["experiment=tiny", "trainer.progress=false", "train_lm.resume=false"]))
    assert again["ppl_dev"] == report["ppl_dev"]
    _, runs = stage_runs(tmp_path, "train_lm")
    assert len(runs) == 2 and runs[0].data.metrics["ppl_dev"] == pytest.approx(report["ppl_dev"])
