"""The integer runtime against exact arithmetic and against the fake-quantized PyTorch model."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from conftest import TINY_STUDENT_CFG, quantized_tiny_student, random_batch
from edgeasr.compression import activation_spec, attach_activation_quant, float_view, quant_points
from edgeasr.decoding import greedy_search
from edgeasr.quantspec import CompressionSpec
from edgeasr.runtime import IntTransducer
from edgeasr.runtime.ops import IntLayerNorm, isqrt, multiplier, requant

CFG = TINY_STUDENT_CFG


@pytest.fixture(scope="module")
def quantized():
    """A tiny student, 50 % pruned, int8 weights, activation scales calibrated; plus its runtime."""
    model, gen = quantized_tiny_student()
    spec = activation_spec(model)
    with float_view(model) as plain:
        rt = IntTransducer.from_model(plain, CompressionSpec(8, 0.5, "layer", spec), CFG)
    return model, spec, rt, random_batch(gen, 3, 240)


def test_requantization_rounds_half_up_except_within_multiplier_precision():
    gen = torch.Generator().manual_seed(0)
    real = torch.exp(torch.empty(20000, dtype=torch.float64).uniform_(-16, 3, generator=gen))
    # accumulators below 2^32 whose results fit the int16 outputs the runtime saturates to
    bound = torch.minimum(torch.full_like(real, 2.0**31), 2.0**16 / real)
    acc = ((torch.rand(20000, generator=gen, dtype=torch.float64) * 2 - 1) * bound).long()
    m, s = multiplier(real)
    assert bool(((m >= 2**30) & (m < 2**31)).all())
    assert torch.allclose(m.double() * torch.pow(2.0, -s.double()), real, rtol=2**-30)
    got = requant(acc, m, s, 62)
    exact = acc.double() * real
    want = torch.floor(exact + 0.5).long()
    # a differing result needs the exact value within the multiplier's relative error of a tie
    near_tie = ((exact - torch.floor(exact)) - 0.5).abs() <= exact.abs() * 2**-29 + 1e-9
    assert bool(((got == want) | near_tie).all())
    assert int((got != want).sum()) < 20


def test_isqrt_is_exact():
    gen = torch.Generator().manual_seed(0)
    v = torch.cat([torch.randint(0, 2**62, (5000,), generator=gen, dtype=torch.int64),
                   torch.arange(0, 2000, dtype=torch.int64), torch.tensor([2**62 - 1])])
    got = isqrt(v)
    assert got.tolist() == [math.isqrt(int(x)) for x in v.tolist()]


def test_multiplier_rejects_nonpositive_scales():
    with pytest.raises(ValueError, match="positive"):
        multiplier(torch.tensor([0.5, 0.0]))


def test_integer_layernorm_matches_float_layernorm_to_one_level():
    gen = torch.Generator().manual_seed(0)
    n, s_in, s_out = 48, 3e-5, 0.03
    x = (torch.randn(400, n, generator=gen) * 0.4 / s_in).round().clamp(-32767, 32767).long()
    w, b = torch.rand(n, generator=gen) + 0.5, torch.randn(n, generator=gen) * 0.1
    got = IntLayerNorm(w, b, 1e-5, s_in, s_out)(x)
    ref = torch.nn.functional.layer_norm(x.double() * s_in, (n,), w.double(), b.double(), 1e-5)
    want = torch.floor(ref / s_out + 0.5).clamp(-127, 127).long()
    assert int((got - want).abs().max()) <= 1
    assert float((got == want).float().mean()) > 0.99


def test_streaming_any_chunking_equals_the_whole_utterance_bit_for_bit(quantized):
    _, _, rt, batch = quantized
    x = rt.encoder.quantize_input(batch["features"][0])
    whole = rt.encoder(x)
    from edgeasr.models.subsampling import frames_after_subsampling

    assert whole.size(0) == frames_after_subsampling(x.size(0)) // 2
    for chunk in (1, 7, 16, 45, 1000):
        state, outs = rt.encoder.init_state(), []
        for i in range(0, x.size(0), chunk):
            o, state = rt.encoder.infer(x[i: i + chunk], state)
            outs.append(o)
        assert torch.equal(torch.cat(outs), whole), chunk
    assert int(whole.abs().max()) <= 127


def test_runtime_matches_the_fake_quantized_model(quantized):
    """Same integers up to float rounding ties: encoder outputs within 2 int8 levels (mean < 0.5),
    predictor outputs identical, logits within 5 % of their range."""
    model, spec, rt, batch = quantized
    with torch.no_grad():
        enc, lens = model.encode(batch["features"], batch["feature_lens"])
        pred, _ = model.predictor.init_decoder(3)
        logits = model.joiner.forward_frame(enc[:, 3], pred).double()
    ienc, ilens = rt.encode(batch["features"], batch["feature_lens"])
    assert torch.equal(lens, ilens)
    levels = torch.floor(enc / spec.points["encoder.out"].scale + 0.5).long()
    diff = torch.cat([(levels[i, :n] - ienc[i, :n]).abs().flatten() for i, n in enumerate(lens.tolist())])
    assert int(diff.max()) <= 2 and float(diff.float().mean()) < 0.5
    ipred, _ = rt.predictor.init_decoder(3)
    assert torch.equal(torch.floor(pred / spec.points["predictor.out"].scale + 0.5).long(), ipred)
    ilogits = rt.joiner.forward_frame(ienc[:, 3], ipred)
    assert float((ilogits - logits).abs().max()) <= 0.05 * float(logits.max() - logits.min())


def test_the_fake_quantized_model_in_float64_computes_the_runtime_integers(quantized):
    """Biases on their accumulator's grid and the integer LayerNorm in the training graph: in float64
    its encoder and predictor levels equal the runtime's bit for bit, its logits agree to 1e-6 of
    their range (its weights are float32 products level x scale) and both decode the same tokens."""
    model, spec, rt, batch = quantized
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        enc, lens = ref.encode(batch["features"], batch["feature_lens"])
        pred, _ = ref.predictor.init_decoder(3)
        logits = ref.joiner.forward_frame(enc[:, 3], pred)
        hyps = greedy_search(ref, enc, lens, max_sym_per_frame=2)
    ienc, ilens = rt.encode(batch["features"], batch["feature_lens"])
    assert torch.equal(lens, ilens)
    levels = torch.floor(enc / spec.points["encoder.out"].scale + 0.5).long()
    for i, n in enumerate(lens.tolist()):
        assert torch.equal(levels[i, :n], ienc[i, :n])
    ipred, _ = rt.predictor.init_decoder(3)
    assert torch.equal(torch.floor(pred / spec.points["predictor.out"].scale + 0.5).long(), ipred)
    ilogits = rt.joiner.forward_frame(ienc[:, 3], ipred)
    assert float((ilogits - logits).abs().max()) <= 1e-6 * float(logits.max() - logits.min())
    assert hyps == greedy_search(rt, ienc, ilens, max_sym_per_frame=2)


def test_zero_weights_are_skipped_in_the_mac_count(quantized):
    _, _, rt, batch = quantized
    rt.reset_stats()
    rt.encode(batch["features"][:1], batch["feature_lens"][:1])
    lstm = rt.stats["encoder.lstms.0.weight_hh"]
    assert lstm.calls > 10 and lstm.dense_macs > 0
    assert abs(lstm.executed_macs / lstm.dense_macs - 0.5) < 0.02  # the layer is 50 % sparse


def test_runtime_decodes_with_the_shared_greedy_and_beam_search(quantized):
    from edgeasr.decoding import greedy_search, modified_beam_search

    _, _, rt, batch = quantized
    enc, lens = rt.encode(batch["features"], batch["feature_lens"])
    greedy = greedy_search(rt, enc, lens)
    beams = modified_beam_search(rt, enc, lens, beam=4)
    assert len(greedy) == len(beams) == 3
    assert all(all(0 < t < CFG["vocab_size"] for t in h) for h in greedy)
    assert all(b and b[0].log_prob >= b[-1].log_prob for b in beams)


def test_activation_scales_round_trip_through_the_spec(quantized):
    from edgeasr.compression import detach_activation_quant
    from edgeasr.models import build_transducer

    model, spec, _, batch = quantized
    with float_view(model) as plain:
        state = {k: v.clone() for k, v in plain.state_dict().items()}
    again = build_transducer(CFG)
    again.load_state_dict(state)
    attach_activation_quant(again, scales=spec.amax, frozen=True, weight_bits=8)
    assert {n: float(q.amax) for n, q in quant_points(again)} == spec.amax
    with torch.no_grad():
        a = model.encode(batch["features"], batch["feature_lens"])[0]
        b = again.eval().encode(batch["features"], batch["feature_lens"])[0]
    assert torch.equal(a, b)
    assert detach_activation_quant(again) == spec
    with pytest.raises(ValueError, match="missing"):
        attach_activation_quant(again, scales={"encoder.in": 1.0})
