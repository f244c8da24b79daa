"""NPU emulator (edgeasr.emulator.npu, .modelspec, .streaming, .calibration) on a tiny real student:
exported, loaded into the integer runtime, streamed. Sparse vs dense speed-ups on the caricature
profiles, the roofline bound as a property, calibration against the analytical cost model (cost.py),
energy and utilization."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import pytest
import torch

from conftest import TINY_STUDENT_CFG, quantized_tiny_student
from edgeasr.compression import activation_spec, float_view
from edgeasr.emulator import HwProfile
from edgeasr.emulator.calibration import calibrate, torch_twin, used_frames
from edgeasr.emulator.cost import PLACEMENTS, LayerWork, roofline
from edgeasr.emulator.modelspec import VARIANTS, ModelSpec, layer_of_tensor
from edgeasr.emulator.npu import emulate
from edgeasr.emulator.plot import roofline_figure
from edgeasr.emulator.streaming import add_counts, stream_utterance

HW_DIR = Path(__file__).resolve().parents[1] / "conf" / "hw"
CFG = TINY_STUDENT_CFG
CHUNK = 32  # 320 ms of 10 ms frames


def hw(name: str) -> HwProfile:
    return HwProfile.from_yaml(HW_DIR / f"{name}.yaml")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The runtime's tiny matmuls run fastest on one thread (many times faster on a busy machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A tiny student, 50 % pruned per layer, int8, activation scales calibrated; exported with the
    NPU-decodable encodings (dense / bitmap, cost.py's formats) and loaded back as the runtime."""
    from edgeasr.export import read_container
    from edgeasr.export.student import export_student
    from edgeasr.runtime import load_student

    model, gen = quantized_tiny_student()
    meta = {"model_cfg": CFG, "compression": {"bits": 8, "sparsity": 0.5, "activation_quant": activation_spec(model).to_dict()}}
    path = tmp_path_factory.mktemp("npu") / "student.edgeasr"
    with float_view(model) as plain:
        export_student(plain, meta, [f"t{i}" for i in range(48)], path, encoding=("dense", "bitmap"))
    container = read_container(path)
    rt = load_student(path, container)
    spec = ModelSpec.from_container(container)
    feats = torch.randn(403, 80, generator=gen) * 3 + 10  # 4.03 s
    trace = stream_utterance(rt, spec, feats, CHUNK)
    return {"container": container, "rt": rt, "spec": spec, "feats": feats, "trace": trace}


# --------------------------------------------------------------------------- the acceptance figures


def test_sparse_int8_is_at_least_1_8x_dense_int8_on_a_compute_bound_profile(student):
    spec, trace = student["spec"], student["trace"]
    prof = hw("compute_bound")
    assert abs(spec.sparsity - 0.5) < 0.01
    res = {v: emulate(trace, spec, prof, v) for v in VARIANTS}
    speedup = res["dense_int8"].latency_s / res["sparse_int8"].latency_s
    assert speedup >= 1.8
    assert speedup == pytest.approx(2.0, rel=1e-3)  # every weight MAC is skippable, nothing else binds
    assert all(c.bound == "compute" for c in res["sparse_int8"].report.layers if c.macs > 0)
    # fp32 runs the same dense MACs at a quarter of the int8 rate (cost.macs_per_s)
    assert res["fp32"].latency_s / res["dense_int8"].latency_s == pytest.approx(4.0, rel=1e-3)
    # the runtime's executed MACs are those of the non-zero weights
    rep = res["sparse_int8"].report
    assert rep.macs_executed / rep.macs == pytest.approx(0.5, abs=0.01)


def test_memory_bound_time_ratio_equals_the_compressed_weight_bytes_ratio(student):
    spec, trace = student["spec"], student["trace"]
    prof = hw("memory_bound")
    dense, sparse = (emulate(trace, spec, prof, v) for v in ("dense_int8", "sparse_int8"))
    for d, s in zip(dense.report.layers, sparse.report.layers):
        assert d.name == s.name and d.bound == s.bound == "memory" and d.memory_level == s.memory_level == "flash"
        if d.kind != "embedding":  # an embedding reads only the rows it gathers (rounded up to bytes)
            assert s.time_s / d.time_s == pytest.approx(spec.layers[d.name].bytes["sparse_int8"]
                                                        / spec.layers[d.name].bytes["dense_int8"], rel=1e-12)
    assert sparse.latency_s / dense.latency_s == pytest.approx(sparse.report.bytes_moved / dense.report.bytes_moved,
                                                               rel=1e-12)
    ratio = spec.stored_bytes("sparse_int8") / spec.stored_bytes("dense_int8")
    assert 0.55 < ratio < 0.75  # 50 % sparse int8: ~5 bits per weight + scales and biases (NOTES §10)
    assert sparse.latency_s / dense.latency_s == pytest.approx(ratio, rel=0.02)


