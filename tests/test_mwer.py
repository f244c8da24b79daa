"""MWER: the loss on toy N-best lists, the full-sum rescoring of real hypotheses, one training step
of a tiny real transducer, and (slow) the tiny ``mwer`` stage end to end on a compressed student."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import compose, stage_runs
from edgeasr.losses import mwer_loss, nbest_posteriors

INF = math.inf


def test_gradient_step_moves_mass_to_the_lower_error_hypothesis():
    # utterance 0: the model prefers hyp 0 (3 errors) over hyp 2 (0 errors); utterance 1 has 2 hyps
    scores = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-0.5, -0.7, -INF, -INF]], requires_grad=True)
    errors = torch.tensor([[3.0, 2.0, 0.0, 5.0], [1.0, 0.0, 0.0, 0.0]])
    mask = torch.isfinite(scores.detach())
    best = errors.masked_fill(~mask, INF).argmin(1)
    before = nbest_posteriors(scores.detach(), mask)[torch.arange(2), best]
    loss = mwer_loss(scores, errors, mask).sum()
    loss.backward()
    # the best hypothesis' score is pushed up, the worst one's down
    assert scores.grad[0, 2] < 0 and scores.grad[0, 3] > 0 and scores.grad[1, 1] < 0
    with torch.no_grad():
        stepped = scores - 0.5 * scores.grad
    after = nbest_posteriors(stepped, mask)[torch.arange(2), best]
    assert (after > before).all(), (before, after)
    assert float(mwer_loss(stepped, errors, mask).sum()) < float(loss.detach())
    assert torch.isfinite(scores.grad).all() and (scores.grad[1, 2:] == 0).all()  # no gradient into padding


def test_loss_value_and_properties():
    scores = torch.tensor([[0.0, math.log(3.0)]])  # P̂ = [0.25, 0.75]
    errors = torch.tensor([[4.0, 0.0]])  # W̄ = 2
    assert torch.allclose(mwer_loss(scores, errors), torch.tensor([0.25 * 2 + 0.75 * -2]))
    # equal errors: zero loss and zero gradient, whatever the scores
    s = torch.randn(3, 4, requires_grad=True)
    loss = mwer_loss(s, torch.full((3, 4), 2.0)).sum()
    loss.backward()
    assert abs(float(loss)) < 1e-6 and s.grad.abs().max() < 1e-6
    # masked hypotheses change nothing, whatever their score and error
    s = torch.tensor([[-1.0, -2.0, 5.0], [-1.0, -1.5, 7.0]])
    e = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 100.0]])
    m = torch.tensor([[True, True, False], [True, True, False]])
    assert torch.allclose(mwer_loss(s, e, m), mwer_loss(s[:, :2], e[:, :2]))
    # fewer than two hypotheses: nothing to discriminate, loss 0 (not NaN)
    one = mwer_loss(torch.tensor([[-1.0, -INF], [-INF, -INF]]), torch.tensor([[3.0, 0.0], [0.0, 0.0]]))
    assert torch.equal(one, torch.zeros(2))
    with pytest.raises(ValueError, match="non-finite"):
        mwer_loss(torch.tensor([[-1.0, -INF]]), torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="one shape"):
        mwer_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_word_errors_count_like_the_reported_wer():
    from edgeasr.training.mwer import word_errors

    assert word_errors("turn on the light", "turn on the light") == 0
    assert word_errors("turn on the light", "turn the lights") == 2  # deletion + substitution
    assert word_errors("play music", "") == 2
    assert word_errors("a", "a b c") == 2


def _tiny_student(vocab: int = 12):
    from edgeasr.models import build_transducer

    torch.manual_seed(0)
    return build_transducer({"vocab_size": vocab, "joiner_dim": 16, "ctc_weight": 0.3,
                             "encoder": {"type": "lstm", "hidden": 16, "num_layers": 1, "subsampling_channels": 4},
                             "predictor": {"type": "stateless", "embed_dim": 16, "context_size": 2}})


def test_nbest_scores_are_the_full_sum_rnnt_log_probs():
    from edgeasr.training.mwer import decode_nbest, nbest_scores

    model = _tiny_student().eval()
    x, x_lens = torch.randn(2, 80, 80), torch.tensor([80, 52])
    enc, enc_lens = model.encode(x, x_lens)
    nbest = decode_nbest(model, enc, enc_lens, beam=3)
    nbest[1] = [[], [3, 4], [5]]  # an empty hypothesis scores like any other
    scores, mask = nbest_scores(model, enc, enc_lens, nbest, width=4)
    assert scores.shape == mask.shape == (2, 4) and not mask[:, 3].any()
    for i, hyps in enumerate(nbest):
        for j, y in enumerate(hyps):
            nll = model.rnnt_loss(enc[i : i + 1, : int(enc_lens[i])], enc_lens[i : i + 1], [y])
            assert torch.isclose(scores[i, j], -nll, atol=1e-4), (i, j)
    assert torch.isinf(scores[~mask]).all()


def test_one_step_of_a_real_transducer_moves_mass_to_the_better_hypothesis():
    """On a real (tiny) transducer: gradient descent on the MWER loss alone raises P̂ of the
    hypothesis with fewer errors within its N-best list."""
    from edgeasr.training.mwer import nbest_scores

    model = _tiny_student().train()
    x, x_lens = torch.randn(1, 60, 80), torch.tensor([60])
    nbest = [[[1, 2, 3], [1, 2], [4, 5, 6]]]
    errors = torch.tensor([[2.0, 1.0, 3.0, 0.0]])  # hyp 1 is the best; slot 3 is empty

    def posterior():
        enc, enc_lens = model.encode(x, x_lens)
        scores, mask = nbest_scores(model, enc, enc_lens, nbest, width=4)
        return scores, mask

    model.encoder.dropout.p = 0.0  # deterministic forward for the before/after comparison
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scores, mask = posterior()
    before = nbest_posteriors(scores.detach(), mask)[0, 1]
    mwer_loss(scores, errors, mask).sum().backward()
    opt.step()
    with torch.no_grad():
        scores, mask = posterior()
    after = nbest_posteriors(scores, mask)[0, 1]
    assert after > before, (float(before), float(after))


def test_mwer_lit_module_adds_the_weighted_mwer_term(tiny_prepared, monkeypatch):
    from edgeasr.data.datamodule import AsrDataModule
    from edgeasr.models import build_transducer
    from edgeasr.training.mwer import MwerLitModule

    root, cfg, _ = tiny_prepared
    monkeypatch.chdir(root)
    prep = root / "data" / "prepare"
    dm = AsrDataModule(prep / "manifests", prep / "tokenizer" / "bpe.model", train_splits=["train"],
                       max_duration=10.0, num_buckets=2)
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    model = build_transducer({**cfg.model.student, "vocab_size": dm.tokenizer.vocab_size})
    losses, logged = {}, {}
    for w in (1.0, 2.0):
        lit = MwerLitModule(model, dm.tokenizer.decode, {"lr": 1e-3}, {"warmup_steps": 1, "total_steps": 10},
                            nbest=3, mwer_weight=w)
        lit.log_dict = lambda d, **k: logged.update(d)
        model.eval()  # deterministic forward (no dropout) for comparing the two weights
        out = model(batch["features"], batch["feature_lens"], batch["tokens"], return_logits=True)
        losses[w] = lit.extra_losses(batch, out)["mwer_loss"]
    assert torch.isclose(losses[2.0], 2 * losses[1.0])
    assert losses[1.0].requires_grad
    assert 1 <= logged["train/nbest_size"] <= 3
    assert logged["train/nbest_oracle_errors"] <= logged["train/nbest_top_errors"]
    with pytest.raises(ValueError, match="at least 2"):
        MwerLitModule(model, dm.tokenizer.decode, {"lr": 1e-3}, {"warmup_steps": 1, "total_steps": 10}, nbest=1)


@pytest.mark.slow
def test_tiny_mwer_stage_keeps_sparsity_and_reports_before_and_after(student_root):
    from edgeasr.compression import Compression, attach_activation_quant
    from edgeasr.compression.quant import grid_distance
    from edgeasr.evaluation import evaluate_splits
    from edgeasr.models.io import load_model
    from edgeasr.stages import compress, mwer
    from edgeasr.stages.common import stage_datamodule

    cfg = compose(["experiment=tiny", "trainer.progress=false", "compress.baseline=false"])
    comp_metrics = compress.run(cfg)
    metrics = mwer.run(compose(["experiment=tiny", "trainer.progress=false", "trainer.log_every_n_steps=2"]))
    report = json.loads((student_root / "reports/mwer.json").read_text())
    assert report == pytest.approx(metrics)
    for split in ("dev", "test"):
        assert f"before/wer/{split}" in report and f"wer/{split}" in report
    # "before" is the compress stage's model exactly as it shipped and was reported
    assert report["before/wer/test"] == comp_metrics["wer/test"]
    assert report["wer_ratio_to_before"] == pytest.approx(report["wer/test"] / report["before/wer/test"], abs=1e-4)
    for key in ("size_bytes", "emulated_latency_ms", "train_steps"):
        assert key in report, key
    assert report["sparsity"] == comp_metrics["sparsity"] == report["before/sparsity"]
    assert report["train_steps"] == cfg.mwer.max_steps

    before, before_meta = load_model(student_root / "data/compress/model.pt")
    after, meta = load_model(student_root / "data/mwer/model.pt")
    act = meta["compression"].pop("activation_quant", None)
    assert meta["compression"] == {"bits": 8, "sparsity": 0.5, "scope": "layer"}
    b = dict(before.named_parameters())
    comp = Compression(after, bits=8, masks_from_zeros=True)
    changed = 0
    for t in comp.targets:
        assert torch.equal(b[t.name] == 0, ~t.mask), t.name  # the same pruned entries, no new zeros
        assert float(grid_distance(t.orig, 8)) < 1e-4, t.name  # on the int8 grid
        changed += int((b[t.name] != t.orig).sum())
    assert changed > 0  # fine-tuning did move weights
    comp.materialize()
    if cfg.compress.activations.enabled:
        # the activation scales are the compress stage's (frozen), and the saved weights + scales
        # reproduce the reported WER: what export reads from the meta
        assert act is not None and act["amax"] == before_meta["compression"]["activation_quant"]["amax"]
        attach_activation_quant(after, scales=act["amax"], frozen=True, weight_bits=8)
    again = evaluate_splits(after.eval(), stage_datamodule(cfg, cfg.mwer), ["test"], student_root / "again")
    assert again["wer/test"] == report["wer/test"]

    client, mwer_runs = stage_runs(student_root, "mwer")
    assert len(mwer_runs) == 1
    assert client.get_metric_history(mwer_runs[0].info.run_id, "train/mwer_loss")
    assert "before/wer/test" in mwer_runs[0].data.metrics
