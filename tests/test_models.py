"""Transducer models: shapes, losses, predictor contracts, exact LSTM streaming."""

from __future__ import annotations

import os

import pytest
import torch

from edgeasr.models.io import load_model, save_model
from edgeasr.models.subsampling import frames_after_subsampling
from edgeasr.models import (
    ConformerEncoder,
    Conv2dSubsampling,
    InputNorm,
    Joiner,
    LstmEncoder,
    LstmPredictor,
    StatelessPredictor,
    Transducer,
    build_transducer,
    count_parameters,
    pad_labels,
)

F_IN, J, V = 20, 16, 12


def tiny_cfg(encoder: str = "lstm", predictor: str = "stateless", ctc_weight: float = 0.0) -> dict:
    enc = (
        dict(type="lstm", input_dim=F_IN, hidden=16, num_layers=2, subsampling_channels=4, dropout=0.0)
        if encoder == "lstm"
        else dict(type="conformer", input_dim=F_IN, d_model=16, num_layers=2, num_heads=2, ffn_dim=32,
                  conv_kernel=3, dropout=0.0, subsampling_channels=4)
    )
    pred = (
        dict(type="stateless", embed_dim=8, context_size=2)
        if predictor == "stateless"
        else dict(type="lstm", embed_dim=8, hidden=12, num_layers=2, dropout=0.0)
    )
    return dict(vocab_size=V, joiner_dim=J, ctc_weight=ctc_weight, encoder=enc, predictor=pred)


def test_subsampling_shapes_follow_frames_after_subsampling():
    sub = Conv2dSubsampling(in_features=80, out_dim=24, channels=4)
    x, lens = torch.randn(3, 50, 80), torch.tensor([50, 31, 7])
    y, y_lens = sub(x, lens)
    assert y.shape == (3, frames_after_subsampling(50), 24)
    assert y_lens.tolist() == [frames_after_subsampling(n) for n in (50, 31, 7)] == [11, 7, 1]


def test_input_norm_modes():
    x = torch.randn(2, 5, F_IN) * 4 + 10
    y = InputNorm(F_IN, "layer")(x)
    assert torch.allclose(y.mean(-1), torch.zeros(2, 5), atol=1e-5)
    g = InputNorm(F_IN, "global")
    g.set_stats(x.reshape(-1, F_IN).mean(0), x.reshape(-1, F_IN).std(0))
    assert torch.allclose(g(x).reshape(-1, F_IN).mean(0), torch.zeros(F_IN), atol=1e-5)
    assert "mean" in g.state_dict()
    assert torch.equal(InputNorm(F_IN, "none")(x), x)
    with pytest.raises(ValueError):
        InputNorm(F_IN, "batch")


@pytest.mark.parametrize("kind", ["lstm", "conformer"])
def test_encoder_shapes(kind):
    cfg = tiny_cfg(kind)["encoder"]
    cfg.pop("type")
    enc = (LstmEncoder if kind == "lstm" else ConformerEncoder)(**cfg, output_dim=J).eval()
    assert enc.output_dim == J and enc.subsampling_factor == 4
    lens = torch.tensor([40, 29, 12])
    x = torch.randn(3, 45, F_IN)  # padded beyond the longest utterance: trimmed inside
    out, out_lens = enc(x, lens)
    assert out.shape == (3, frames_after_subsampling(40), J)
    assert out_lens.tolist() == [frames_after_subsampling(int(n)) for n in lens]


def test_predictor_and_joiner_shapes():
    y, y_lens = pad_labels([[3, 4, 5], [6]])
    assert y.tolist() == [[3, 4, 5], [6, 0, 0]] and y_lens.tolist() == [3, 1]
    for p in (StatelessPredictor(V, 8, 3, J), LstmPredictor(V, 8, 12, 2, J)):
        assert p(y, y_lens).shape == (2, 4, J)
    joiner = Joiner(J, V)
    enc, pred = torch.randn(2, 7, J), torch.randn(2, 4, J)
    logits = joiner(enc, pred)
    assert logits.shape == (2, 7, 4, V)
    assert torch.allclose(joiner.forward_frame(enc[:, 2], pred[:, 1]), logits[:, 2, 1], atol=1e-6)


