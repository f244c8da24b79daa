"""Reliability drill (issue 15): ``kill -9`` during each training stage, then the same command
resumes from ``last.ckpt`` and finishes with the metrics of an uninterrupted run.

The four training stages run as a chain on the tiny corpus: one workspace holds uninterrupted runs
(each stage's inputs are the previous stage's outputs, each computed once, in a background thread);
for each stage a second workspace gets a copy of those inputs, the stage is SIGKILLed two steps
after its first checkpoint, and the same command is run again to completion. Figures: README "Reliability drills:
kill -9 and resume"; ``-s`` prints them.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from conftest import REPO, run_progress, stage_env

pytestmark = pytest.mark.slow

STAGES = ("train_teacher", "distill", "compress", "mwer")
# a stage's trainings, checkpoints/<folder>/ -> results/learning_curve<_suffix>.json, its own first
# (distill: the student; the labels-only baseline trains beside it in a second process)
TRAININGS = {s: {"": ""} for s in STAGES} | {"distill": {"student": "", "baseline": "baseline"}}
# wall-clock measurements: the only report keys allowed to differ between two runs
TIMING = {"train_audio_s_per_s", "pseudo_label_s", "teacher_targets_s"}
# every training step logged, so the MLflow store tells the step a kill landed at
COMMON = ["experiment=tiny", "trainer.progress=false", "trainer.log_every_n_steps=1", "hydra.run.dir=.",
          "hydra.output_subdir=null"]
# Fewer steps than tiny's, for time. teacher, distill, compress: checkpoints at 4 and 8 between
# validations (6, 12); mwer: every checkpoint at a validation step (saved after it). The teacher's
# first (curriculum) epoch ends at step 6, so its rerun resumes mid-epoch and crosses into the next.
DRILL = {s: [f"{s}.max_steps=12", f"{s}.checkpoint_every_n_steps=4", f"{s}.val_every_n_steps=6"]
         for s in ("train_teacher", "distill", "compress")}
DRILL["compress"] += ["compress.baseline=false", "compress.pruning.end_step=8", "compress.pruning.update_every=2",
                      "compress.regularizer.ramp_steps=4"]
DRILL["mwer"] = ["mwer.max_steps=6", "mwer.checkpoint_every_n_steps=3", "mwer.val_every_n_steps=3"]
ORPHAN_WAIT_S = 300
FIGURES: list[dict] = []


def _cmd(stage: str) -> list[str]:
    return [sys.executable, str(REPO / "pipelines" / f"{stage}.py"), *COMMON, *DRILL[stage]]


def run_stage(root: Path, stage: str) -> tuple[dict, str]:
    """Run ``stage`` to completion in ``root``; returns its report and its output."""
    res = subprocess.run(_cmd(stage), cwd=root, env=stage_env(), capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, f"{stage} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return json.loads((root / "reports" / f"{stage}.json").read_text()), res.stdout + res.stderr


def _ckpt_step(path: Path) -> tuple[int, int, int]:
    """``(global_step, epoch, batches of the epoch trained)`` of a checkpoint (written by temp +
    rename, so never half a file); the last from the DataModule's sampler state."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    sampler = next((v for k, v in ck.items() if k.endswith("DataModule")), {}).get("train_sampler", {})
    return int(ck["global_step"]), int(ck["epoch"]), int(sampler.get("consumed", -1))


def steps_logged(root: Path, stage: str) -> int:
    """Training steps the stage's MLflow run has logged (every step is, see COMMON)."""
    return run_progress(root / "mlflow.db", stage)[1]


def _last_ckpts(root: Path, stage: str) -> dict[str, Path]:
    """``last.ckpt`` of each training of ``stage``, the stage's own (the one its run logs) first."""
    return {folder: root / "data" / stage / "checkpoints" / folder / "last.ckpt" for folder in TRAININGS[stage]}


