"""Reliability drill (issue 15): the disk fills up while the prepare stage writes its features.

The prepare stage (``data=manifests`` on a dozen real wav files) runs into ``ENOSPC``:
injected into lhotse's lilcom storage writer, injected in the middle of writing a manifest, and
for real on a 2-core machine's small tmpfs (root only). Each time the stage must stop with one
line naming the folder or file, "no space left on device", what to free and where to point the
data; no ``cuts_*.jsonl.gz`` may be left truncated or partial (the manifests are written to a
temporary file and renamed); and a rerun once there is room completes.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, LilcomChunkyWriter, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from conftest import compose
from edgeasr.data.disk import DiskFullError
from edgeasr.stages import prepare

pytestmark = pytest.mark.slow

SENTENCES = [
    "turn on the kitchen lights", "call john smith", "play some music", "what is the weather in paris",
    "set a timer for ten minutes", "add milk to my shopping list", "stop the alarm", "turn off the fan",
    "message mary johnson", "play jazz in the living room", "what time is it", "volume up",
]


def _signal(rng, seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    f0 = rng.uniform(100, 220)
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 12))
    x = x * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)) + 0.05 * rng.standard_normal(t.size)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    """recordings_/supervisions_ manifests for a train and a test split of real wav files."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for split, texts in {"train": SENTENCES, "test": SENTENCES[:4]}.items():
        recs, sups = [], []
        for i, text in enumerate(texts):
            wav = root / "wav" / f"{split}{i}.wav"
            wav.parent.mkdir(exist_ok=True)
            sf.write(wav, _signal(rng, 1.5 + 0.1 * i), 16000)
            recs.append(Recording.from_file(wav, recording_id=f"{split}{i}"))
            sups.append(SupervisionSegment(f"{split}{i}", f"{split}{i}", 0, recs[-1].duration, channel=0, text=text))
        RecordingSet.from_recordings(recs).to_file(root / f"recordings_{split}.jsonl.gz")
        SupervisionSet.from_segments(sups).to_file(root / f"supervisions_{split}.jsonl.gz")
    return root


def _cfg(mdir, data_dir, jobs: int = 1):
    return compose(["experiment=tiny", "data=manifests", f"data.manifest_dir={mdir}", "prepare.progress=false",
                    f"prepare.num_jobs={jobs}", "prepare.augment.copies=0", f"paths.data_dir={data_dir}"])


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def assert_one_clear_line(err: DiskFullError, names) -> str:
    msg = str(err)
    assert "\n" not in msg and "no space left on device (ENOSPC)" in msg, msg
    assert str(names) in msg and "paths.data_dir" in msg and "free space" in msg, msg
    return msg


def assert_no_partial_manifest(out, complete: dict[str, int] | None = None) -> None:
    """Every cuts manifest present loads in full (``complete``: the cut counts of a good run)."""
    mdir = out / "manifests"
    assert not list(mdir.glob(".*")), "a temporary manifest was left behind"
    for path in mdir.glob("cuts_*.jsonl.gz"):
        n = len(CutSet.from_file(path).to_eager())  # raises on a truncated gzip or a cut-off JSON line
        if complete is not None:
            assert n == complete[path.name], f"{path.name}: {n} of {complete[path.name]} cuts, looks complete"


def _counts(out) -> dict[str, int]:
    return {p.name: len(CutSet.from_file(p).to_eager()) for p in (out / "manifests").glob("cuts_*.jsonl.gz")}


def test_full_disk_while_writing_features_is_one_clear_line_and_a_rerun_completes(manifests, workdir, monkeypatch):
    real_write, calls = LilcomChunkyWriter.write, []

    def write(self, key, value):  # a few utterances fit, then the disk is full
        calls.append(key)
        if len(calls) > 3:
            raise _enospc()
        return real_write(self, key, value)

    monkeypatch.setattr(LilcomChunkyWriter, "write", write)
    cfg = _cfg(manifests, workdir / "data")
    out = workdir / "data" / "prepare"
    with pytest.raises(DiskFullError) as ei:
        prepare.run(cfg)
    assert_one_clear_line(ei.value, out / "feats" / "train")
    assert ei.value.errno == errno.ENOSPC
    assert_no_partial_manifest(out)
    assert not list((out / "manifests").iterdir())  # features come before any manifest

    monkeypatch.setattr(LilcomChunkyWriter, "write", real_write)  # space freed
    metrics = prepare.run(cfg)
    assert metrics["utterances/train"] == len(SENTENCES) and metrics["utterances/test"] == 4
    cuts = CutSet.from_file(out / "manifests" / "cuts_train.jsonl.gz")
    assert next(iter(cuts)).load_features().shape[1] == 80


