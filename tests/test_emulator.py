"""NPU cost model: MAC counts against hand-computed values, weight storage against the NOTES §10
reference figures, zero-skipping and compression effects, the roofline bound, and RNN-T latency."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.nn.utils import parametrize, prune

from edgeasr.emulator import (
    HwProfile,
    estimate,
    macs_per_s,
    model_size_bytes,
    model_sparsity,
    profile_layers,
    transducer_latency,
    weight_bytes,
)

HW_DIR = Path(__file__).resolve().parents[1] / "conf" / "hw"


def hw(name: str) -> HwProfile:
    return HwProfile.from_yaml(HW_DIR / f"{name}.yaml")


def by_name(records):
    return {r.name: r for r in records}


# --------------------------------------------------------------------------- MAC counts


def test_linear_macs_per_output_row_and_calls():
    m = nn.Linear(20, 30)
    x = torch.randn(4, 7, 20)
    recs = profile_layers(lambda: (m(x), m(x[:, :3])), m)
    assert len(recs) == 1 and recs[0].kind == "linear" and recs[0].calls == 2
    assert recs[0].macs == (4 * 7 + 4 * 3) * 20 * 30


def test_conv1d_macs_incl_stride_groups_and_depthwise():
    m = nn.Sequential(
        nn.Conv1d(8, 16, kernel_size=3, stride=2, padding=1),  # 50 -> 25 frames
        nn.Conv1d(16, 16, kernel_size=5, padding=2, groups=16),  # depthwise
        nn.Conv1d(16, 32, kernel_size=3, padding=1, groups=4),  # grouped
    )
    recs = by_name(profile_layers(lambda: m(torch.randn(2, 8, 50)), m))
    assert recs["0"].macs == 2 * 16 * 25 * 8 * 3
    assert recs["1"].macs == 2 * 16 * 25 * 1 * 5
    assert recs["2"].macs == 2 * 32 * 25 * (16 // 4) * 3
    assert {r.kind for r in recs.values()} == {"conv1d"}


def test_conv2d_macs_with_stride():
    m = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2))
    recs = by_name(profile_layers(lambda: m(torch.randn(2, 1, 100, 80)), m))
    # (100, 80) -> (49, 39) -> (24, 19)
    assert recs["0"].macs == 2 * 8 * 49 * 39 * (1 * 9)
    assert recs["2"].macs == 2 * 8 * 24 * 19 * (8 * 9)
    assert recs["0"].kind == "conv2d" and "1" not in recs  # ReLU owns no weights: not a layer


def test_lstm_two_layers_bidirectional_gru_and_packed():
    lstm = nn.LSTM(40, 32, num_layers=2, batch_first=True)
    rec = profile_layers(lambda: lstm(torch.randn(3, 10, 40)), lstm)[0]
    per_step = 4 * 32 * (40 + 32) + 4 * 32 * (32 + 32)  # 4 gates x (input + hidden) x hidden, per layer
    assert rec.kind == "lstm" and rec.macs == 3 * 10 * per_step

    bi = nn.LSTM(40, 32, num_layers=2, bidirectional=True)  # layer 2 sees 2 x 32 inputs
    rec = profile_layers(lambda: bi(torch.randn(10, 3, 40)), bi)[0]
    assert rec.macs == 3 * 10 * 2 * (4 * 32 * (40 + 32) + 4 * 32 * (64 + 32))

    gru = nn.GRU(40, 32)
    rec = profile_layers(lambda: gru(torch.randn(10, 3, 40)), gru)[0]
    assert rec.kind == "gru" and rec.macs == 3 * 10 * 3 * 32 * (40 + 32)

    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(3, 10, 40), [10, 6, 2], batch_first=True)
    rec = profile_layers(lambda: lstm(packed), lstm)[0]
    assert rec.macs == (10 + 6 + 2) * per_step  # padding frames are not computed


def mha_macs(N, L, S, E, kdim=None, vdim=None):
    kdim, vdim = kdim or E, vdim or E
    return N * (L * E * E + S * kdim * E + S * vdim * E + 2 * L * S * E + L * E * E)


@pytest.mark.parametrize("eval_no_grad", [False, True])  # eval + no_grad would take torch's fused fast path
def test_multihead_attention_macs_without_double_counting(eval_no_grad):
    E, L, N = 32, 10, 2
    mha = nn.MultiheadAttention(E, 4)
    x = torch.randn(L, N, E)
    if eval_no_grad:
        mha.eval()
    with torch.set_grad_enabled(not eval_no_grad):
        recs = profile_layers(lambda: mha(x, x, x, need_weights=False), mha)
    assert [r.name for r in recs] == [""]  # out_proj counted inside, not as its own layer
    assert recs[0].kind == "attention" and recs[0].macs == mha_macs(N, L, L, E)
    assert recs[0].act_macs == 2 * N * L * L * E  # QK^T + AV

    cross = nn.MultiheadAttention(E, 4, kdim=16, vdim=24, batch_first=True)
    q, k, v = torch.randn(N, L, E), torch.randn(N, 7, 16), torch.randn(N, 7, 24)
    rec = profile_layers(lambda: cross(query=q, key=k, value=v), cross)[0]
    assert rec.macs == mha_macs(N, L, 7, E, kdim=16, vdim=24)


def test_transformer_layer_fast_path_still_counts_submodules():
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
    x = torch.randn(2, 10, 32)
    with torch.no_grad():
        recs = by_name(profile_layers(lambda: layer(x), layer))
    assert recs["self_attn"].macs == mha_macs(2, 10, 10, 32)
    assert recs["linear1"].macs == recs["linear2"].macs == 2 * 10 * 32 * 64


def test_embedding_has_bytes_but_no_macs():
    emb = nn.Embedding(100, 16)
    recs = profile_layers(lambda: emb(torch.tensor([[1, 2, 3]])), emb)
    assert recs[0].kind == "embedding" and recs[0].macs == 0 and recs[0].lookups == 3
    rep = estimate(recs, emb, hw("edge_npu"), bits=8)
    assert rep.layers[0].weight_bytes == 1600 + 100 * 4  # int8 table + per-row scales
    assert rep.layers[0].bytes_moved == math.ceil(3 * rep.layers[0].weight_bytes / 100)  # only gathered rows


def test_torchaudio_conformer_macs():
    torchaudio = pytest.importorskip("torchaudio")
    D, F, T, K = 32, 64, 20, 7
    m = torchaudio.models.Conformer(input_dim=D, num_heads=4, ffn_dim=F, num_layers=2, depthwise_conv_kernel_size=K)
    recs = profile_layers(lambda: m(torch.randn(1, T, D), torch.tensor([T])), m)
    per_layer = (
        2 * (2 * T * D * F)  # two macaron FFNs, two Linears each
        + mha_macs(1, T, T, D)
        + T * D * 2 * D + T * D * K + T * D * D  # pointwise (GLU doubles), depthwise, pointwise
    )
    assert sum(r.macs for r in recs) == 2 * per_layer
    assert {r.kind for r in recs} == {"linear", "attention", "conv1d", "norm"}


# --------------------------------------------------------------------------- weight storage


def quantized_matrix(rows, cols, sparsity, seed=0):
    """Per-row int8-quantized Gaussian weights, the smallest-magnitude `sparsity` fraction set to zero."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    q = torch.round(w / (w.abs().amax(1, keepdim=True) / 127))
    if sparsity:
        k = int(sparsity * w.numel())
        q.view(-1)[w.abs().flatten().argsort()[:k]] = 0
    return q