def _random_profile(rng: random.Random) -> HwProfile:
    return HwProfile(
        name="random", macs_per_cycle=rng.choice([1, 8, 32, 256, 512, 2048]), clock_hz=10 ** rng.uniform(5, 9.5),
        zero_skipping=rng.random() < 0.5, sram_bytes=rng.choice([0, 1000, 30_000, 100_000, 10**9]),
        bandwidth_bytes_per_s={"sram": 10 ** rng.uniform(6, 12), "flash": 10 ** rng.uniform(5, 11)})


def _bound_ok(c, prof: HwProfile, bits: int) -> None:
    """Independent of cost.py: compute and memory bounds from the profile's own numbers."""
    peak = prof.macs_per_cycle * prof.clock_hz * 8 / max(bits, 8)
    compute = c.macs_executed / peak
    memory = c.bytes_moved / prof.bandwidth_bytes_per_s[c.memory_level]
    bound = max(compute, memory)
    assert c.time_s >= bound * (1 - 1e-12), (c.name, c.time_s, compute, memory)
    assert c.time_s <= bound * (1 + 1e-12)  # and the roofline itself: not slower either


def test_no_layer_is_ever_faster_than_its_roofline_bound_random_layers():
    rng = random.Random(0)
    for _ in range(300):
        prof = _random_profile(rng)
        bits = rng.choice([4, 8, 16, 32])
        layers = []
        for i in range(rng.randint(1, 12)):
            macs = rng.choice([0, rng.randint(1, 10**9)])
            wb = rng.randint(0, 10**6)
            passes = rng.randint(1, 500)
            layers.append(LayerWork(name=f"l{i}", kind="linear", calls=passes, macs=macs,
                                    macs_executed=int(macs * rng.random()) if prof.zero_skipping else macs,
                                    weights=wb, nonzero=wb // 2, weight_bytes=wb, passes=passes,
                                    bytes_moved=wb * passes))
        placement = rng.choice(PLACEMENTS)
        rep = roofline(layers, prof, bits, placement=placement)
        for c in rep.layers:
            _bound_ok(c, prof, bits)
        assert rep.total_s == pytest.approx(sum(c.time_s for c in rep.layers), rel=1e-12)
        total = sum(w.weight_bytes for w in layers)
        sram = sum(c.weight_bytes for c in rep.layers if c.memory_level == "sram")
        if placement == "model":
            assert {c.memory_level for c in rep.layers} == {"sram" if total <= prof.sram_bytes else "flash"}
        elif placement == "greedy":
            assert sram <= prof.sram_bytes or total <= prof.sram_bytes