def test_stateless_predictor_start_context_and_step_equals_forward():
    torch.manual_seed(0)
    p = StatelessPredictor(V, 8, context_size=3, output_dim=J, blank_id=0).eval()
    start = p.start_context(2)
    assert start.tolist() == [[-1, -1, 0]] * 2
    # -1 embeds to zeros, not to token 0's embedding.
    emb = p._embed(start)
    assert torch.count_nonzero(emb[:, :2]) == 0 and torch.equal(emb[:, 2], p.embedding.weight[0].expand(2, -1))
    y = torch.tensor([[5, 7, 2, 9], [1, 1, 3, 0]])
    full = p(y, torch.tensor([4, 3]))
    ys = torch.cat([start, y], 1)
    for u in range(y.size(1) + 1):
        assert torch.allclose(p.step(ys[:, u : u + 3]), full[:, u], atol=1e-6)
    # The decoding interface walks the same contexts.
    out, state = p.init_decoder(2)
    assert torch.allclose(out, full[:, 0], atol=1e-6)
    for u in range(y.size(1)):
        out, state = p.step_tokens(y[:, u], state)
        assert torch.allclose(out, full[:, u + 1], atol=1e-6)


def test_lstm_predictor_step_equals_forward():
    torch.manual_seed(0)
    p = LstmPredictor(V, 8, hidden=12, num_layers=2, output_dim=J).eval()
    y = torch.tensor([[5, 7, 2], [1, 3, 4]])
    full = p(y, torch.tensor([3, 3]))
    out, state = p.init_decoder(2)
    assert torch.allclose(out, full[:, 0], atol=1e-6)
    for u in range(3):
        out, state = p.step_tokens(y[:, u], state)
        assert torch.allclose(out, full[:, u + 1], atol=1e-6)
    sub = p.select_state(state, torch.tensor([1]))
    merged = p.scatter_state(state, torch.tensor([0]), sub)
    assert torch.equal(merged[0][:, 0], state[0][:, 1])


@pytest.mark.parametrize("stack", [1, 2, 3])
@pytest.mark.parametrize("chunk", [1, 13, 16, 37])
def test_lstm_encoder_chunked_infer_equals_forward(chunk, stack):
    torch.manual_seed(0)
    enc = LstmEncoder(F_IN, hidden=16, num_layers=3, output_dim=J, subsampling_channels=4, frame_stack=stack).eval()
    lens = torch.tensor([83, 60, 7, 31])
    x = torch.randn(4, 83, F_IN) * 3 + 5
    with torch.no_grad():
        ref, ref_lens = enc(x, lens)
        state, outs = enc.init_state(4), [[] for _ in range(4)]
        for s in range(0, 83, chunk):
            c_lens = (lens - s).clamp(0, chunk)
            out, out_lens, state = enc.infer(x[:, s : s + chunk], c_lens, state)
            assert out.shape[0] == 4 and state.h.shape == (3, 4, 16) and state.c.shape == (3, 4, 16)
            for i in range(4):
                outs[i].append(out[i, : out_lens[i]])
    for i in range(4):
        got = torch.cat(outs[i])
        assert got.shape[0] == ref_lens[i]
        assert torch.allclose(got, ref[i, : ref_lens[i]], atol=1e-5)


@pytest.mark.parametrize("stack", [1, 2])
def test_lstm_encoder_streaming_forward_with_overlapping_windows(stack):
    """sherpa-onnx's contract: windows of 4k+3 frames advanced by 4k, only (x, h, c) carried."""
    torch.manual_seed(0)
    enc = LstmEncoder(F_IN, hidden=16, num_layers=2, output_dim=J, subsampling_channels=4, frame_stack=stack).eval()
    k, T = 4 * stack, 4 * 4 * stack * 5 + 3
    x = torch.randn(1, T, F_IN)
    with torch.no_grad():
        ref, _ = enc(x, torch.tensor([T]))
        st = enc.init_state(1)
        h, c, outs = st.h, st.c, []
        for s in range(0, T - 3, 4 * k):
            out, h, c = enc.streaming_forward(x[:, s : s + 4 * k + 3], h, c)
            outs.append(out)
    assert torch.allclose(torch.cat(outs, 1), ref, atol=1e-5)