@pytest.mark.parametrize("shape", [(1280, 320), (320, 1280)])  # scales per 1280 or per 320 channels
@pytest.mark.parametrize("sparsity,reference", [(0.5, 5.0), (0.9, 1.8)])
def test_bitmap_bits_per_weight_match_notes_reference(shape, sparsity, reference):
    q = quantized_matrix(*shape, sparsity)
    bits_per_weight = weight_bytes(q, 8, "bitmap") * 8 / q.numel()
    assert abs(bits_per_weight - reference) <= 0.3
    assert weight_bytes(q, 8, "auto") == weight_bytes(q, 8, "bitmap") < weight_bytes(q, 8, "dense")


def test_dense_int8_fp32_and_sub8_bytes():
    q = quantized_matrix(1280, 320, 0.0)
    n = q.numel()
    assert weight_bytes(q, 8, "dense") == n + 1280 * 4  # values + one fp32 scale per output channel
    assert weight_bytes(q, 8, "auto") == weight_bytes(q, 8, "dense")  # bitmap costs ~9 bits here
    assert abs(weight_bytes(q, 8, "bitmap") * 8 / n - 8.9) <= 0.3  # NOTES: 8.9 incl. scales
    assert weight_bytes(q, 32, "dense") == 4 * n  # fp32: no scales
    assert weight_bytes(q, 4, "dense") == n // 2 + 1280 * 4
    assert weight_bytes(q, 8, "dense", per_channel_scale_bytes=0) == n
    with pytest.raises(ValueError):
        weight_bytes(q, 8, "csr")


