"""What a crash, a full disk or a hung worker must not do:

* leave a partial model file, report, manifest or export container under its real name: each is written to a
  temp file that is fsynced before the rename (a rename of unsynced data can survive a power cut
  as an empty or partial file);
* fail a training stage because its ``last.ckpt`` is corrupt: the stage starts fresh with a warning;
* stall the evaluate stage forever in a sherpa-onnx worker: it has a time limit by default.
"""

from __future__ import annotations

import time

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_STUDENT_CFG


@pytest.fixture
def io_log(monkeypatch):
    """Every fsync (by the path of the file synced) and rename, in order."""
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _synced_then_renamed(events: list[tuple], target: Path) -> None:
    renames = [e for e in events if e[0] == "replace" and e[2] == str(target)]
    assert len(renames) == 1, events
    src = renames[0][1]
    assert ("fsync", src) in events[: events.index(renames[0])], f"{src} renamed to {target} unsynced: {events}"
    assert Path(target).is_file() and not Path(src).exists()


def test_model_file_is_synced_before_the_rename(tmp_path, io_log):
    from edgeasr.models import build_transducer
    from edgeasr.models.io import load_model, save_model

    path = tmp_path / "data" / "model.pt"
    save_model(path, build_transducer(TINY_STUDENT_CFG), TINY_STUDENT_CFG, meta={"stage": "t"})
    _synced_then_renamed(io_log, path)
    assert load_model(path)[1]["stage"] == "t"


def test_report_is_synced_before_the_rename(tmp_path, io_log):
    from edgeasr.tracking import write_report

    path = tmp_path / "reports" / "s.json"
    write_report(path, {"wer": 1.5})
    _synced_then_renamed(io_log, path)
    assert path.read_text() == '{\n  "wer": 1.5\n}\n'


def test_container_is_synced_before_the_rename(tmp_path, io_log):
    from edgeasr.export.container import write_container
    from edgeasr.export.reader import read_container

    path = tmp_path / "m.edgeasr"
    write_container(path, {"model": "tiny"}, [], {"tokenizer": b"abc"})
    _synced_then_renamed(io_log, path)
    assert read_container(path).blobs["tokenizer"] == b"abc"


def test_manifest_is_synced_before_the_rename(tmp_path, io_log):
    """prepare's manifests and distill's pseudo-labels (edgeasr.data.disk.write_manifest)."""
    from lhotse import CutSet
    from lhotse.testing.dummies import DummyManifest

    from edgeasr.data.disk import write_manifest

    cuts = DummyManifest(CutSet, begin_id=0, end_id=5)
    path = tmp_path / "distill" / "pseudo_labels.jsonl.gz"
    write_manifest(cuts, path)
    _synced_then_renamed(io_log, path)
    assert list(CutSet.from_file(path).ids) == list(cuts.ids)
    # the same manifest, the same bytes (no time in the gzip header): DVC sees an unchanged output
    first = path.read_bytes()
    time.sleep(1.1)
    write_manifest(cuts, path)
    assert path.read_bytes() == first


def test_a_crash_while_saving_keeps_the_old_model_file(tmp_path, monkeypatch):
    from edgeasr.models import build_transducer
    from edgeasr.models.io import save_model

    path = tmp_path / "model.pt"
    path.write_bytes(b"old")

    def crash(obj, fh, *args, **kwargs):
        fh.write(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="No space"):
        save_model(path, build_transducer(TINY_STUDENT_CFG), TINY_STUDENT_CFG)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temp file left


# ---- a corrupt last.ckpt ------------------------------------------------------------------------
def _checkpoints(tmp_path: Path, fp: str, last: bytes | None) -> Path:
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    (ckpt_dir / "fingerprint.txt").write_text(fp + "\n")
    (ckpt_dir / "best.ckpt").write_bytes(b"from the interrupted run")
    if last is not None:
        (ckpt_dir / "last.ckpt").write_bytes(last)
    return ckpt_dir


def _lightning_like(tmp_path: Path, step: int) -> bytes:
    torch.save({"global_step": step, "state_dict": {"w": torch.ones(1000)}, "optimizer_states": []},
               tmp_path / "real.ckpt")
    return (tmp_path / "real.ckpt").read_bytes()


def test_a_valid_last_checkpoint_is_resumed_with_its_step(tmp_path):
    from edgeasr.stages.common import resumable_checkpoint

    ckpt_dir = _checkpoints(tmp_path, "abc", _lightning_like(tmp_path, 7))
    assert resumable_checkpoint(ckpt_dir, "abc", resume=True) == (str(ckpt_dir / "last.ckpt"), 7)
    assert resumable_checkpoint(ckpt_dir, "other", resume=True) is None  # another config: fresh
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["fingerprint.txt"]


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "not_a_checkpoint"])
def test_a_corrupt_last_checkpoint_starts_fresh_with_a_warning(tmp_path, caplog, kind):
    from edgeasr.stages.common import resumable_checkpoint

    real = _lightning_like(tmp_path, 7)
    last = {"garbage": b"\x00\xffnot a zip at all" * 10, "truncated": real[: len(real) // 2], "empty": b"",
            "not_a_checkpoint": _not_a_checkpoint(tmp_path)}[kind]
    ckpt_dir = _checkpoints(tmp_path, "abc", last)
    with caplog.at_level(logging.WARNING, logger="edgeasr.stages.common"):
        assert resumable_checkpoint(ckpt_dir, "abc", resume=True) is None
    assert any("last.ckpt" in r.getMessage() and "starting fresh" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["fingerprint.txt"]  # no stale best.ckpt either
    assert (ckpt_dir / "fingerprint.txt").read_text() == "abc\n"


def _not_a_checkpoint(tmp_path: Path) -> bytes:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    return (tmp_path / "list.pt").read_bytes()


# ---- the sherpa-onnx worker's time limit --------------------------------------------------------
def _utts(seconds: float = 1.0):
    from edgeasr.deploy.sherpa import SAMPLE_RATE, Utterance

    return [Utterance("u0", np.zeros(int(seconds * SAMPLE_RATE), np.float32))]


FILES = {"encoder": "enc.onnx", "decoder": "dec.onnx", "joiner": "join.onnx", "tokens": "tokens.txt"}


def test_sherpa_worker_timeout_is_an_error_naming_it():
    from edgeasr.deploy.sherpa import sherpa_decode

    # the worker cannot even start python in 10 ms: the limit fires, whatever the (missing) model
    with pytest.raises(TimeoutError, match=r"sherpa-onnx worker timed out after 0\.01 s .*enc\.onnx.*timeout_s"):
        sherpa_decode(FILES, _utts(), streaming=False, timeout=0.01)


def test_sherpa_worker_has_a_time_limit_by_default(monkeypatch):
    from edgeasr.deploy import sherpa

    assert sherpa.default_timeout(_utts(10.0), repeat=3) == pytest.approx(
        sherpa.TIMEOUT_BASE_S + sherpa.TIMEOUT_PER_AUDIO_S * 30.0)
    monkeypatch.setattr(sherpa, "TIMEOUT_BASE_S", 0.01)
    monkeypatch.setattr(sherpa, "TIMEOUT_PER_AUDIO_S", 0.0)
    with pytest.raises(TimeoutError, match="timed out after 0.01 s"):
        sherpa.sherpa_decode(FILES, _utts(), streaming=False)  # no timeout given
