"""The stage prologue (edgeasr.stages.prologue.open_stage) against a real MLflow store: folders,
the multirun job folder passed in (no Hydra state read), the declared params logged."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from conftest import compose
from edgeasr.stages.params import logged_params
from edgeasr.stages.prologue import open_stage
from edgeasr.tracking import flatten_params


def test_a_job_folder_takes_the_outputs_and_the_report(workdir):
    cfg = compose(["experiment=tiny"])
    job = workdir / "sweep" / "3"
    with open_stage("compress", cfg, job_dir=job, threads=1) as stage:
        stage.tracker.log_report({"wer": 1.5})
    assert stage.data_dir.as_posix() == "data" and stage.out == job / "data" / "compress"
    assert stage.results.is_dir() and (job / "reports" / "compress.json").is_file()
    assert not (workdir / "reports").exists() and not (workdir / "data").exists()
    run = MlflowClient(f"sqlite:///{workdir}/mlflow.db").get_run(stage.tracker.run_id)
    assert run.data.params == flatten_params(logged_params("compress", cfg))
    assert run.info.status == "FINISHED"


def test_fresh_empties_only_the_named_folder(workdir):
    cfg = compose(["experiment=tiny"])
    kept, stale = workdir / "data" / "reference" / "kept.txt", workdir / "data" / "reference" / "results" / "old.txt"
    stale.parent.mkdir(parents=True)
    kept.write_text("x")
    stale.write_text("x")
    with open_stage("reference", cfg, fresh="results") as stage:
        assert stage.results.is_dir() and not stale.exists() and kept.exists()
    with open_stage("reference", cfg, fresh="out", results=False) as stage:
        assert stage.out.is_dir() and not kept.exists() and not stage.results.exists()