def test_sparsity_and_size_see_pruned_parametrized_and_tied_weights():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    prune.l1_unstructured(m[0], "weight", amount=0.5)  # weight = weight_orig * mask

    class Half(nn.Module):  # parametrization zeroing the first half of each row (a stand-in fake-quant)
        def forward(self, w):
            return torch.cat([torch.zeros_like(w[:, :32]), w[:, 32:]], dim=1)

    parametrize.register_parametrization(m[1], "weight", Half())
    assert model_sparsity(m) == pytest.approx(0.5)
    dense = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    assert model_size_bytes(m, 8) < model_size_bytes(dense, 8)
    assert model_size_bytes(dense, 32) == 4 * sum(p.numel() for p in dense.parameters())
    recs = profile_layers(lambda: m(torch.randn(5, 64)), m)
    rep = estimate(recs, m, hw("compute_bound"), bits=8)
    assert rep.sparsity == pytest.approx(0.5) and [c.nonzero for c in rep.layers] == [2048, 2048]
    assert rep.macs_executed == rep.macs // 2

    tied = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 50, bias=False))
    tied[1].weight = tied[0].weight
    assert model_size_bytes(tied, 32) == 50 * 16 * 4  # stored once


# --------------------------------------------------------------------------- zero-skipping and compression


def mlp(sparsity: float, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    with torch.no_grad():
        for lin in (m[0], m[2]):
            w = lin.weight.view(-1)
            w[torch.randperm(w.numel())[: int(sparsity * w.numel())]] = 0
    return m


def cost(m, profile, bits=8, rows=64, **kw):
    x = torch.randn(rows, 256)
    return estimate(profile_layers(lambda: m(x), m), m, profile, bits=bits, **kw)


def test_zero_skipping_halves_compute_when_compute_bound():
    prof = hw("compute_bound")
    dense, sparse = cost(mlp(0.0), prof), cost(mlp(0.5), prof)
    assert all(c.bound == "compute" for c in dense.layers + sparse.layers)
    assert sparse.macs == dense.macs and sparse.macs_executed == dense.macs_executed // 2
    assert sparse.compute_s == pytest.approx(dense.compute_s / 2)
    assert sparse.total_s == pytest.approx(dense.total_s / 2)

    off = dataclasses.replace(prof, zero_skipping=False)
    dense_off, sparse_off = cost(mlp(0.0), off), cost(mlp(0.5), off)
    assert sparse_off.macs_executed == dense_off.macs_executed == dense.macs
    assert sparse_off.total_s == pytest.approx(dense_off.total_s) == pytest.approx(dense.total_s)


def test_memory_bound_time_tracks_compressed_weight_bytes():
    prof = hw("memory_bound")
    dense, sparse = cost(mlp(0.0), prof, rows=1), cost(mlp(0.5), prof, rows=1)
    assert all(c.bound == "memory" and c.memory_level == "flash" for c in dense.layers + sparse.layers)
    assert sparse.weight_bytes < 0.7 * dense.weight_bytes
    assert sparse.total_s / dense.total_s == pytest.approx(sparse.weight_bytes / dense.weight_bytes)
    # fp32 weights move 4x the int8 bytes (minus scales)
    fp32 = cost(mlp(0.0), prof, bits=32, rows=1, sparse_format="dense")
    assert fp32.total_s > 3.5 * dense.total_s


def test_sram_residency_and_weight_passes():
    m = mlp(0.0)
    small = dataclasses.replace(hw("edge_npu"), sram_bytes=1000)
    big = dataclasses.replace(hw("edge_npu"), sram_bytes=10**7)
    assert {c.memory_level for c in cost(m, small).layers} == {"flash"}
    assert {c.memory_level for c in cost(m, big).layers} == {"sram"}
    one, four = cost(m, small, rows=1), cost(m, small, rows=1, weight_passes=4)
    assert four.bytes_moved == 4 * one.bytes_moved and four.total_s == pytest.approx(4 * one.total_s)


# --------------------------------------------------------------------------- the roofline bound


def random_model(rng: random.Random) -> tuple[nn.Module, callable]:
    d = rng.choice([8, 16, 32])
    T = rng.randint(1, 30)
    layers: list[nn.Module] = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["linear", "conv", "lstm", "mha"])
        if kind == "linear":
            layers.append(nn.Linear(d, d))
        elif kind == "conv":
            layers.append(Conv1dNTC(d, rng.choice([1, 3, 5]), rng.choice([1, d])))
        elif kind == "lstm":
            layers.append(LSTMNTC(d))
        else:
            layers.append(SelfAttention(d))
    m = nn.Sequential(*layers)
    x = torch.randn(rng.randint(1, 3), T, d)
    return m, lambda: m(x)


