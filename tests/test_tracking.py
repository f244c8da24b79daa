"""Tests for edgeasr.tracking against real MLflow stores (no mocks).

* by-hand stage run on the default sqlite store (report == metrics, nesting, params, tags);
* a REAL ``dvc repro`` of two stage processes -> one parent; two by-hand runs -> two parents;
  a cached stage's report still rolled up onto the next invocation's parent;
* log_report validation; failure statuses; the EDGEASR_PARENT_RUN_ID override;
* (slow) a real ``mlflow server`` over HTTP with proxied artifact upload.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import mlflow_http, postgres_server
from edgeasr import tracking
from edgeasr.tracking import stage_run, tracking_uri
from edgeasr.tracking.processes import is_dvc_cmdline

VENV_BIN = Path(sys.executable).parent
_SCRUB = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "DVC_ROOT",
    "DVC_STAGE",
    "DVC_EXP_NAME",
    "EDGEASR_PARENT_RUN_ID",
)


@pytest.fixture(autouse=True)
def _mlflow_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    for name in _SCRUB:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A tmp repo root: cwd + DVC_ROOT, default tracking URI (sqlite in the repo)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    return tmp_path


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def _git_init(path: Path) -> str:
    def git(*args):
        return subprocess.run(
            ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
            cwd=path, check=True, capture_output=True, text=True,
        ).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "init")
    return git("rev-parse", "HEAD")


def _children(client, parent_run_id: str, experiment_id: str):
    return client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1", **extra)
    return env


# ----------------------------------------------------------------------------- unit pieces


def test_defaults(repo, monkeypatch):
    assert tracking.repo_root() == repo
    assert tracking_uri() == f"sqlite:///{repo}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking_uri() == "http://127.0.0.1:1"
    monkeypatch.delenv("DVC_ROOT")
    sub = repo / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    assert tracking.repo_root() == sub


def test_repo_root_in_queued_experiment_workspace(tmp_path, monkeypatch):
    # measured with DVC 3.67: a queued `dvc exp run` runs stages in
    # $DVC_ROOT/.dvc/tmp/exps/<tmp>/ while DVC_ROOT still names the original repo
    ws = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    (ws / ".dvc").mkdir(parents=True)
    (ws / "sub").mkdir()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(ws / "sub")
    assert tracking.repo_root() == ws  # outputs (reports/) go to the experiment's workspace
    assert tracking.store_root() == tmp_path  # the store stays in the original repo
    assert tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    assert tracking.repo_root() == tmp_path


@pytest.mark.parametrize(
    "cmdline, expected",
    [
        (["dvc", "repro"], True),
        (["/x/.venv/bin/dvc", "exp", "run"], True),
        (["/x/.venv/bin/python3.11", "/x/.venv/bin/dvc", "repro"], True),
        (["python", "-m", "dvc", "repro"], True),
        (["python3", "-u", "-X", "utf8", "-m", "dvc", "exp", "run"], True),
        (["python", "-mdvc", "repro"], True),
        (["C:\\py\\Scripts\\dvc.exe", "repro"], True),
        (["python", "pipelines/train.py"], False),
        (["python", "-m", "pytest", "dvc"], False),
        (["/x/bin/dvc-data", "ls"], False),
        (["sh", "-c", "dvc repro"], False),
        ([], False),
    ],
)
def test_is_dvc_cmdline(cmdline, expected):
    assert is_dvc_cmdline(cmdline) is expected


def test_flatten_params_truncates_and_stringifies():
    flat = tracking.flatten_params(
        {"a": {"b": {"c": 1}, "l": [1, 2], "n": None}, "bad key+": "x" * 7000, "e": {}}
    )
    assert flat["a.b.c"] == "1"
    assert flat["a.l"] == "[1, 2]"
    assert flat["a.n"] == "None"
    assert flat["e"] == "{}"
    assert len(flat["bad key_"]) == 6000 and flat["bad key_"].endswith("[truncated]")


# ----------------------------------------------------------------------------- by hand


def test_stage_by_hand_default_sqlite(repo, monkeypatch):
    import mlflow
    from omegaconf import OmegaConf

    (repo / "params.yaml").write_text("train:\n  lr: 0.001\n")
    commit = _git_init(repo)
    (repo / "reports").mkdir()
    (repo / "reports" / "cached.json").write_text('{"wer": 0.5}\n')  # a cached stage's report
    monkeypatch.setenv("DVC_STAGE", "train")

    cfg = OmegaConf.create(
        {
            "train": {"lr": 1e-3, "layers": [320, 320], "opt": {"name": "adam"}},
            "many": {f"k{i:03d}": i for i in range(230)},  # > 100 params: batched log_params
            "derived": {"lr2": "${train.lr}"},
        }
    )
    metrics = {"wer": 0.123456789, "loss": 2.5, "steps": 100, "rtf": 1e-7}
    with stage_run("train", cfg) as run:
        assert mlflow.active_run().info.run_id == run.run_id  # fluent API lands on the child
        mlflow.log_metric("fluent_metric", 1.0)
        run.log_metrics({"curve": 1.0}, step=1)
        run.log_metrics({"curve": 0.5}, step=2)
        report = run.log_report(metrics)
        (repo / "model.txt").write_text("weights")
        run.log_artifact(repo / "model.txt", "model")
        run.log_dict({"a": 1}, "cfg/a.json")
    assert mlflow.active_run() is None
    assert "MLFLOW_TRACKING_URI" not in os.environ  # nothing global left behind

    # the report and the child metrics carry the same keys and values
    assert report == repo / "reports" / "train.json"
    on_disk = json.loads(report.read_text())
    assert list(on_disk) == sorted(metrics)
    assert on_disk == metrics
    assert report.read_text() == json.dumps(dict(sorted(metrics.items())), indent=2) + "\n"

    client = _client()
    child = client.get_run(run.run_id)
    assert child.info.run_name == "train"
    assert child.info.status == "FINISHED"
    report_metrics = {k: child.data.metrics[k] for k in metrics}
    assert report_metrics == {k: float(v) for k, v in metrics.items()}
    assert child.data.metrics["fluent_metric"] == 1.0
    assert [m.value for m in client.get_metric_history(run.run_id, "curve")] == [1.0, 0.5]

    # nested under a parent
    tags = child.data.tags
    assert tags["mlflow.parentRunId"] == run.parent_run_id
    assert tags["edgeasr.stage"] == "train"
    assert tags["mlflow.source.name"] == "pipelines/train.py"
    assert tags["git.commit"] == commit and tags["git.dirty"] == "false"
    assert tags["dvc.stage"] == "train"
    assert "dvc.exp_name" not in tags

    # params: the whole cfg flattened, interpolations resolved, >100 of them
    params = child.data.params
    assert params["train.lr"] == "0.001"
    assert params["train.layers"] == "[320, 320]"
    assert params["train.opt.name"] == "adam"
    assert params["derived.lr2"] == "0.001"
    assert sum(k.startswith("many.") for k in params) == 230

    # artifacts land under <repo>/mlruns
    assert child.info.artifact_uri.startswith((repo / "mlruns").as_uri())
    arts = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"model", "cfg", "reports"} <= arts
    assert (repo / "mlruns").is_dir()

    # parent: pipeline run, FINISHED, roll-up of all reports, params.yaml as artifact
    parent = client.get_run(run.parent_run_id)
    assert parent.data.tags["edgeasr.kind"] == "pipeline"
    assert parent.info.run_name == "train"  # a stage run by hand names its parent
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["train/wer"] == metrics["wer"]
    assert parent.data.metrics["cached/wer"] == 0.5
    assert "params.yaml" in {a.path for a in client.list_artifacts(run.parent_run_id)}
    assert client.get_experiment(child.info.experiment_id).name == "edgeasr"


def test_params_subset_and_experiment_from_cfg(repo):
    cfg = {"tracking": {"experiment": "custom"}, "train": {"lr": 1}, "other": {"x": 2}}
    with stage_run("distill", cfg, params={"train": cfg["train"]}) as run:
        pass
    client = _client()
    child = client.get_run(run.run_id)
    assert child.data.params == {"train.lr": "1"}
    assert client.get_experiment(child.info.experiment_id).name == "custom"


def test_same_process_stages_share_parent_and_statuses(repo):
    with stage_run("prepare", {}) as first:
        first.log_report({"n": 1})
    with pytest.raises(RuntimeError, match="boom"):
        with stage_run("train_teacher", {}) as second:
            raise RuntimeError("boom")
    client = _client()
    assert second.parent_run_id == first.parent_run_id  # one invocation = this process
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert client.get_run(second.run_id).info.status == "FAILED"
    parent = client.get_run(first.parent_run_id)
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["prepare/n"] == 1.0

    with pytest.raises(SystemExit):
        with stage_run("export", {}) as third:
            sys.exit(0)  # a clean exit is a success
    assert third.parent_run_id == first.parent_run_id
    assert client.get_run(third.run_id).info.status == "FINISHED"
    assert client.get_run(first.parent_run_id).info.status == "FINISHED"  # re-finished


def test_nested_runs_under_the_stage_run(repo):
    """``StageRun.nested`` (distill's baseline): ``<stage>/<name>`` under the stage's run, FINISHED
    or FAILED with its block, logging through the stage's (guarded) client."""
    with stage_run("distill", {}) as run:
        with run.nested("baseline") as base:
            base.log_metrics({"val/wer": 50.0}, step=3)
        with pytest.raises(RuntimeError, match="boom"), run.nested("other") as other:
            raise RuntimeError("boom")
    client = _client()
    assert base.client is run.client and base.stage == "distill.baseline"
    for child, name, status in ((base, "distill/baseline", "FINISHED"), (other, "distill/other", "FAILED")):
        r = client.get_run(child.run_id)
        assert (r.info.run_name, r.info.status, r.data.tags["mlflow.parentRunId"]) == (name, status, run.run_id)
    assert client.get_run(base.run_id).data.metrics == {"val/wer": 50.0}


def test_explicit_parent_env(repo, monkeypatch):
    client = _client()
    exp_id = client.create_experiment("owner", artifact_location=(repo / "mlruns").as_uri())
    owner = client.create_run(exp_id, run_name="sweep")
    monkeypatch.setenv("EDGEASR_PARENT_RUN_ID", owner.info.run_id)
    with stage_run("evaluate", {}) as run:
        run.log_report({"wer": 0.1})
    assert run.parent_run_id == owner.info.run_id
    child = client.get_run(run.run_id)
    assert child.info.experiment_id == exp_id
    parent = client.get_run(owner.info.run_id)
    assert parent.info.status == "RUNNING"  # the owner manages its status
    assert parent.data.metrics["evaluate/wer"] == 0.1


BAD_REPORTS = [
    ({"wer": float("nan")}, "'wer' is not finite"),
    ({"ok": 1.0, "loss": math.inf}, "'loss' is not finite"),
    ({"acc": "0.9"}, "'acc' must be a real number"),
    ({"n": None}, "'n' must be a real number"),
    ({"flag": True}, "'flag' must be a real number"),
    ({"a/../b": 1.0}, "not a valid MLflow metric name"),
]


def test_log_report_rejects_bad_values(repo):
    with stage_run("evaluate", {}) as run:
        for bad, match in BAD_REPORTS:
            with pytest.raises(ValueError, match=match):
                run.log_report(bad)
    assert not (repo / "reports" / "evaluate.json").exists()  # nothing written ...
    assert _client().get_run(run.run_id).data.metrics == {}  # ... nor logged


def test_log_report_accepts_numpy_scalars(repo):
    np = pytest.importorskip("numpy")
    with stage_run("evaluate", {}) as run:
        run.log_report({"a": np.float64(0.25), "b": np.int64(7)})
        run.log_report({"c": 1.5})  # union kept: file == MLflow keys
    assert json.loads((repo / "reports" / "evaluate.json").read_text()) == {
        "a": 0.25, "b": 7, "c": 1.5,
    }
    assert _client().get_run(run.run_id).data.metrics == {"a": 0.25, "b": 7.0, "c": 1.5}


# ----------------------------------------------------------------------------- across processes

STAGE_SCRIPT = """\
import json, sys
from pathlib import Path
from edgeasr.tracking import stage_run

stage = sys.argv[1]
cfg = {"tracking": {"experiment": "pipe"}, stage: {"size": len(stage)}}
with stage_run(stage, cfg, params={stage: cfg[stage]}) as run:
    run.log_report({"score": len(stage) + 0.5})
    ids = {"run_id": run.run_id, "parent": run.parent_run_id, "invocation": run.invocation}
Path("runs").mkdir(exist_ok=True)
Path("runs", f"{stage}-{run.run_id}.json").write_text(json.dumps(ids))
Path(f"out_{stage}.txt").write_text(stage)
"""


def _run_records(root: Path):
    return [json.loads(p.read_text()) for p in sorted((root / "runs").glob("*.json"))]


def test_real_dvc_repro_one_parent_by_hand_two(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    py = sys.executable
    (tmp_path / "stage.py").write_text(STAGE_SCRIPT)
    (tmp_path / "params.yaml").write_text("alpha: 1\n")
    (tmp_path / "dvc.yaml").write_text(
        textwrap.dedent(
            f"""\
            stages:
              alpha:
                cmd: {py} stage.py alpha
                deps: [stage.py]
                outs: [out_alpha.txt]
                metrics: [{{reports/alpha.json: {{cache: false}}}}]
              beta:
                cmd: {py} stage.py beta
                deps: [stage.py, out_alpha.txt]
                outs: [out_beta.txt]
                metrics: [{{reports/beta.json: {{cache: false}}}}]
            """
        )
    )
    env = _clean_env(DVC_SITE_CACHE_DIR=str(tmp_path / ".dvc-site"))
    dvc = [py, "-m", "dvc"]  # "python -m dvc" must count as a dvc ancestor

    def sh(cmd):
        res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        return res

    commit = _git_init(tmp_path)
    sh([*dvc, "init", "--no-scm", "-q"])
    sh([*dvc, "repro"])
    recs = _run_records(tmp_path)
    assert len(recs) == 2
    assert recs[0]["parent"] == recs[1]["parent"]
    assert recs[0]["invocation"].startswith("dvc:")

    client = _client()
    exp = client.get_experiment_by_name("pipe")
    parent = client.get_run(recs[0]["parent"])
    assert parent.data.tags["edgeasr.kind"] == "pipeline"
    assert parent.info.status == "FINISHED"
    assert "repro" in parent.data.tags["mlflow.source.name"]
    assert parent.info.run_name == f"repro@{commit[:7]}"
    kids = _children(client, parent.info.run_id, exp.experiment_id)
    assert sorted(k.info.run_name for k in kids) == ["alpha", "beta"]
    assert parent.data.metrics == {"alpha/score": 5.5, "beta/score": 4.5}
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"params.yaml", "dvc.lock"} <= arts  # dvc.lock: written after alpha, before beta

    # alpha cached: rerun only beta -> new parent, one child, alpha's report still rolled up
    sh([*dvc, "repro", "-f", "-s", "beta"])
    recs2 = [r for r in _run_records(tmp_path) if r not in recs]
    assert len(recs2) == 1
    parent2 = client.get_run(recs2[0]["parent"])
    assert parent2.info.run_id != parent.info.run_id
    assert [k.info.run_name for k in _children(client, parent2.info.run_id,
                                               exp.experiment_id)] == ["beta"]
    assert parent2.data.metrics == {"alpha/score": 5.5, "beta/score": 4.5}

    # two by-hand invocations: two fresh parents
    before = {r["run_id"] for r in _run_records(tmp_path)}
    for _ in range(2):
        sh([py, "stage.py", "beta"])
    hand = [r for r in _run_records(tmp_path) if r["run_id"] not in before]
    assert len(hand) == 2
    assert hand[0]["parent"] != hand[1]["parent"]
    assert all(r["invocation"].startswith("proc:") for r in hand)
    for r in hand:
        assert [k.info.run_id for k in _children(client, r["parent"], exp.experiment_id)] == [
            r["run_id"]
        ]
        assert client.get_run(r["parent"]).info.run_name == "beta"
    pipelines = client.search_runs(
        [exp.experiment_id], filter_string="tags.`edgeasr.kind` = 'pipeline'"
    )
    assert len(pipelines) == 4


FAKE_DVC = """\
#!{python}
# looks like `dvc repro` to the stages: starts them side by side
import subprocess, sys
procs = [subprocess.Popen([sys.executable, "stage.py", f"s{{i}}"]) for i in range(3)]
sys.exit(max(p.wait() for p in procs))
"""


def test_parallel_stages_under_one_dvc_process_share_a_fresh_store(tmp_path, monkeypatch):
    """Stages started at once on a store that does not exist yet: the sqlite schema is migrated
    once and one parent is created (both are under the inter-process lock)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stage.py").write_text(STAGE_SCRIPT)
    fake = tmp_path / "dvc"
    fake.write_text(FAKE_DVC.format(python=sys.executable))
    fake.chmod(0o755)
    res = subprocess.run([str(fake), "repro"], cwd=tmp_path, env=_clean_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    recs = _run_records(tmp_path)
    assert len(recs) == 3
    assert len({r["parent"] for r in recs}) == 1
    client = _client()
    exp = client.get_experiment_by_name("pipe")
    assert len(_children(client, recs[0]["parent"], exp.experiment_id)) == 3
    assert client.get_run(recs[0]["parent"]).data.metrics == {
        "s0/score": 2.5, "s1/score": 2.5, "s2/score": 2.5,
    }


@pytest.mark.slow
def test_real_dvc_queued_experiment(tmp_path, monkeypatch):
    """`dvc exp run --queue` + `--run-all`: stages run in a temp copy of the repo; reports must
    land in that copy (DVC collects them) and runs in the original repo's store."""
    monkeypatch.chdir(tmp_path)
    py = sys.executable
    (tmp_path / "stage.py").write_text(STAGE_SCRIPT)
    (tmp_path / "params.yaml").write_text("alpha: 1\n")
    (tmp_path / ".gitignore").write_text("/mlflow.db\n/mlruns/\n/runs/\n")
    (tmp_path / "dvc.yaml").write_text(
        textwrap.dedent(
            f"""\
            stages:
              alpha:
                cmd: {py} stage.py alpha
                params: [alpha]
                outs: [out_alpha.txt]
                metrics: [{{reports/alpha.json: {{cache: false}}}}]
            """
        )
    )
    # the queue worker starts `dvc` from PATH
    env = _clean_env(DVC_SITE_CACHE_DIR=str(tmp_path / ".dvc-site"),
                     PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")

    def sh(*cmd):
        res = subprocess.run(list(cmd), cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    sh(*git, "init", "-q")
    sh(py, "-m", "dvc", "init", "-q")
    sh(*git, "add", "-A")
    sh(*git, "commit", "-q", "-m", "init")
    sh(py, "-m", "dvc", "exp", "run", "--queue", "-S", "alpha=2", "-n", "queued-exp")
    sh(py, "-m", "dvc", "exp", "run", "--run-all")
    shown = json.loads(sh(py, "-m", "dvc", "exp", "show", "--json"))
    exp_rows = [rev for row in shown for e in (row.get("experiments") or [])
                for rev in e["revs"] if rev["name"] == "queued-exp"]
    assert len(exp_rows) == 1, shown
    metrics = exp_rows[0]["data"]["metrics"]
    # DVC committed the report written in the temp workspace with the experiment
    assert metrics["reports/alpha.json"]["data"] == {"score": 5.5}
    assert not (tmp_path / "reports").exists()  # ... and it did not leak into the main one

    client = _client()  # the original repo's store
    exp = client.get_experiment_by_name("pipe")
    parents = client.search_runs([exp.experiment_id], "tags.`edgeasr.kind` = 'pipeline'")
    assert [p.info.run_name for p in parents] == ["queued-exp"]
    assert parents[0].data.tags["dvc.exp_name"] == "queued-exp"
    assert parents[0].data.metrics == {"alpha/score": 5.5}
    kids = _children(client, parents[0].info.run_id, exp.experiment_id)
    assert [k.info.run_name for k in kids] == ["alpha"]


# ----------------------------------------------------------------------------- real server


@pytest.fixture
def mlflow_server(tmp_path):
    srv = tmp_path / "server"
    srv.mkdir()
    with mlflow_http(["server", "--backend-store-uri", f"sqlite:///{srv}/mlflow.db", "--artifacts-destination",
                      str(srv / "artifacts")], srv, _clean_env(), ready_s=90) as (url, _):
        yield url


@pytest.fixture
def mlflow_server_postgres(tmp_path):
    """The team deployment of the README: `mlflow server` on a PostgreSQL database."""
    srv = tmp_path / "server"
    srv.mkdir()
    with postgres_server() as db, mlflow_http(["server", "--backend-store-uri", db, "--artifacts-destination",
                                               str(srv / "artifacts")], srv, _clean_env(), ready_s=120) as (url, _):
        yield url


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_real_mlflow_server(backend, tmp_path, monkeypatch, request):
    from mlflow.tracking import MlflowClient

    mlflow_server = request.getfixturevalue("mlflow_server" if backend == "sqlite" else "mlflow_server_postgres")

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("DVC_ROOT", str(work))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    (work / "params.yaml").write_text("export:\n  opset: 17\n")
    (work / "model.onnx").write_bytes(b"\x08\x07fake")
    assert tracking_uri() == mlflow_server

    with stage_run("export", {"export": {"opset": 17}}) as run:
        run.log_report({"size_kb": 12.5, "ops": 42})
        run.log_artifact(work / "model.onnx", "model")

    client = MlflowClient(tracking_uri=mlflow_server)
    parent = client.get_run(run.parent_run_id)
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.name == "edgeasr"
    assert not exp.artifact_location.startswith("file:")  # the server chose (proxied)
    kids = _children(client, parent.info.run_id, exp.experiment_id)
    assert [k.info.run_name for k in kids] == ["export"]
    child = kids[0]
    assert child.data.metrics == {"size_kb": 12.5, "ops": 42.0}
    assert child.data.params == {"export.opset": "17"}
    assert parent.data.metrics == {"export/size_kb": 12.5, "export/ops": 42.0}
    assert parent.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(child.info.run_id, "model")] == [
        "model/model.onnx"
    ]
    local = client.download_artifacts(child.info.run_id, "model/model.onnx", str(tmp_path))
    assert Path(local).read_bytes() == b"\x08\x07fake"
    assert (tmp_path / "server" / "artifacts").is_dir()
    assert "params.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.slow
def test_real_prepare_stage_against_mlflow_server(mlflow_server, tmp_path, monkeypatch):
    """The real prepare stage (tiny corpus) logging to a real `mlflow server` over HTTP."""
    from mlflow.tracking import MlflowClient

    from conftest import compose
    from edgeasr.stages.prepare import run as prepare

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    metrics = prepare(compose(["experiment=tiny", "prepare.progress=false"]))

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("edgeasr")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'prepare' and "
                              "tags.`edgeasr.kind` = 'stage'")  # by hand, the parent is named "prepare" too
    assert len(runs) == 1
    child = runs[0]
    assert child.data.tags["mlflow.parentRunId"]
    parent = client.get_run(child.data.tags["mlflow.parentRunId"])
    for key in ("hours/train", "utterances/test", "vocab_words", "oov_rate_percent/test", "filtered/total"):
        assert child.data.metrics[key] == pytest.approx(metrics[key])
        assert parent.data.metrics[f"prepare/{key}"] == pytest.approx(metrics[key])
    assert child.data.params["prepare.tokenizer.vocab_size"] == "64"
    assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"filtered.jsonl", "tokens.txt"}