class _FailsMidway:
    """A manifest whose serialization hits ENOSPC after two items."""

    def __init__(self, manifest):
        self.manifest = manifest

    def to_dicts(self):
        for i, d in enumerate(self.manifest.to_dicts()):
            if i == 2:
                raise _enospc()
            yield d


def test_full_disk_in_the_middle_of_a_manifest_leaves_none_half_written(manifests, workdir, monkeypatch):
    real = prepare.write_manifest

    def write(manifest, path):  # the last manifest written (cuts_test) fills the disk
        return real(_FailsMidway(manifest) if path.name == "cuts_test.jsonl.gz" else manifest, path)

    monkeypatch.setattr(prepare, "write_manifest", write)
    cfg = _cfg(manifests, workdir / "data")
    out = workdir / "data" / "prepare"
    with pytest.raises(DiskFullError) as ei:
        prepare.run(cfg)
    assert not (out / "manifests" / "cuts_test.jsonl.gz").exists(), "a half-written manifest looks complete"
    assert_one_clear_line(ei.value, out / "manifests" / "cuts_test.jsonl.gz")
    partial = _counts(out)

    monkeypatch.setattr(prepare, "write_manifest", real)
    prepare.run(cfg)
    complete = _counts(out)
    assert set(complete) == {"cuts_train.jsonl.gz", "cuts_test.jsonl.gz"}
    assert partial == {"cuts_train.jsonl.gz": complete["cuts_train.jsonl.gz"]}  # the one written is whole
    assert_no_partial_manifest(out, complete)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 MB tmpfs mounted for the test (root only), unmounted after."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a size-limited tmpfs needs root and mount(8); the injected ENOSPC drills cover the logic")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); "
                    "the injected ENOSPC drills cover the logic")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_real_full_tmpfs_during_features_with_worker_processes(manifests, workdir, small_tmpfs, monkeypatch):
    """The real thing: ENOSPC from the kernel, raised in lhotse's spawned feature workers. A first
    run (one process) measures how full the disk is when features start; a ballast file then
    leaves room for half of the features only; deleting it (freeing space) lets a rerun complete."""
    used_at_features = []
    extractor = prepare.KaldiFbank

    def spy(config):  # built right before the features: note how full the disk is, change nothing
        used_at_features.append(shutil.disk_usage(small_tmpfs).used)
        return extractor(config)

    monkeypatch.setattr(prepare, "KaldiFbank", spy)
    cfg = _cfg(manifests, small_tmpfs / "data")
    out = small_tmpfs / "data" / "prepare"
    prepare.run(cfg)
    complete = _counts(out)
    feats = sum(f.stat().st_size for f in (out / "feats").rglob("*") if f.is_file())
    total = shutil.disk_usage(small_tmpfs).total
    shutil.rmtree(out)  # as the rerun does first: back to an empty stage folder
    ballast = small_tmpfs / "ballast"
    ballast.write_bytes(b"\0" * (total - used_at_features[0] - feats // 2))  # room for half the features

    t = time.perf_counter()
    with pytest.raises(DiskFullError) as ei:
        prepare.run(_cfg(manifests, small_tmpfs / "data", jobs=2))  # the default: 2 feature worker processes
    msg = assert_one_clear_line(ei.value, out)
    assert str(out / "feats") in msg, msg  # it filled up while writing features
    assert_no_partial_manifest(out, complete)
    took = time.perf_counter() - t

    ballast.unlink()  # free space
    prepare.run(cfg)
    assert _counts(out) == complete
    print(f"\nreal tmpfs: {total >> 20} MB, features {feats >> 10} KB, failed after {took:.1f} s: {msg}")
