"""The residual LSTM stack (:func:`edgeasr.models.residual.residual_lstm`) run by its three
arithmetics on the same random weights and inputs: float (torch's LSTM kernel), fake-quantized
(requantized gate loop) and the integer runtime. The kernels stay separate (their arithmetic must
differ); this checks they compute the same blocks."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_STUDENT_CFG, quantized_tiny_student, random_batch
from edgeasr.compression import activation_spec, float_view
from edgeasr.models.residual import residual_lstm
from edgeasr.quantspec import CompressionSpec
from edgeasr.runtime import IntTransducer


@pytest.fixture(scope="module")
def blocks():
    """The stack's input (the subsampled features of one random utterance) and its output under
    each arithmetic as float64 (T, H), and the runtime's scales."""
    model, gen = quantized_tiny_student()
    spec = CompressionSpec(8, 0.5, "layer", activation_spec(model))
    qenc = model.encoder
    with float_view(model) as plain:
        rt = IntTransducer.from_model(plain, spec, TINY_STUDENT_CFG)
        enc = plain.encoder
        batch = random_batch(gen, 1, 200)
        with torch.no_grad():
            r, _ = enc._subsample(batch["features"], batch["feature_lens"])  # (1, T, H)
            layers = [None] * enc.num_layers
            y_float, _ = residual_lstm(r, enc._norm, lambda i, z, _: (enc.lstms[i](z)[0], None), enc._add, layers)
    with torch.no_grad():
        r_q = qenc.q["res0"](r)
        y_fq, _ = residual_lstm(r_q, qenc._norm, qenc._cell, qenc._add, layers)
    s = rt.encoder.s
    r_int = torch.floor(r_q[0].double() / s["res0"] + 0.5).long()
    zero = [(torch.zeros(enc.hidden, dtype=torch.int64),) * 2 for _ in layers]
    y_int, _ = residual_lstm(r_int, rt.encoder._norm, rt.encoder._cell, rt.encoder._add, zero)
    return y_float[0].double(), y_fq[0].double(), y_int.double() * s[f"res{enc.num_layers}"], s


def test_fake_quant_block_stays_within_quantization_noise_of_the_float_block(blocks):
    y_float, y_fq, _, _ = blocks
    span = float(y_float.abs().max())
    err = (y_fq - y_float).abs()
    assert float(err.max()) < 0.05 * span and float(err.mean()) < 0.01 * span


def test_integer_block_computes_the_fake_quant_block_up_to_rounding_ties(blocks):
    _, y_fq, y_int, s = blocks
    layers = sum(k.endswith("_h") for k in s)
    step = s[f"res{layers}"]
    # A tie the two resolve differently moves an LSTM output (int8) by a level or two; the residual
    # sum carries that on. Otherwise the integers are identical.
    bound = sum(2 * s[f"l{i}_h"] for i in range(layers)) + 2 * step
    diff = (y_int - y_fq).abs()
    assert float(diff.max()) <= bound
    assert float((diff < step / 2).double().mean()) > 0.75