def overfit(model: Transducer, steps: int = 30) -> list[float]:
    torch.manual_seed(1)
    x, lens = torch.randn(2, 48, F_IN), torch.tensor([48, 40])
    y = [[3, 5, 7, 2], [4, 4, 9]]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        out = model(x, lens, y)
        loss = out["loss"] / out["num_utts"]
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach().item())
    return losses


@pytest.mark.parametrize("encoder,predictor", [("lstm", "stateless"), ("conformer", "lstm")])
def test_rnnt_loss_decreases_when_overfitting(encoder, predictor):
    torch.manual_seed(0)
    model = build_transducer(tiny_cfg(encoder, predictor)).train()
    losses = overfit(model)
    assert losses[-1] < 0.5 * losses[0], losses


def test_ctc_head_adds_to_loss_and_counts():
    torch.manual_seed(0)
    x, lens, y = torch.randn(2, 40, F_IN), torch.tensor([40, 33]), [[3, 5, 7], [4]]
    plain = build_transducer(tiny_cfg(ctc_weight=0.0))
    assert plain.ctc_head is None
    out0 = plain(x, lens, y)
    assert out0["ctc_loss"].item() == 0.0 and torch.equal(out0["loss"], out0["rnnt_loss"])
    torch.manual_seed(0)
    model = build_transducer(tiny_cfg(ctc_weight=0.5))
    out = model(x, lens, y)
    assert out["ctc_loss"].item() > 0
    assert torch.allclose(out["loss"], out["rnnt_loss"] + 0.5 * out["ctc_loss"])
    assert (out["num_utts"], out["num_frames"], out["num_tokens"]) == (
        2, frames_after_subsampling(40) + frames_after_subsampling(33), 4)
    out["loss"].backward()
    assert model.ctc_head.weight.grad is not None
    assert count_parameters(model) == count_parameters(plain) + J * V + V


def test_labels_list_equals_padded_and_per_utterance_scores():
    torch.manual_seed(0)
    model = build_transducer(tiny_cfg()).eval()
    x, lens, y = torch.randn(2, 40, F_IN), torch.tensor([40, 33]), [[3, 5, 7], [4]]
    a = model(x, lens, y)
    yp = torch.tensor([[3, 5, 7, 0, 0], [4, -1, -1, -1, -1]])  # wider than max(y_lens) and odd padding
    b = model(x, lens, yp, torch.tensor([3, 1]), return_logits=True)
    assert torch.allclose(a["loss"], b["loss"])
    assert b["logits"].shape == (2, frames_after_subsampling(40), 4, V)
    enc, enc_lens = model.encode(x, lens)
    per_utt = model.rnnt_loss(enc, enc_lens, y, reduction="none")
    assert per_utt.shape == (2,) and torch.allclose(per_utt.sum(), a["rnnt_loss"], atol=1e-4)


def test_build_transducer_rejects_unknown_types():
    cfg = tiny_cfg()
    cfg["encoder"]["type"] = "transformer"
    with pytest.raises(ValueError, match="encoder.type"):
        build_transducer(cfg)
    cfg = tiny_cfg()
    cfg["predictor"]["type"] = "rnn"
    with pytest.raises(ValueError, match="predictor.type"):
        build_transducer(cfg)


def test_save_model_never_writes_through_a_hardlink(tmp_path):
    """DVC's hardlink cache: rewriting an output must leave the cache's copy (the other link) intact."""
    cfg = tiny_cfg()
    out, cached = tmp_path / "model.pt", tmp_path / "cache_object"
    save_model(out, build_transducer(cfg), cfg, {"step": 1})
    os.link(out, cached)
    before = cached.read_bytes()
    torch.manual_seed(1)
    save_model(out, build_transducer(cfg), cfg, {"step": 2})
    assert cached.read_bytes() == before
    assert load_model(out)[1]["step"] == 2 and load_model(cached)[1]["step"] == 1
