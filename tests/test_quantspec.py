"""The compression spec: its stored forms, the one reader, and the refusals that name what is missing."""

from __future__ import annotations

import dataclasses

import pytest

from edgeasr.export.codec import check_bits
from edgeasr.quantspec import (ActivationPoint, ActivationSpec, CompressionSpec, SpecError, check_sparsity, qmax,
                               read_spec)

POINTS = {"encoder.in": ActivationPoint(8, False, 2.5, 2.5 / 127), "encoder.res0": ActivationPoint(16, False, 3.0, 3.0 / 32767),
          "encoder.l0_c": ActivationPoint(16, True, 1.0, 2.0**-15), "joiner.sum": ActivationPoint(16, False, 4.0, 4.0 / 32767)}
SPEC = CompressionSpec(8, 0.5, "layer", ActivationSpec(POINTS))


def test_model_file_form_round_trips_and_keeps_the_historic_keys():
    d = SPEC.to_dict()
    assert list(d) == ["bits", "sparsity", "scope", "activation_quant"]
    assert set(d["activation_quant"]) == {"gate_scale", "unit_scale", "tanh_out_scale", "rounding", "amax", "points"}
    assert read_spec({"compression": d}, "model.pt") == SPEC
    assert CompressionSpec(6, 0.0).to_dict() == {"bits": 6, "sparsity": 0.0}  # weights only, no scope recorded


def test_header_form_carries_no_scope_and_reads_back_through_the_same_function():
    header = {"format": "edgeasr-student", "tokens": ["<blk>"], **SPEC.header_fields()}
    assert "scope" not in header
    assert read_spec(header, "student.edgeasr") == dataclasses.replace(SPEC, scope=None)
    with pytest.raises(SpecError, match="weights-only"):
        CompressionSpec(8, 0.5).header_fields()


def test_a_model_without_a_spec_is_fp32_and_code_that_needs_one_says_so():
    assert read_spec({"stage": "distill", "model_cfg": {}}, "distill/model.pt") is None
    with pytest.raises(SpecError, match=r"distill/model.pt: the NPU emulator needs a compressed model.*fp32"):
        read_spec({"stage": "distill"}, "distill/model.pt", need="the NPU emulator")


@pytest.mark.parametrize("broken, match", [
    ({"sparsity": 0.5}, r"lacks \['bits'\]"),
    ({"bits": 1, "sparsity": 0.5}, "weight bits must be an integer in 2..16"),
    ({"bits": 8, "sparsity": 1.0}, r"sparsity must be in \[0, 1\)"),
    ({"bits": 8, "sparsity": 0.5, "activation_quant": {**SPEC.activations.to_dict(), "gate_scale": 0.001}},
     "gate_scale .* implements"),
    ({"bits": 8, "sparsity": 0.5, "activation_quant": {**SPEC.activations.to_dict(), "amax": {}}},
     "name different points"),
])
def test_malformed_specs_are_refused_by_name(broken, match):
    with pytest.raises(SpecError, match="m.pt: .*" + match):
        read_spec({"compression": broken}, "m.pt")


def test_sparsity_target_is_checked_against_the_weights():
    check_sparsity(SPEC, zeros=496, weights=1000, where="f")  # within the rounding slack
    with pytest.raises(SpecError, match="0.4000 sparse.*target is 0.5"):
        check_sparsity(SPEC, zeros=400, weights=1000, where="f")


def test_one_qmax_and_one_weight_width_rule():
    assert [qmax(b) for b in (2, 4, 8, 16, 62)] == [1, 7, 127, 32767, 2**61 - 1]
    with pytest.raises(ValueError):
        qmax(1)
    assert check_bits(8) == 8
    with pytest.raises(ValueError, match="qweight bits must be an integer in 2..16"):
        check_bits(17)


def test_the_activation_spec_views_the_runtime_reads():
    act = SPEC.activations
    assert act.scales("encoder") == {"in": 2.5 / 127, "res0": 3.0 / 32767, "l0_c": 2.0**-15}
    assert SPEC.act_bits == 8 and SPEC.residual_bits == 16
    assert act.layout()["encoder.l0_c"] == (16, True)