class Conv1dNTC(nn.Module):
    def __init__(self, d, k, groups):
        super().__init__()
        self.conv = nn.Conv1d(d, d, k, padding=k // 2, groups=groups)

    def forward(self, x):
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


class LSTMNTC(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lstm = nn.LSTM(d, d, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0]


class SelfAttention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.mha = nn.MultiheadAttention(d, 2, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x)[0]


def test_no_layer_beats_the_roofline_bound():
    rng = random.Random(0)
    for trial in range(30):
        torch.manual_seed(trial)
        m, fn = random_model(rng)
        with torch.no_grad():
            for p in m.parameters():
                if p.dim() >= 2:
                    p.mul_((torch.rand_like(p) > rng.random()).float())
        prof = HwProfile(
            name="random", macs_per_cycle=rng.choice([8, 32, 256, 2048]), clock_hz=rng.uniform(1e8, 2e9),
            zero_skipping=rng.random() < 0.5, sram_bytes=rng.choice([0, 4096, 10**6, 10**9]),
            bandwidth_bytes_per_s={"sram": rng.uniform(1e8, 1e11), "flash": rng.uniform(1e7, 1e10)},
        )
        bits = rng.choice([4, 8, 16, 32])
        rep = estimate(profile_layers(fn, m), m, prof, bits=bits, sparse_format=rng.choice(["auto", "dense", "bitmap"]),
                       weight_passes=rng.randint(1, 5), placement=rng.choice(["model", "greedy"]))
        peak = prof.macs_per_cycle * prof.clock_hz * 8 / max(bits, 8)
        assert macs_per_s(prof, bits) == pytest.approx(peak)
        fastest = max(prof.bandwidth_bytes_per_s.values())
        for c in rep.layers:
            bw = prof.bandwidth_bytes_per_s[c.memory_level]
            bound = max(c.macs_executed / peak, c.bytes_moved / bw, c.weight_bytes / fastest)
            assert c.time_s >= bound * (1 - 1e-9), (trial, c)
            assert c.time_s == max(c.compute_s, c.memory_s)
            assert c.bytes_moved >= c.weight_bytes
            assert c.macs_executed <= c.macs
            if not prof.zero_skipping:
                assert c.macs_executed == c.macs
        assert rep.total_s == pytest.approx(sum(c.time_s for c in rep.layers))
        assert rep.to_dict()["layers"] and "total" in rep.table()


# --------------------------------------------------------------------------- RNN-T stand-ins and latency


class Subsampling(nn.Module):
    """Two 3x3 stride-2 convs: (N, T, 80) -> (N, ~T/4, d)."""

    def __init__(self, d, channels=8, feat=80):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, 2), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2), nn.ReLU()
        )
        f = ((feat - 3) // 2 + 1 - 3) // 2 + 1
        self.proj = nn.Linear(channels * f, d)

    def forward(self, x, x_lens):
        y = self.conv(x.unsqueeze(1))  # (N, C, T', F')
        y = self.proj(y.permute(0, 2, 1, 3).flatten(2))
        return y, ((x_lens - 3) // 2 + 1 - 3) // 2 + 1


class LSTMEncoder(nn.Module):
    def __init__(self, d=64):
        super().__init__()
        self.sub = Subsampling(d)
        self.lstm = nn.LSTM(d, d, num_layers=2, batch_first=True)

    def forward(self, x, x_lens):
        y, lens = self.sub(x, x_lens)
        return self.lstm(y)[0], lens


class ConformerEncoder(nn.Module):
    def __init__(self, d=64):
        super().__init__()
        import torchaudio

        self.sub = Subsampling(d)
        self.conformer = torchaudio.models.Conformer(
            d, num_heads=4, ffn_dim=128, num_layers=2, depthwise_conv_kernel_size=7
        )

    def forward(self, x, x_lens):
        y, lens = self.sub(x, x_lens)
        return self.conformer(y, lens)


class StatelessPredictor(nn.Module):
    def __init__(self, vocab=64, d=64, context_size=2):
        super().__init__()
        self.context_size = context_size
        self.embedding = nn.Embedding(vocab, d)
        self.conv = nn.Conv1d(d, d, context_size, groups=d // 4)
        self.out = nn.Linear(d, d)

    def step(self, context):  # (N, context_size) -> (N, d)
        y = self.conv(self.embedding(context).transpose(1, 2)).squeeze(-1)
        return self.out(torch.relu(y))


class Joiner(nn.Module):
    def __init__(self, d=64, vocab=64):
        super().__init__()
        self.out = nn.Linear(d, vocab)

    def forward_frame(self, enc, pred):
        return self.out(torch.tanh(enc + pred))


class Transducer(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.predictor, self.joiner = encoder, StatelessPredictor(), Joiner()


@pytest.fixture(scope="module")
def rnnt():
    torch.manual_seed(0)
    return Transducer(LSTMEncoder())


def test_transducer_call_counts_and_growth_with_length(rnnt):
    prof = hw("edge_npu")
    short = transducer_latency(rnnt, prof, num_input_frames=100, num_tokens=5, bits=8)
    long = transducer_latency(rnnt, prof, num_input_frames=400, num_tokens=20, bits=8)
    assert short.meta["encoder_frames"] == 24 and long.meta["encoder_frames"] == 99
    calls = {c.name: c.calls for c in long.layers}
    assert calls["encoder.lstm"] == 1 and calls["joiner.out"] == 99 + 20
    assert calls["predictor.embedding"] == calls["predictor.out"] == 20 + 1
    assert long.total_s > short.total_s and long.macs > short.macs
    fp32 = transducer_latency(rnnt, prof, num_input_frames=400, num_tokens=20, bits=32)
    assert fp32.total_s > long.total_s
    assert rnnt.training  # train/eval flags restored


def test_streaming_chunks_add_weight_traffic_when_weights_do_not_fit(rnnt):
    prof = hw("memory_bound")  # no SRAM: everything streams from flash
    full = transducer_latency(rnnt, prof, 400, 20, bits=8)
    chunked = transducer_latency(rnnt, prof, 400, 20, bits=8, chunk_frames=32)
    assert chunked.meta["chunks"] == 13
    enc = {c.name: c for c in chunked.layers if c.name.startswith("encoder.")}
    assert all(c.passes == 13 and c.memory_level == "flash" for c in enc.values())
    assert chunked.bytes_moved > full.bytes_moved and chunked.total_s > full.total_s
    assert chunked.macs == full.macs


def test_transducer_with_conformer_encoder_and_placement():
    torch.manual_seed(0)
    model = Transducer(ConformerEncoder())
    prof = hw("edge_npu")
    rep = transducer_latency(model, prof, 200, 10, bits=8)
    assert any(c.kind == "attention" for c in rep.layers) and rep.sram_resident
    # greedy placement pins the per-token decoder in SRAM first when the model does not fit
    tight = dataclasses.replace(prof, sram_bytes=rep.weight_bytes // 2)
    rep = transducer_latency(model, tight, 200, 10, bits=8)
    levels = {c.name: c.memory_level for c in rep.layers}
    assert levels["joiner.out"] == "sram" and "flash" in levels.values()
    model_rule = transducer_latency(model, tight, 200, 10, bits=8, placement="model")
    assert {c.memory_level for c in model_rule.layers} == {"flash"} and model_rule.total_s > rep.total_s


# --------------------------------------------------------------------------- profiles


@pytest.mark.parametrize("path", sorted(HW_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_hw_yaml_loads(path):
    cfg = yaml.safe_load(path.read_text())
    prof = HwProfile.from_cfg(cfg)
    assert prof.name == path.stem and prof.peak_macs_per_s > 0
    assert {"sram", "flash"} <= set(prof.bandwidth_bytes_per_s)


def test_from_cfg_reads_composed_config_and_rejects_typos():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"hw": yaml.safe_load((HW_DIR / "edge_npu.yaml").read_text())})
    prof = HwProfile.from_cfg(cfg.hw)  # a DictConfig, as stages receive it
    assert prof.peak_macs_per_s == 256 * 500e6 and prof.zero_skipping
    bad = dict(OmegaConf.to_container(cfg.hw), macs_per_cyle=1)
    with pytest.raises(ValueError, match="macs_per_cyle"):
        HwProfile.from_cfg(bad)


@pytest.mark.parametrize("encoder,predictor", [
    ({"type": "lstm", "hidden": 64, "num_layers": 2, "subsampling_channels": 8}, {"type": "stateless", "embed_dim": 64}),
    ({"type": "conformer", "d_model": 64, "num_layers": 1, "num_heads": 4, "ffn_dim": 128, "conv_kernel": 7,
      "subsampling_channels": 8}, {"type": "lstm", "embed_dim": 32, "hidden": 64}),
])
def test_transducer_latency_on_edgeasr_models(encoder, predictor):
    models = pytest.importorskip("edgeasr.models.transducer")
    torch.manual_seed(0)
    model = models.build_transducer({"vocab_size": 50, "joiner_dim": 64, "ctc_weight": 0.3,
                                     "encoder": encoder, "predictor": predictor})
    rep = transducer_latency(model, hw("edge_npu"), 200, 10, bits=8)
    calls = {c.name: c.calls for c in rep.layers}
    frames = rep.meta["encoder_frames"]
    assert calls["joiner.output"] == frames + 10 and calls["predictor.output"] == 10 + 1
    assert "ctc_head" not in calls  # training-only head: not run, not counted
    assert rep.total_s > 0 and rep.macs > 0