def kill_mid_interval(root: Path, stage: str, past: int = 2, timeout: float = 1800) -> dict:
    """Start ``stage``; once its own training has a ``last.ckpt`` past step 0 and ``past`` more
    steps done, SIGKILL the stage's process. Returns the checkpoints' steps (0: none yet), the
    epoch and its batches done at the own one, the steps done at the kill, how many processes
    the stage had started, and those that outlived it (killed here)."""
    lasts = _last_ckpts(root, stage)
    own = next(iter(lasts.values()))
    log = open(root / f"{stage}.killed.log", "w")
    proc = subprocess.Popen(_cmd(stage), cwd=root, env=stage_env(), stdout=log, stderr=subprocess.STDOUT)
    deadline, ckpt = time.time() + timeout, 0
    try:
        while proc.poll() is None and time.time() < deadline:
            if not ckpt and own.is_file():
                ckpt = _ckpt_step(own)[0]
            if ckpt and steps_logged(root, stage) >= ckpt + past:
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"{stage} ended (rc {proc.returncode}) before it could be killed"
        assert time.time() < deadline, f"{stage}: no checkpoint and {past} more steps within {timeout} s"
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)  # what `kill -9 <pid>` (or the OOM killer) does: this process only
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    ckpts = {f: _ckpt_step(last)[0] if last.is_file() else 0 for f, last in lasts.items()}
    # A helper process must not outlive the stage: it would race the rerun over the same files.
    # distill's baseline watches its parent every second once its code runs; one still importing
    # (minutes on a machine busy with other trainings) gets there first. Alive after that: an orphan.
    t0 = time.monotonic()
    _, alive = psutil.wait_procs(children, timeout=ORPHAN_WAIT_S)
    helpers_s = time.monotonic() - t0
    for p in alive:
        p.kill()
    ckpt_step, epoch, consumed = _ckpt_step(own)
    return {"ckpt_step": ckpt_step, "epoch": epoch, "consumed": consumed, "steps_done": steps_logged(root, stage),
            "ckpts": ckpts, "helpers": len(children), "helpers_s": helpers_s, "orphans": [p.pid for p in alive]}


def _stage_runs(root: Path, stage: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("edgeasr")
    # a stage run by hand has a parent run named after it too (edgeasr.kind=pipeline): not counted
    return [r for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
            if r.info.run_name == stage and r.data.tags.get("edgeasr.kind") != "pipeline"]


def weights_diff(a: Path, b: Path) -> float:
    """Largest absolute difference between two files' weights (a model.pt or a Lightning checkpoint)."""
    sa, sb = (torch.load(p, map_location="cpu", weights_only=False)["state_dict"] for p in (a, b))
    assert sa.keys() == sb.keys()
    return max((float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].numel()), default=0.0)


def _curve(root: Path, stage: str, name: str = "") -> list[dict]:
    """The learning curve without its wall-clock minutes."""
    path = root / "data" / stage / "results" / f"learning_curve{'_' + name if name else ''}.json"
    return [{k: v for k, v in p.items() if k != "minutes"} for p in json.loads(path.read_text())]


def _deterministic(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in TIMING}


def _copy_inputs(clean: Path, dst: Path, stage: str) -> None:
    """The clean chain's data and reports of the stages before ``stage``."""
    earlier = ("prepare", *STAGES[: STAGES.index(stage)])
    for s in earlier:
        shutil.copytree(clean / "data" / s, dst / "data" / s, ignore=shutil.ignore_patterns("checkpoints"))
        if (clean / "reports" / f"{s}.json").is_file():
            (dst / "reports").mkdir(parents=True, exist_ok=True)
            shutil.copy(clean / "reports" / f"{s}.json", dst / "reports" / f"{s}.json")


