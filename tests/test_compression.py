"""Compression: fake quantization + regularizer, gradual magnitude pruning, masks that hold
through later training, and the materialized model the next stage loads."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from edgeasr.compression import (Compression, acos_penalty, cubic_sparsity, fake_quant, global_masks, grid_distance,
                                 layer_mask)
from edgeasr.compression.callbacks import GradualPruning, QuantRegularizer
from edgeasr.models import build_transducer
from edgeasr.quantspec.levels import weight_levels

CFG = dict(vocab_size=24, joiner_dim=16, ctc_weight=0.3,
           encoder=dict(type="lstm", input_dim=20, hidden=16, num_layers=2, subsampling_channels=4, frame_stack=2),
           predictor=dict(type="stateless", embed_dim=16, context_size=2))


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_transducer(CFG)


def batches(n: int = 8):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        lens = torch.tensor([60, 52, 44])
        out.append({"features": torch.randn(3, 60, 20, generator=g), "feature_lens": lens,
                    "tokens": [[1, 2, 3, 4], [5, 6, 7], [8, 9]], "texts": ["a b", "c", "d"], "cut_ids": ["x", "y", "z"]})
    return out


def fit(model, steps: int, callbacks=()):
    from edgeasr.training import TransducerLitModule

    lit = TransducerLitModule(model, lambda ids: " ".join(map(str, ids)), {"lr": 3e-3},
                              {"warmup_steps": 1, "total_steps": steps})
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(lit, train_dataloaders=torch.utils.data.DataLoader(batches(), batch_size=None))
    return trainer


@pytest.mark.parametrize("bits", [8, 6, 4])
def test_fake_quant_is_on_a_per_channel_grid_with_identity_gradient(bits):
    torch.manual_seed(0)
    w = (torch.randn(6, 10) * torch.linspace(0.1, 2, 6)[:, None]).requires_grad_(True)
    wq = fake_quant(w, bits)
    q, scale = weight_levels(w.detach(), bits)
    assert torch.allclose(wq, q * scale[:, None], atol=1e-6)
    assert q.abs().max() == 2 ** (bits - 1) - 1 and len(q.unique()) <= 2 ** bits - 1
    assert float(grid_distance(wq, bits)) < 1e-4 and float(grid_distance(w, bits)) > 0.1
    wq.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight-through


def test_acos_penalty_is_zero_on_the_grid_and_pulls_weights_onto_it():
    torch.manual_seed(0)
    w = torch.randn(8, 32)
    on_grid = fake_quant(w, 4)
    assert float(acos_penalty(on_grid, 4)) < 1e-3
    w = w.clone().requires_grad_(True)
    opt = torch.optim.SGD([w], lr=1e-3)
    before = float(grid_distance(w, 4))
    for _ in range(50):
        opt.zero_grad()
        acos_penalty(w, 4).backward()
        opt.step()
    assert float(grid_distance(w, 4)) < 0.5 * before


def test_cubic_schedule_and_masks():
    assert cubic_sparsity(0, 0.0, 0.5, 10, 110) == 0.0 and cubic_sparsity(110, 0.0, 0.5, 10, 110) == 0.5
    steps = [cubic_sparsity(s, 0.0, 0.5, 10, 110) for s in range(0, 130, 10)]
    assert steps == sorted(steps) and steps[2] - steps[1] > steps[-3] - steps[-4]  # fast early, slow late
    torch.manual_seed(0)
    w = torch.randn(16, 24)
    m = layer_mask(w, 0.7)
    assert abs(1 - m.float().mean() - 0.7) < 1 / w.numel() + 1e-6
    assert w.abs()[~m].max() <= w.abs()[m].min()
    nm = layer_mask(w, 0.0, n_m=(2, 4))
    assert torch.all(nm.reshape(16, -1, 4).sum(-1) == 2)
    blk = layer_mask(w, 0.5, block=4).reshape(16, -1, 4)
    assert torch.all(blk.all(-1) | (~blk).all(-1))
    g = global_masks([w, 10 * w], 0.5)
    assert 1 - (g[0].float().mean() + g[1].float().mean()) / 2 == pytest.approx(0.5, abs=1e-3)
    assert g[0].float().mean() < g[1].float().mean()  # one threshold: the larger layer keeps more


def test_gradual_pruning_reaches_target_and_masked_weights_stay_zero_in_later_training():
    model = tiny_model()
    comp = Compression(model, bits=8)
    names = {t.name for t in comp.targets}
    assert "encoder.lstms.0.weight_hh_l0" in names and "joiner.output.weight" in names
    assert not any(n.startswith("ctc_head") for n in names)
    pruning = GradualPruning(comp, final=0.5, start=0, end=20, update_every=5)
    fit(model, 30, [pruning, QuantRegularizer(comp, weight=1e-4, ramp_steps=10)])
    assert abs(comp.sparsity() - 0.5) < 0.01
    assert [h[1] for h in pruning.history] == sorted(h[1] for h in pruning.history)
    masks = [t.mask.clone() for t in comp.targets]
    # Later training (e.g. MWER): masks kept, no pruning callback; pruned weights stay exactly 0.
    fit(model, 15)
    for t, m in zip(comp.targets, masks):
        assert torch.equal(t.mask, m)
        assert torch.all(getattr(t.module, t.attr)[~m] == 0)
    lstm = model.encoder.lstms[0]
    assert float((lstm._flat_weights[0] == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


def test_materialized_model_reloads_with_its_masks_and_grid():
    model = tiny_model()
    comp = Compression(model, bits=6)
    comp.set_masks([layer_mask(t.effective(), 0.5) for t in comp.targets])
    x, lens = torch.randn(2, 60, 20), torch.tensor([60, 50])
    model.eval()
    with torch.no_grad():
        ref = model.encode(x, lens)[0]
    comp.materialize()
    assert not any(n.endswith(("_orig", "_mask")) for n in model.state_dict())
    with torch.no_grad():
        assert torch.allclose(model.encode(x, lens)[0], ref, atol=1e-6)
    again = tiny_model(seed=5)
    again.load_state_dict(model.state_dict())
    comp2 = Compression(again, bits=6, masks_from_zeros=True)
    assert comp2.sparsity() == pytest.approx(0.5, abs=0.01)
    for t in comp2.targets:  # already on the 6-bit grid: fake quantization changes nothing
        assert float(grid_distance(t.effective(), 6)) < 1e-3


def test_bad_compression_settings_are_rejected():
    comp = Compression(tiny_model(), bits=None)
    with pytest.raises(ValueError, match="scope"):
        GradualPruning(comp, scope="row")
    with pytest.raises(ValueError, match="initial"):
        GradualPruning(comp, final=1.0)
    with pytest.raises(ValueError, match="bits"):
        QuantRegularizer(comp)
    with pytest.raises(ValueError, match="bits"):
        fake_quant(torch.ones(2, 2), 1)


def test_pareto_front():
    from edgeasr.sweep import pareto_front

    pts = [(1.0, 9.0), (2.0, 5.0), (3.0, 6.0), (4.0, 1.0), (2.5, 5.0)]
    assert pareto_front(pts) == [0, 1, 3]


def _baseline_masks(monkeypatch, student, sparsity: float, **pruning):
    """The masks the PTQ baseline (compress stage) sets in one shot, by weight name."""
    from omegaconf import OmegaConf

    from edgeasr.stages.compress import ptq_baseline

    seen = {}
    set_masks = Compression.set_masks

    def spy(self, masks):
        seen.update({t.name: m.clone() for t, m in zip(self.targets, masks)})
        set_masks(self, masks)

    monkeypatch.setattr(Compression, "set_masks", spy)
    section = OmegaConf.create({"pruning": {"scope": "layer", "block": 1, "n_m": None, **pruning},
                                "activations": {"enabled": False}})
    ptq_baseline(student, 8, sparsity, section, dm=None)
    return seen


def test_ptq_baseline_masks_follow_the_gradual_pruning_rule(monkeypatch):
    torch.manual_seed(0)
    # every weight's inputs divisible by 4 (the transducer's 3x3 / 2-tap convolutions are not)
    student = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 24))
    weights = {n: p.detach() for n, p in student.named_parameters() if p.dim() >= 2}
    # defaults (scope layer, block 1, no N:M): the per-layer magnitude mask, as before
    masks = _baseline_masks(monkeypatch, student, 0.5)
    assert set(masks) == set(weights)
    for name, keep in masks.items():
        assert torch.equal(keep, layer_mask(weights[name], 0.5)), name
    glob = _baseline_masks(monkeypatch, student, 0.5, scope="global")
    for name, keep in zip(weights, global_masks(list(weights.values()), 0.5)):
        assert torch.equal(glob[name], keep), name
    # n_m=[2, 4]: every group of 4 consecutive inputs keeps exactly 2, whatever the sparsity asked
    for name, keep in _baseline_masks(monkeypatch, student, 0.3, n_m=[2, 4]).items():
        assert torch.all(keep.reshape(keep.size(0), -1, 4).sum(-1) == 2), name
    # block 4: blocks of 4 consecutive inputs are kept or pruned whole, each layer at the target
    for name, keep in _baseline_masks(monkeypatch, student, 0.5, block=4).items():
        blocks = keep.reshape(keep.size(0), -1, 4)
        assert torch.all(blocks.all(-1) | (~blocks).all(-1)), name
        assert 1 - keep.float().mean() == pytest.approx(0.5, abs=1e-6), name
    with pytest.raises(ValueError, match="scope='layer'"):
        _baseline_masks(monkeypatch, student, 0.5, scope="global", n_m=[2, 4])
