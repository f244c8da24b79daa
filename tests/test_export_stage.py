"""The export stage on the tiny corpus: compress a tiny student, export it, and check the file, its
loader and the integer runtime against the fake-quantized model."""

from __future__ import annotations

import json

import pytest

from conftest import compose

pytestmark = pytest.mark.slow


def test_tiny_export_writes_a_validated_file_the_integer_runtime_decodes(student_root):
    from edgeasr.export import ExportFormatError, read_container, write_container
    from edgeasr.runtime import load_student
    from edgeasr.stages.compress import run as compress
    from edgeasr.stages.export import run as export

    compress(compose(["experiment=tiny", "trainer.progress=false", "compress.baseline=false",
                      "compress.eval_splits=[test]"]))
    metrics = export(compose(["experiment=tiny", "trainer.progress=false", "export.source=compress"]))
    report = json.loads((student_root / "reports/export.json").read_text())
    assert report == pytest.approx(metrics)
    path = student_root / "data/export/student.edgeasr"
    assert report["size_bytes"] == path.stat().st_size
    assert abs(report["sparsity"] - 0.5) < 0.02
    # the integer runtime and the fake-quantized model it came from decode (nearly) alike
    assert report["identical_transcripts/test"] >= 0.8
    assert report["wer_abs_diff_vs_fakequant/test"] <= 5.0
    assert report["logit_max_abs_diff"] < 0.1
    compress_report = json.loads((student_root / "reports/compress.json").read_text())
    for key in ("slot_wer", "carrier_wer"):  # per word class, beside wer (the synthetic corpus has them)
        assert report[key] == report[f"{key}/test"] and key in compress_report
    assert (student_root / "data/export/results/recogs-test.txt").is_file()

    rt = load_student(path)
    assert rt.header["format"] == "edgeasr-student" and len(rt.tokens) == rt.joiner.vocab_size
    # a valid container that is not an exported student is refused by name
    c = read_container(path)
    foreign = student_root / "foreign.edgeasr"
    write_container(foreign, {**c.header, "format": "something-else"}, c.tensors)
    with pytest.raises(ExportFormatError, match="not an exported student"):
        load_student(foreign)
    # and so is one whose tensors do not match its header's model
    broken = student_root / "broken.edgeasr"
    write_container(broken, c.header, {k: v for k, v in c.tensors.items() if "lstms.1" not in k})
    with pytest.raises(ExportFormatError, match="do not match"):
        load_student(broken)
    # the header says how the model decodes (greedy tokens per frame); the runtime and the CLI read it
    want = int(compose(["experiment=tiny"]).export.decoding.max_sym_per_frame)
    assert rt.header["decoding"] == {"max_sym_per_frame": want} and rt.max_sym_per_frame == want > 1
    older = student_root / "older.edgeasr"
    write_container(older, {k: v for k, v in c.header.items() if k != "decoding"}, c.tensors)
    assert load_student(older).max_sym_per_frame == 1  # files from before the field: sherpa's 1
    for bad in ({"max_sym_per_frame": 0}, {"max_sym_per_frame": "2"}, {"max_sym_per_frame": 99}, [2]):
        odd = student_root / "odd.edgeasr"
        write_container(odd, {**c.header, "decoding": bad}, c.tensors)
        with pytest.raises(ExportFormatError, match="max_sym_per_frame must be an integer"):
            load_student(odd)
    assert report["size_budget_bytes"] == 524288 and report["size_bytes"] <= 524288
    # a file over the device's budget fails the stage and names the knobs that shrink it
    with pytest.raises(ValueError, match=r"exceed export.max_size_bytes=1000 .*compress.sparsity"):
        export(compose(["experiment=tiny", "trainer.progress=false", "export.source=compress",
                        "export.max_size_bytes=1000", "export.sherpa.enabled=false"]))