class CleanChain:
    """The uninterrupted runs, stage after stage in a background thread in one workspace (each
    stage's inputs the previous one's outputs). A test waits only for what it needs, so a stage's
    drill runs beside the next stage's uninterrupted run: on 2 cores, about half the wall time."""

    def __init__(self, root: Path, stages: list[str]):
        self.root, self.reports, self.error = root, {}, None
        self._done = {s: threading.Event() for s in STAGES}
        self._thread = threading.Thread(target=self._run, args=(stages,), name="clean-chain", daemon=True)
        self._thread.start()

    def _run(self, stages: list[str]) -> None:
        try:
            for s in stages:
                self.reports[s] = run_stage(self.root, s)[0]
                self._done[s].set()
        except BaseException as err:  # re-raised in the tests that wait for it
            self.error = err
        finally:
            for done in self._done.values():
                done.set()

    def report(self, stage: str) -> dict:
        self._done[stage].wait()
        if stage not in self.reports:
            raise RuntimeError(f"no uninterrupted {stage} run (an earlier stage failed)") from self.error
        return self.reports[stage]

    def inputs_for(self, stage: str) -> Path:
        """The workspace once every stage before ``stage`` has finished there."""
        for s in STAGES[: STAGES.index(stage)]:
            self.report(s)
        return self.root

    def join(self) -> None:
        self._thread.join()


@pytest.fixture(scope="module")
def clean_chain(tiny_prepared, tmp_path_factory, request):
    root = tmp_path_factory.mktemp("drill_clean")
    shutil.copytree(tiny_prepared[0] / "data" / "prepare", root / "data" / "prepare")
    # as far down the chain as the selected tests go
    wanted = [i.callspec.params["stage"] for i in request.session.items
              if i.module is request.module and hasattr(i, "callspec")]
    chain = CleanChain(root, list(STAGES[: max(STAGES.index(s) for s in wanted) + 1]))
    yield chain
    chain.join()
    if FIGURES:
        print("\nkill -9 drill: stage | steps done at the kill | resumed from (epoch, its batches done) | result")
        for f in FIGURES:
            others = ", ".join(f"{k} from {v}" for k, v in list(f["ckpts"].items())[1:])  # 0: started over
            gone = f"; helpers gone {f['helpers_s']:.1f} s after the kill" if f["helpers"] else ""
            print(f"  {f['stage']} | {f['steps_done']} | {f['ckpt_step']} ({f['epoch']}, {f['consumed']})"
                  f"{' + ' + others if others else ''} | {f['verdict']}{gone}")


@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_during_training_then_rerun_finishes_like_an_uninterrupted_run(stage, clean_chain, tmp_path):
    work = tmp_path / "ws"
    _copy_inputs(clean_chain.inputs_for(stage), work, stage)

    killed = kill_mid_interval(work, stage)
    assert killed["helpers"] or len(TRAININGS[stage]) == 1, f"{stage}: its second training was not running"
    assert not killed["orphans"], f"{stage}: processes {killed['orphans']} outlived the killed stage"
    assert killed["steps_done"] > killed["ckpt_step"] > 0
    # killed before the end of training: no model yet, and never half a file (save_model: temp + rename)
    assert not list((work / "data" / stage).glob("*model.pt*"))

    report, out = run_stage(work, stage)
    clean, expected = clean_chain.root, clean_chain.report(stage)
    # every training resumed from its checkpoint, or started over without one (train_transducer
    # tags the MLflow run it logs to); the killed attempt's runs are never closed (no process is
    # left to): they stay RUNNING
    for i, (folder, step) in enumerate(killed["ckpts"].items()):
        runs = _stage_runs(work, stage if i == 0 else f"{stage}/{folder}")
        assert [r.info.status for r in runs] == ["RUNNING", "FINISHED"]
        assert runs[1].data.tags.get("resumed_from_step" + (f".{folder}" if folder else "")) == (
            str(step) if step else None), f"{stage} {folder}: not resumed from step {step}:\n{out[-3000:]}"

    # tiny WERs sit at 100 %: the weights and the learning curves are the sensitive comparison
    diff = {k: (expected.get(k), report.get(k)) for k in set(expected) | set(report)
            if k not in TIMING and expected.get(k) != report.get(k)}
    dw = {"model.pt": weights_diff(clean / "data" / stage / "model.pt", work / "data" / stage / "model.pt")}
    for folder, curve in TRAININGS[stage].items():
        ckpt = Path("data", stage, "checkpoints", folder, "last.ckpt")
        dw[f"{folder or stage} last.ckpt"] = weights_diff(clean / ckpt, work / ckpt)
        if _curve(clean, stage, curve) != _curve(work, stage, curve):
            diff[f"{folder or stage} learning curve"] = (_curve(clean, stage, curve), _curve(work, stage, curve))
    FIGURES.append({**killed, "stage": stage, "verdict": "metrics, curves, weights equal" if not diff and not any(
        dw.values()) else f"differ: {diff}, max |dw| {dw}"})
    assert not diff, f"{stage}: resumed run differs from the uninterrupted one: {diff}"
    assert not any(dw.values()), f"{stage}: resumed weights differ: {dw}"