def test_no_layer_is_ever_faster_than_its_roofline_bound_on_the_runtime(student):
    """Random profiles over the real traced work: every layer, whole utterance and each chunk."""
    spec, trace = student["spec"], student["trace"]
    rng = random.Random(1)
    for _ in range(40):
        prof = _random_profile(rng)
        for variant in VARIANTS:
            res = emulate(trace, spec, prof, variant, placement=rng.choice(["greedy", "model"]))
            for c in res.report.layers:
                count = trace.total[c.name]
                skip = variant == "sparse_int8" and prof.zero_skipping
                assert c.macs_executed == (count.executed_macs if skip else count.dense_macs)
                if c.kind != "embedding":
                    assert c.bytes_moved == spec.layers[c.name].bytes[variant] * count.passes
                _bound_ok(c, prof, spec.bits_of(variant))
            # per-chunk rooflines never sum to less than the utterance's (max is subadditive)
            assert sum(res.chunk_s) >= res.latency_s * (1 - 1e-12)
            assert res.eos_latency_s >= res.chunk_s[-1] - 1e-12  # (a difference of times ~ the audio length)
            assert 0 < res.utilization <= 1 + 1e-12


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("profile", ["edge_npu", "memory_bound", "compute_bound", "tight_sram"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_emulator_and_analytical_cost_model_agree_on_the_same_work(student, variant, profile):
    """transducer_latency (forward hooks on the PyTorch model of the same weights) and the emulator
    (the integer runtime's counts, driven with the same call pattern) give the same per-layer numbers."""
    spec, rt = student["spec"], student["rt"]
    if profile == "tight_sram":  # greedy placement must pin the same layers in both
        prof = dataclasses.replace(hw("edge_npu"), sram_bytes=spec.stored_bytes(variant) // 3)
    else:
        prof = hw(profile)
    twin = torch_twin(student["container"])
    feats = student["feats"][: used_frames(403, 2)]  # the frames the streaming encoder consumes
    emulated, analytic, diff = calibrate(rt, spec, twin, prof, feats, num_tokens=7, variant=variant)
    assert diff["unmatched_layers"] == 0
    a = {c.name: c for c in analytic.layers}
    assert len(a) == len(emulated.layers) == len(spec.layers)
    for e in emulated.layers:
        c = a[e.name]
        assert (e.kind, e.calls, e.passes, e.memory_level) == (c.kind, c.calls, c.passes, c.memory_level), e.name
        assert (e.macs, e.macs_executed, e.weights, e.nonzero) == (c.macs, c.macs_executed, c.weights, c.nonzero)
        assert (e.weight_bytes, e.bytes_moved) == (c.weight_bytes, c.bytes_moved), e.name
        assert e.time_s == pytest.approx(c.time_s, rel=1e-12, abs=0)
    assert emulated.total_s == pytest.approx(analytic.total_s, rel=1e-12)
    assert max(diff.values()) <= 1e-12  # 0 up to the order of float sums
    if profile == "tight_sram":
        assert {c.memory_level for c in emulated.layers} == {"sram", "flash"}


# --------------------------------------------------------------------------- energy, utilization, streaming


def test_energy_and_utilization(student):
    spec, trace = student["spec"], student["trace"]
    prof = hw("edge_npu")
    res = {v: emulate(trace, spec, prof, v) for v in VARIANTS}
    e = prof.energy_pj
    for v, r in res.items():
        mac = e["mac_fp32"] if v == "fp32" else e["mac_int8"]
        by_hand = sum(c.macs_executed * mac + c.bytes_moved * e["byte"][c.memory_level] for c in r.report.layers)
        assert r.energy_j == pytest.approx(by_hand * 1e-12, rel=1e-12)
        assert 0 < r.utilization <= 1
    assert res["fp32"].energy_j > res["dense_int8"].energy_j > res["sparse_int8"].energy_j > 0
    assert emulate(trace, spec, hw("compute_bound"), "sparse_int8").utilization == pytest.approx(1.0, abs=1e-3)
    assert emulate(trace, spec, hw("memory_bound"), "sparse_int8").utilization < 0.01
    no_energy = dataclasses.replace(prof, energy_pj={})
    assert emulate(trace, spec, no_energy, "sparse_int8").energy_j is None


def test_streaming_trace_decodes_like_offline_and_its_chunks_add_up(student):
    from edgeasr.decoding import greedy_search

    spec, rt, trace, feats = student["spec"], student["rt"], student["trace"], student["feats"]
    enc, lens = rt.encode(feats.unsqueeze(0), torch.tensor([feats.size(0)]))
    assert trace.tokens == greedy_search(rt, enc, lens)[0]
    assert trace.encoder_frames == int(lens[0]) and len(trace.chunks) == math.ceil(403 / CHUNK)
    summed: dict = {}
    for ch in trace.chunks:
        summed = add_counts(summed, ch.counts)
    assert summed == trace.total
    runs = sum(1 for ch in trace.chunks if "encoder.output" in ch.counts)
    assert trace.total["encoder.lstms.0"].passes == trace.total["encoder.norms.0"].passes == runs
    frames, h = trace.encoder_frames, CFG["encoder"]["hidden"]
    assert trace.total["encoder.lstms.0"].dense_macs == frames * (4 * h * h * 2)  # w_ih + w_hh per frame
    assert trace.total["joiner.output"].calls == frames  # greedy, one symbol per frame: one joiner call per frame
    assert trace.total["predictor.embedding"].lookups == 2 * (len(trace.tokens) + 1)
    assert "encoder.input_norm.norm" not in trace.total  # host-side front end


def test_end_of_speech_latency_includes_the_backlog_when_slower_than_real_time(student):
    spec, trace = student["spec"], student["trace"]
    fast = emulate(trace, spec, hw("edge_npu"), "sparse_int8")
    assert fast.rtf < 0.1 and fast.eos_latency_s == pytest.approx(fast.chunk_s[-1], abs=1e-12)
    slow_hw = dataclasses.replace(hw("compute_bound"), macs_per_cycle=1, clock_hz=2e5)
    slow = emulate(trace, spec, slow_hw, "sparse_int8")
    assert slow.rtf > 1  # every chunk takes longer than its audio: work queues up
    first = trace.chunks[0].end_frame * trace.frame_shift_s
    assert slow.eos_latency_s == pytest.approx(first + sum(slow.chunk_s) - trace.duration_s, rel=1e-9)


def test_model_spec_bytes_per_variant(student):
    from edgeasr.export import record_nbytes

    spec, c = student["spec"], student["container"]
    assert set(spec.encodings) <= {"dense", "bitmap"}
    for name, rec in c.tensors.items():
        ls = spec.layers[layer_of_tensor(name)]
        assert name in ls.tensors
    w = c.tensors["encoder.lstms.0.weight_ih_l0"]
    assert record_nbytes(w) < w.values.size  # compressed below one byte per weight
    lstm = spec.layers["encoder.lstms.0"]
    n, rows = lstm.weights, 2 * 4 * 48
    assert lstm.bytes["dense_int8"] == n + 4 * rows + 4 * 2 * 4 * 48  # levels + per-channel scales + 2 biases
    assert lstm.bytes["fp32"] == 4 * (n + 2 * 4 * 48)
    assert spec.stored_bytes("sparse_int8") < spec.stored_bytes("dense_int8") < spec.stored_bytes("fp32") / 3
    assert "encoder.input_norm.norm" in spec.layers and not spec.on_npu("encoder.input_norm.norm")


def test_energy_constants_in_every_profile_are_validated():
    for path in sorted(HW_DIR.glob("*.yaml")):
        prof = HwProfile.from_yaml(path)
        assert prof.energy_pj["mac_int8"] < prof.energy_pj["mac_fp32"]
        assert set(prof.energy_pj["byte"]) >= set(prof.bandwidth_bytes_per_s)
    import yaml

    cfg = yaml.safe_load((HW_DIR / "edge_npu.yaml").read_text())
    with pytest.raises(ValueError, match="mac_int"):
        HwProfile.from_cfg({**cfg, "energy_pj": {"mac_int": 0.2, "mac_fp32": 4.6, "byte": {"sram": 1, "flash": 2}}})
    with pytest.raises(ValueError, match="byte.flash"):
        HwProfile.from_cfg({**cfg, "energy_pj": {"mac_int8": 0.2, "mac_fp32": 4.6, "byte": {"sram": 1}}})


def test_roofline_figure_has_roofs_and_points(student, tmp_path):
    spec, trace = student["spec"], student["trace"]
    prof = hw("edge_npu")
    reports = {v: emulate(trace, spec, prof, v).report for v in VARIANTS}
    fig = roofline_figure(reports, prof)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.collections) == 3  # one scatter per variant
    assert len(ax.lines) == 2 + len(prof.bandwidth_bytes_per_s)  # int8 + fp32 compute roofs, one per level
    fig.savefig(tmp_path / "roof.png")
    assert (tmp_path / "roof.png").stat().st_size > 5000


def test_a_chunk_too_short_for_an_encoder_frame_costs_only_what_ran(student):
    """Chunks that complete no encoder frame run nothing on the encoder (its layers are absent)."""
    spec, rt, feats = student["spec"], student["rt"], student["feats"]
    trace = stream_utterance(rt, spec, feats[:60], 5)  # 5 frames a chunk: most chunks emit nothing
    idle = [ch for ch in trace.chunks if "encoder.output" not in ch.counts]
    assert idle and all(not any(k.startswith("encoder.") for k in ch.counts) for ch in idle)
    res = emulate(trace, spec, hw("edge_npu"), "sparse_int8")
    assert len(res.chunk_s) == len(trace.chunks) and sum(res.chunk_s) >= res.latency_s * (1 - 1e-12)


def test_a_header_without_its_compression_spec_is_refused_not_defaulted(student, tmp_path):
    """No silent 8 bits: the emulator and the loader read the header's spec or say what is missing,
    and the loader checks the spec's target sparsity against the stored levels."""
    from edgeasr.export import ExportFormatError, write_container
    from edgeasr.quantspec import SpecError
    from edgeasr.runtime import load_student

    c = student["container"]
    bare = dataclasses.replace(c, header={k: v for k, v in c.header.items() if k not in ("bits", "activation_quant")})
    with pytest.raises(SpecError, match="the NPU emulator needs a compressed model"):
        ModelSpec.from_container(bare)
    overclaimed = tmp_path / "overclaimed.edgeasr"
    write_container(overclaimed, {**c.header, "sparsity": 0.9}, c.tensors)
    with pytest.raises(ExportFormatError, match=r"overclaimed.edgeasr: the weights are 0\.\d+ sparse.*target is 0.9"):
        load_student(overclaimed)
