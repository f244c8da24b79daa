"""The reference recognizer (Whisper tiny.en through faster-whisper): scoring, the stage on the tiny
corpus, its skip path without the `reference` extra, and what the evaluate stage makes of it."""

from __future__ import annotations

import json
import math
import shutil
import struct
import sys

import pytest
from lhotse import CutSet

from conftest import compose, stage_runs

from edgeasr.stages.reference import decode_split, pick, recognizer_options


# --------------------------------------------------------------------------- scoring (fast)


def test_whisper_normalizer_scores_numbers_alike():
    pytest.importorskip("whisper_normalizer")
    from edgeasr.metrics import WerAccumulator
    from edgeasr.reference import score_whisper_norm

    acc = score_whisper_norm([("u1", "set a timer for five minutes", "Set a timer for 5 minutes."),
                              ("u2", "five minutes", "5 minutes")])
    assert acc.errors == 0 and acc.wer == 0.0 and acc.words == 8
    ours = WerAccumulator()
    ours.update(["five minutes"], ["5 minutes"])
    assert ours.wer == 50.0  # our own scoring counts the digit as a substitution
    acc = score_whisper_norm([("u1", "turn on the kitchen lights", "Turn off the kitchen lights!")])
    assert (acc.subs, acc.ins, acc.dels, acc.words) == (1, 0, 0, 5)


def test_read_recogs_round_trips_write_recogs(tmp_path):
    from edgeasr.metrics import WerAccumulator
    from edgeasr.reference import read_recogs

    acc = WerAccumulator()
    acc.update(["it's five o'clock", "call mom", "x"], ["its 5 o'clock", "", "x y"], ids=["b", "a", "c"])
    acc.write_recogs(tmp_path / "recogs-test.txt")
    assert read_recogs(tmp_path / "recogs-test.txt") == [
        ("a", "call mom", ""), ("b", "it's five o'clock", "its 5 o'clock"), ("c", "x", "x y")]
    (tmp_path / "bad.txt").write_text("a:\tref=['x']\n")
    with pytest.raises(ValueError, match="lack a ref or a hyp"):
        read_recogs(tmp_path / "bad.txt")


def test_ct2_params_counts_tensors_of_a_model_bin(tmp_path):
    from edgeasr.reference import ct2_params

    def string(s):
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    body = struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", 3)
    for name, dims in (("encoder/w", (4, 3)), ("decoder/b", (5,)), ("decoder/activation", ())):
        data = b"\0" * (2 * max(1, math.prod(dims)))
        body += string(name) + struct.pack("<B", len(dims)) + b"".join(struct.pack("<I", d) for d in dims)
        body += struct.pack("<B", 4) + struct.pack("<I", len(data)) + data
    (tmp_path / "model.bin").write_bytes(body + struct.pack("<I", 0))
    assert ct2_params(tmp_path / "model.bin") == 17  # scalars (attributes) are not weights
    (tmp_path / "other.bin").write_bytes(b"not a model")
    assert ct2_params(tmp_path / "other.bin") is None


# --------------------------------------------------------------------------- reports (fast)


def _write(reports, name, data):
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"{name}.json").write_text(json.dumps(data))