def test_resumable_sampler_skips_the_batches_a_checkpoint_counted():
    """A fresh sampler given the state continues the same epoch's order where training stopped."""
    from lhotse import CutSet
    from lhotse.dataset.sampling import DynamicBucketingSampler
    from lhotse.testing.dummies import DummyManifest

    from edgeasr.data.datamodule import ResumableSampler

    cuts = DummyManifest(CutSet, begin_id=0, end_id=60)

    def sampler():
        return ResumableSampler(DynamicBucketingSampler(cuts, max_duration=5.0, shuffle=True, num_buckets=2, seed=3))

    def ids(batches):
        return [[c.id for c in b] for b in batches]

    first = sampler()
    first.set_epoch(1)
    whole = ids(first)
    assert len(whole) > 6 and ids(first) == whole  # a pass is a function of seed and epoch
    first.consumed = 4  # what AsrDataModule counts as training takes batches
    resumed = sampler()
    resumed.load_state_dict(first.state_dict())
    resumed.set_epoch(1)  # Lightning's call for the resumed epoch changes nothing
    assert ids(resumed) == whole[4:]
    resumed.set_epoch(2)
    assert ids(resumed) != whole and sorted(sum(ids(resumed), [])) == sorted(sum(whole, []))


def test_bpe_dropout_segments_each_cut_by_seed_epoch_and_cut(tiny_prepared, monkeypatch):
    """BPE-dropout (train_teacher.bpe_dropout): smaller pieces that still spell the transcript, the
    same for a resumed run (a function of seed, epoch and cut), other pieces in another epoch."""
    from edgeasr.data.datamodule import AsrDataModule, AsrDataset

    root, _, _ = tiny_prepared
    monkeypatch.chdir(root)  # the manifests name their feature files relative to it
    prep = Path("data/prepare")

    def epoch_batches(p: float, epoch: int, n: int = 6):
        dm = AsrDataModule(prep / "manifests", prep / "tokenizer" / "bpe.model", train_splits=["train"],
                           max_duration=10.0, num_buckets=2, seed=7, bpe_dropout=p)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)  # what Lightning calls; the dataset hears it through the sampler
        return dm.tokenizer, [b for b, _ in zip(loader, range(n))]

    tok, plain = epoch_batches(0.0, 1)
    _, dropped = epoch_batches(0.3, 1)
    _, again = epoch_batches(0.3, 1)
    _, other = epoch_batches(0.3, 2)
    pieces = lambda batches: [t for b in batches for t in b["tokens"]]  # noqa: E731
    assert [b["cut_ids"] for b in plain] == [b["cut_ids"] for b in dropped]  # same batches, other pieces
    assert pieces(plain) == [tok.encode(t) for b in plain for t in b["texts"]]
    assert all(tok.decode(ids) == text for ids, text in zip(pieces(dropped), [t for b in dropped for t in b["texts"]]))
    assert sum(map(len, pieces(dropped))) > sum(map(len, pieces(plain)))
    assert pieces(again) == pieces(dropped)
    second = {c: t for b in other for c, t in zip(b["cut_ids"], b["tokens"])}
    first = {c: t for b in dropped for c, t in zip(b["cut_ids"], b["tokens"])}
    assert any(second[c] != first[c] for c in first.keys() & second.keys())
    with pytest.raises(ValueError, match="bpe_dropout"):
        AsrDataset(tok, targets={}, bpe_dropout=0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        AsrDataset(tok, bpe_dropout=1.0)
