"""The evaluate stage on the tiny corpus, from an exported student where the export stage puts it."""

from __future__ import annotations

import json
import shutil

import pytest
from lhotse import CutSet

from conftest import compose, stage_runs

from edgeasr.lm import PieceLM, save_lm
from edgeasr.metrics import WerAccumulator

pytestmark = pytest.mark.slow


@pytest.fixture
def export_root(tiny_prepared, tmp_path, monkeypatch):
    """A workspace with the tiny corpus and a 50 %-sparse int8 student at data/export/student.edgeasr
    (untrained: WER means nothing, the work counted is real)."""
    import torch

    from edgeasr.compression import (Compression, activation_spec, attach_activation_quant, calibrate, float_view,
                                     layer_mask)
    from edgeasr.data.tokenizer import Tokenizer
    from edgeasr.export.student import export_student
    from edgeasr.models import build_transducer

    root, cfg, _ = tiny_prepared
    shutil.copytree(root / "data" / "prepare", tmp_path / "data" / "prepare")
    tok = Tokenizer(tmp_path / "data/prepare/tokenizer/bpe.model")
    torch.manual_seed(0)
    from omegaconf import OmegaConf

    model_cfg = {**OmegaConf.to_container(cfg.model.student, resolve=True), "vocab_size": tok.vocab_size}
    model = build_transducer(model_cfg)
    comp = Compression(model, bits=8)
    comp.set_masks([layer_mask(t.effective(), 0.5) for t in comp.targets])
    comp.materialize()
    attach_activation_quant(model, weight_bits=8)
    gen = torch.Generator().manual_seed(0)
    calibrate(model, [{"features": torch.randn(2, 300, 80, generator=gen) * 3 + 10,
                       "feature_lens": torch.tensor([300, 280]), "tokens": [[1, 2, 3], [4, 5]]} for _ in range(2)])
    meta = {"model_cfg": model_cfg,
            "compression": {"bits": 8, "sparsity": 0.5, "activation_quant": activation_spec(model.eval()).to_dict()}}
    tokens = [tok.sp.id_to_piece(i) for i in range(tok.vocab_size)]
    with float_view(model) as plain:
        export_student(plain, meta, tokens, tmp_path / "data/export/student.edgeasr", encoding=("dense", "bitmap"))
    # the cloud's LM the rescoring reads (untrained, as the student: the work is real, the WER is not)
    (tmp_path / "data/train_lm").mkdir(parents=True)
    save_lm(tmp_path / "data/train_lm/lm.pt", PieceLM(tok.vocab_size, embed_dim=16, hidden=16, layers=1))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_tiny_evaluate_reports_wer_latency_speedups_and_calibration(export_root):
    from edgeasr.lattice import read_lattices
    from edgeasr.runtime import load_student
    from edgeasr.stages.evaluate import run

    # no PyTorch model or sherpa-onnx bundles in this workspace: the pipeline test covers that step
    # (nor a PyTorch model to compare lattices with: test_lattice.py does on the tiny pipeline)
    cfg = compose(["experiment=tiny", "trainer.progress=false", "evaluate.sherpa.enabled=false",
                   "evaluate.lattice.compare_pytorch=false", "evaluate.biasing.compare_pytorch=false"])
    metrics = run(cfg)
    report = json.loads((export_root / "reports/evaluate.json").read_text())
    assert report == pytest.approx(metrics)
    for split in cfg.evaluate.eval_splits:
        assert f"wer/{split}" in report
        assert (export_root / f"data/evaluate/results/recogs-{split}.txt").is_file()
    for v in ("fp32", "dense_int8", "sparse_int8"):
        for k in ("latency_ms_median", "latency_ms_p90", "rtf_median", "rtf_p90", "eos_latency_ms_median",
                  "eos_latency_ms_p90", "energy_uj_median", "power_mw", "utilization", "weight_bytes"):
            assert f"{v}/{k}" in report, (v, k)
        assert report[f"{v}/latency_ms_p90"] >= report[f"{v}/latency_ms_median"] > 0
        assert 0 < report[f"{v}/utilization"] <= 1
    assert report["latency_utts"] in (cfg.evaluate.num_latency_utts, cfg.evaluate.num_latency_utts + 1)  # + median
    assert report["streaming_identical_to_offline"] == 1.0
    assert report["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert report["speedup/sparse_vs_dense"] > 1 and report["speedup/sparse_vs_fp32"] > report["speedup/sparse_vs_dense"]
    # the acceptance figures, on the real exported file
    assert report["hw/compute_bound/speedup_sparse_vs_dense"] >= 1.8
    assert report["hw/memory_bound/time_ratio_sparse_vs_dense"] == pytest.approx(
        report["hw/memory_bound/bytes_moved_ratio_sparse_vs_dense"], rel=1e-5)
    for v in ("fp32", "dense_int8", "sparse_int8"):  # dense/bitmap export: all three comparable with cost.py
        assert report[f"calibration/{v}/max_rel_diff"] <= 1e-12
    assert report["emulated_latency_ms"] > 0 and report["analytic/emulated_latency_ms"] > 0

    results = export_root / "data/evaluate/results"
    layers = json.loads((results / "layers.json").read_text())
    assert {"fp32", "dense_int8", "sparse_int8"} <= set(layers["median_utterance"])
    assert any(row["name"] == "encoder.lstms.0" for row in layers["sample_total"]["sparse_int8"]["layers"])
    assert "encoder.lstms.0" in (results / "layers.txt").read_text()
    assert (results / "roofline.png").stat().st_size > 5000
    profiles = json.loads((results / "profiles.json").read_text())
    assert set(profiles) == {"edge_npu", "compute_bound", "memory_bound", "ethos_u65"}

    # N-best lattices: the oracle never above the 1-best and equal to it at N = 1, bytes << the audio's
    assert report["lattice/oracle_wer/n1/test"] == report["lattice/wer_1best/test"]
    assert report["lattice/oracle_wer/n8/test"] <= report["lattice/oracle_wer/n4/test"] <= report["lattice/wer_1best/test"]
    assert report["lattice/paths_per_utt/n1"] == 1 <= report["lattice/paths_per_utt/n4"] <= 4
    assert report["lattice/bytes_per_utt"] == report["lattice/bytes_per_utt/n8"] > 0
    assert report["lattice/pcm_ratio"] >= 20 and "lattice/pytorch/same_up_to_ties" not in report
    lattices = results / "lattices"
    assert len(list((lattices / "draw").glob("*.dot"))) == cfg.evaluate.lattice.draw_utts
    sent = read_lattices(lattices / "test.jsonl.gz", load_student(export_root / "data/export/student.edgeasr").tokens)
    assert len(sent) == report["lattice/utts"] and all(lat.paths() for lat in sent.values())

    # rescoring: tuned on dev, so never worse than the 1-best there; its 1-best is each sent lattice's
    # cheapest path (the beam's best but for near-ties the 2^-7-nat weight grid reorders)
    cheapest = WerAccumulator()
    for cut in sorted(CutSet.from_file(export_root / "data/prepare/manifests/cuts_test.jsonl.gz"), key=lambda c: c.id):
        cheapest.update([cut.supervisions[0].text], [" ".join(sent[cut.id].paths()[0].words)], ids=[cut.id])
    assert report["rescore/wer_1best/test"] == round(cheapest.wer, 4)
    for split in cfg.evaluate.lattice.splits:
        assert report[f"rescore/gain/{split}"] == pytest.approx(
            report[f"rescore/wer_1best/{split}"] - report[f"rescore/wer/{split}"], abs=1e-3)
        assert (results / f"rescore/recogs-{split}.txt").is_file()
    assert report["rescore/wer/dev"] <= report["rescore/wer_1best/dev"]
    # the WER decode is the lattice pass's search (beam 8 both): scored from it, not decoded twice
    assert report["runtime/wer_splits_from_lattices"] == len(cfg.evaluate.eval_splits)
    for split in cfg.evaluate.eval_splits:
        assert report[f"wer/{split}"] == report[f"lattice/wer_1best/{split}"]
    assert report["rescore/lm_params"] > 0 and report["rescore/lm_bytes"] > 0
    grid = (results / "rescore/grid.csv").read_text().splitlines()
    c = cfg.evaluate.rescore
    assert len(grid) == 1 + len(c.lm_weights) * len(c.ilm_weights) * len(c.length_bonuses)

    # the dual end-pointers on the tiny end-pointing splits (an untrained student: the figures are
    # real measurements of a model that hears nothing, so only their consistency is checked here)
    from edgeasr.endpoint import EndpointConfig

    e = cfg.evaluate.endpoint
    rule = EndpointConfig.load(results / "endpoint/rule.json")
    assert report["endpoint/final/complete_ms"] == pytest.approx(1000 * rule.final.complete_s)
    rules = [r for r in (results / "endpoint/tradeoff.csv").read_text().splitlines()[1:]]
    n_rules = sum(c <= i for c in e.tune.complete_s for i in e.tune.incomplete_s) * len(e.tune.thresholds)
    assert len(rules) == n_rules * len(e.splits)
    for split in e.splits:
        n = len(CutSet.from_file(export_root / f"data/prepare/endpoint/cuts_{split}.jsonl.gz"))
        assert report[f"endpoint/utts/{split}"] == n > 0
        events = [json.loads(line) for line in (results / f"endpoint/events-{split}.jsonl").read_text().splitlines()]
        assert len(events) == n and all(0 < ev["speech_end"] for ev in events)
        for kind in ("final", "speculative"):
            assert 0 <= report[f"endpoint/{kind}/early_cut_rate/{split}"] <= 1
            assert report[f"endpoint/{kind}/early_cut_rate/{split}"] + report[f"endpoint/{kind}/missed_rate/{split}"] <= 1
        for k in ("speculative", "final", "stream"):
            assert report[f"endpoint/wer/{k}/{split}"] >= 0
        assert 0 <= report[f"endpoint/reset_rate/{split}"] <= 1

    # shallow-fusion biasing (untrained student: consistency only; the default run measures the effect)
    b = cfg.evaluate.biasing
    tune = (results / "biasing/tune.csv").read_text().splitlines()
    assert len(tune) == 2 + len(b.tune.boosts) * len(b.tune.end_bonuses) * len(b.tune.reserves)
    assert report["biasing/boost"] in b.tune.boosts and report["biasing/end_bonus"] in b.tune.end_bonuses
    assert report["biasing/reserve"] in b.tune.reserves
    for split in b.splits:
        assert report[f"biasing/{split}/none/wer"] == pytest.approx(report[f"wer/{split}"], abs=1e-4)  # same search
        for k in ("wer", "b_wer", "u_wer", "recall"):  # an empty list decodes exactly as no list
            assert report[f"biasing/{split}/empty/{k}"] == report[f"biasing/{split}/none/{k}"]
        rows = [json.loads(line) for line in (results / f"biasing/lists-{split}.jsonl").read_text().splitlines()]
        assert len(rows) == len(CutSet.from_file(export_root / f"data/prepare/manifests/cuts_{split}.jsonl.gz")) > 0
        for r in rows:
            for n in b.distractors:
                assert set(r["entities"]) <= set(r[f"sf{n}"]) and len(r[f"sf{n}"]) <= len(r["entities"]) + n
        assert report[f"biasing/{split}/sf{max(b.distractors)}/graph_states"] > report[f"biasing/{split}/sf0/graph_states"]
    assert not any(k.startswith("biasing/pytorch") for k in report)  # no PyTorch student here (test_pipeline has one)

    client, (run_,) = stage_runs(export_root, "evaluate")
    assert "endpoint_tradeoff.png" in {a.path for a in client.list_artifacts(run_.info.run_id)}
    assert "endpoint/rule.json" in {a.path for a in client.list_artifacts(run_.info.run_id, "endpoint")}
    assert "biasing/summary.csv" in {a.path for a in client.list_artifacts(run_.info.run_id, "biasing")}
    arts = {a.path for a in client.list_artifacts(run_.info.run_id)} | \
        {a.path for a in client.list_artifacts(run_.info.run_id, "results")}
    assert {"roofline.png", "results/layers.json", "results/layers.txt"} <= arts
    drawn = {a.path for a in client.list_artifacts(run_.info.run_id, "lattices")}
    assert len([p for p in drawn if p.endswith(".dot")]) == cfg.evaluate.lattice.draw_utts  # + .png with graphviz
    parent_id = run_.data.tags["mlflow.parentRunId"]  # the pipeline plot is on the parent too, in its note
    assert "pipeline.png" in {a.path for a in client.list_artifacts(run_.info.run_id)}
    assert "pipeline.png" in {a.path for a in client.list_artifacts(parent_id)}
    assert f"get-artifact?path=pipeline.png&run_uuid={parent_id}" in client.get_run(parent_id).data.tags[
        "mlflow.note.content"]
    assert run_.data.metrics["hw/compute_bound/speedup_sparse_vs_dense"] >= 1.8


def test_end_pointing_streams_do_not_depend_on_the_number_of_workers(export_root):
    from edgeasr.data.features import KaldiFbankConfig
    from edgeasr.runtime import load_student
    from edgeasr.stages.evaluate_endpoint import stream_splits

    cfg = compose(["experiment=tiny"])
    path = export_root / "data/export/student.edgeasr"
    manifests = {s: export_root / f"data/prepare/endpoint/cuts_{s}.jsonl.gz" for s in cfg.evaluate.endpoint.splits}
    ec = dict(cfg.evaluate.endpoint)
    args = (manifests, ec, export_root / "data/prepare/endpoint/end_of_query.json", KaldiFbankConfig(), 1.0)
    one = stream_splits(load_student(path), path, *args, workers=1)
    two = stream_splits(load_student(path), path, *args, workers=2)
    assert {s: [(x.id, x.trace.points) for x in v] for s, v in one.items()} == \
        {s: [(x.id, x.trace.points) for x in v] for s, v in two.items()}
    assert all(len(v) == len(CutSet.from_file(manifests[s])) > 0 for s, v in one.items())


def test_biasing_decodes_do_not_depend_on_the_number_of_workers(export_root):
    """Shards in spawned processes give the transcripts of one process, for the stored-feature split
    and the split whose features come from its audio (dev_rare)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from edgeasr.data.features import KaldiFbankConfig
    from edgeasr.stages.evaluate_biasing import Decoder, SplitLists, Weights, _split_source, context_lists

    prep = export_root / "data/prepare"
    path = str(export_root / "data/export/student.edgeasr")
    for split in ("test_rare", "dev_rare"):
        src = _split_source(split, prep)
        assert src.stored == (split == "test_rare")
        sl = SplitLists.from_cuts(CutSet.from_file(src.manifest))
        conds = {"none": (None, Weights(0, 0)), "sf10": (context_lists(sl, 10, 0, split), Weights(3.0, 1.0))}
        results = []
        for workers in (1, 2):
            dec = Decoder(str(prep / "tokenizer/bpe.model"), KaldiFbankConfig(), 4, workers)
            with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
                got = dec.gather(dec.submit(pool if workers > 1 else None, path, False, src, sl.refs, conds))
            results.append({c: v[0] for c, v in got.items()})
        assert results[0] == results[1] and set(results[0]["sf10"]) == set(sl.refs) != set()