def test_pipeline_report_reference_row_and_ratios(tmp_path, caplog):
    from edgeasr import pipeline_report
    from edgeasr.stages.evaluate import reference_metrics

    reports = tmp_path / "reports"
    _write(reports, "mwer", {"wer/test": 70.0, "size_bytes": 511_000, "sparsity": 0.5, "emulated_latency_ms": 0.3})
    _write(reports, "export", {"wer/test": 69.5, "size_bytes": 489_000, "sparsity": 0.5})
    _write(reports, "evaluate", {"wer": 69.5, "wer_whisper_norm/test": 68.0, "emulated_latency_ms": 0.24})
    with caplog.at_level("INFO"):
        rows = pipeline_report.collect(reports)
    assert [r["stage"] for r in rows] == ["mwer", "export"] and "no reference row" in caplog.text
    assert rows[-1]["wer_test_whisper_norm"] == 68.0 and rows[-1]["size_ratio_reference"] is None

    _write(reports, "reference", {"skipped": 1})
    assert [r["stage"] for r in pipeline_report.collect(reports)] == ["mwer", "export"]
    assert reference_metrics(reports / "reference.json", {"wer": 69.5, "size_bytes": 489_000}) == {
        "reference/skipped": 1}

    _write(reports, "reference", {"skipped": 0, "wer": 75.0, "wer/test": 75.0, "wer_whisper_norm": 60.0,
                                  "wer_whisper_norm/test": 60.0, "size_bytes": 78_000_000, "rtf/test": 1.2})
    rows = pipeline_report.collect(reports)
    assert [r["stage"] for r in rows] == ["mwer", "export", "reference"]
    ref = rows[-1]
    assert (ref["wer_test"], ref["wer_test_whisper_norm"], ref["size_kb"]) == (75.0, 60.0, 78_000.0)
    assert ref["emulated_latency_ms"] is None and ref["size_ratio_reference"] == 1.0
    assert rows[1]["size_ratio_reference"] == pytest.approx(489_000 / 78_000_000, rel=1e-5)
    pipeline_report.write_csv(rows, reports / "pipeline.csv")
    assert (reports / "pipeline.csv").read_text().splitlines()[-1].startswith("reference,reference (Whisper),75.0,")
    pipeline_report.figure(rows)

    m = reference_metrics(reports / "reference.json", {"wer": 69.5, "wer_whisper_norm": 68.0, "size_bytes": 489_000})
    assert m["reference/wer/test"] == 75.0 and m["reference/rtf/test"] == 1.2
    assert m["size_ratio_reference"] == pytest.approx(489_000 / 78_000_000, rel=1e-5)
    assert m["wer_ratio_reference"] == pytest.approx(69.5 / 75.0, rel=1e-5)
    assert m["wer_whisper_norm_ratio_reference"] == pytest.approx(68.0 / 60.0, rel=1e-5)
    assert reference_metrics(reports / "missing.json", {}) == {}


def test_evaluate_rescores_its_recogs_under_whisper_normalizer(tmp_path):
    pytest.importorskip("whisper_normalizer")
    from edgeasr.metrics import WerAccumulator
    from edgeasr.stages.evaluate import whisper_norm_wer

    acc = WerAccumulator()
    acc.update(["set a timer for five minutes", "call mom"], ["set a timer for 5 minutes", "call tom"], ids=["a", "b"])
    acc.write_recogs(tmp_path / "recogs-test.txt")
    m = whisper_norm_wer(["test", "dev"], tmp_path)  # dev has no recogs file: skipped
    assert m == {"wer_whisper_norm/test": 12.5, "wer_whisper_norm": 12.5}
    assert (tmp_path / "whisper_norm/errs-test.txt").read_text().startswith("%WER = 12.50")


# --------------------------------------------------------------------------- the stage


def _run_mlflow(root, name):
    client, runs = stage_runs(root, name)
    assert len(runs) == 1
    return client, runs[0]


def test_skips_with_a_reason_without_the_extra(workdir, monkeypatch):
    from edgeasr.stages.reference import run

    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # `import faster_whisper` raises ImportError
    stale = workdir / "data/reference/results/recogs-test.txt"
    stale.parent.mkdir(parents=True)
    stale.write_text("from an earlier run\n")
    metrics = run(compose(["experiment=tiny", "reference.progress=false"]))  # no corpus needed to skip
    assert metrics == {"skipped": 1}
    assert json.loads((workdir / "reports/reference.json").read_text()) == {"skipped": 1}
    results = workdir / "data/reference/results"
    assert sorted(p.name for p in results.iterdir()) == ["skipped.txt"]
    reason = (results / "skipped.txt").read_text()
    assert "faster-whisper" in reason and "pip install -e '.[reference]'" in reason
    client, r = _run_mlflow(workdir, "reference")
    assert r.info.status == "FINISHED" and "faster-whisper" in r.data.tags["skip_reason"]
    assert r.data.metrics == {"skipped": 1.0}


@pytest.mark.slow
def test_tiny_reference_stage(tiny_prepared, tmp_path, monkeypatch):
    pytest.importorskip("faster_whisper")
    from edgeasr.stages.reference import run

    root, _, _ = tiny_prepared
    shutil.copytree(root / "data" / "prepare", tmp_path / "data" / "prepare")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    # a few utterances of two splits (Whisper costs ~1 CPU-s per utterance); test_pipeline runs the default
    cfg = compose(["experiment=tiny", "reference.progress=false", "reference.splits=[test,dev,missing]",
                   "reference.max_utts=4"])
    metrics = run(cfg)
    report = json.loads((tmp_path / "reports/reference.json").read_text())
    assert report == pytest.approx(metrics)
    assert report["skipped"] == 0 and report["wer"] == report["wer/test"]
    for split in ("test", "dev"):
        for key in ("wer", "wer_whisper_norm", "rtf", "cpu_rtf"):
            assert math.isfinite(report[f"{key}/{split}"]) and report[f"{key}/{split}"] >= 0, (key, split)
        assert report[f"utts/{split}"] == 4 and report[f"rtf/{split}"] > 0
        results = tmp_path / "data/reference/results"
        for f in (f"recogs-{split}.txt", f"errs-{split}.txt", f"whisper_norm/recogs-{split}.txt",
                  f"whisper_norm/errs-{split}.txt", f"transcripts-{split}.jsonl"):
            assert (results / f).is_file(), f
        assert len((results / f"recogs-{split}.txt").read_text().splitlines()) == 8  # ref + hyp per utterance
    assert "wer/missing" not in report
    assert report["elapsed_s/test"] > 0

    # two worker processes decode fixed shards with seeded models: a rerun gives the same text
    cuts = pick(list(CutSet.from_file("data/prepare/manifests/cuts_test.jsonl.gz")), 4)
    rows, _ = decode_split(recognizer_options(cfg), int(cfg.seed), cuts, 2, False, "rerun")
    first = [json.loads(line) for line in (tmp_path / "data/reference/results/transcripts-test.jsonl").open()]
    assert [r["id"] for r in rows] == [r["id"] for r in first] == [c.id for c in cuts]
    assert [r["text"] for r in rows] == [r["text"] for r in first]
    # a worker that cannot read its audio fails the split with the utterance count, not a hang
    broken = cuts[0].with_recording_path_prefix("missing-dir")
    with pytest.raises(RuntimeError, match=r"worker failed after \d+/2 utterances: AudioLoadingError"):
        decode_split(recognizer_options(cfg), int(cfg.seed), [cuts[1], broken], 2, False, "broken")
    # Whisper tiny.en is far better than chance on eSpeak speech (NOTES §11: 75 % on the default test split)
    assert report["wer_whisper_norm/test"] < 100
    assert report["size_bytes"] > 70e6 and 37e6 < report["params"] < 40e6
    model = json.loads((results / "model.json").read_text())
    assert model["compute_type"] == "int8" and model["versions"]["faster-whisper"].startswith("1.2")

    client, r = _run_mlflow(tmp_path, "reference")
    assert r.info.status == "FINISHED" and r.data.metrics["wer/test"] == pytest.approx(report["wer/test"])
    assert r.data.params["reference.model"] == "bundled" and "tiny.en" in r.data.tags["reference.model"]
    arts = {a.path for a in client.list_artifacts(r.info.run_id, "results")}
    assert {"results/recogs-test.txt", "results/model.json"} <= arts
