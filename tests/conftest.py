"""Shared fixtures: compose the real config (shrunk by experiment=tiny) and run real stages."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def compose(overrides: list[str] | None = None):
    """The real Hydra config from conf/, as a stage would receive it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        return hydra_compose("config", overrides=list(overrides or []))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A scratch repository root: stages write data/, reports/ and mlflow.db here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    """The prepare stage run once on the tiny synthetic corpus; returns its repository root."""
    from edgeasr.stages.prepare import run

    root = tmp_path_factory.mktemp("tiny")
    old = os.getcwd()
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("DVC_ROOT", raising=False)
    os.chdir(root)
    try:
        cfg = compose(["experiment=tiny", "prepare.progress=false"])
        metrics = run(cfg)
    finally:
        os.chdir(old)
        mp.undo()
    return root, cfg, metrics


def copy_project(dst: Path) -> None:
    """The files a clean clone has that the pipeline needs (src is installed editable, copied for DVC deps)."""
    for name in ("conf", "pipelines", "src"):
        shutil.copytree(REPO / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, dst / name)
    (dst / ".dvc").mkdir(exist_ok=True)
    shutil.copy(REPO / ".dvc" / "config", dst / ".dvc" / "config")


def sh(cmd: str, cwd: Path, env: dict[str, str]) -> str:
    """Run a shell command; fail the test with its output's tail unless it succeeds."""
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=True)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr


def stage_env(**extra: str) -> dict[str, str]:
    """The environment of a stage run as its own process: none of this process's MLflow, DVC or
    parent-run variables, this checkout's ``src`` first on ``PYTHONPATH``, ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "EDGEASR_PARENT"))}
    path = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": path, **extra}


def run_progress(db: Path, run_name: str) -> tuple[str, int]:
    """``(status, training steps logged)`` of the run named ``run_name`` in the MLflow sqlite store
    ``db``, read directly (cheap enough to poll while a stage writes); ``("", 0)`` before it exists.
    Counts the steps when the stage logs every one (``trainer.log_every_n_steps=1``)."""
    if not db.is_file():
        return "", 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            status, step = con.execute(
                "SELECT r.status, MAX(m.step) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid LEFT JOIN metrics m "
                "ON m.run_uuid = r.run_uuid AND m.key = 'train/loss' WHERE t.key = 'mlflow.runName' AND t.value = ?",
                (run_name,)).fetchone()
    except sqlite3.OperationalError:  # locked, or the tables not created yet
        return "", 0
    return status or "", 0 if step is None else step + 1  # Lightning logs step k (1-based) as k - 1


def free_port() -> int:
    """A port on 127.0.0.1 free a moment ago; closed again, so a connection to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_http(args: list[str], cwd: Path, env: dict[str, str], ready_s: float = 300
                ) -> Iterator[tuple[str, subprocess.Popen]]:
    """``mlflow <args> --host 127.0.0.1 --port <free> --workers 1`` (``ui`` or ``server``) in its own
    process group, output in ``cwd/mlflow.log``: ``(url, process)`` once ``/health`` answers; the
    group is stopped afterwards. ``ready_s``: a 2-core machine busy with training starts it slowly."""
    port, log_path = free_port(), cwd / "mlflow.log"
    env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", *args, "--host", "127.0.0.1", "--port", str(port),
                                 "--workers", "1"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # own process group: stopped with its workers
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow {args[0]} exited:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow {args[0]} not ready in {ready_s} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian keeps them off PATH), or None."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free port, database ``mlflow`` (trust auth, localhost
    only): yields its SQLAlchemy URI. Skips the test, saying why, where PostgreSQL is missing; as
    root the cluster runs as the ``postgres`` user (initdb refuses root)."""
    import pwd
    import tempfile

    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does)")
    run_as: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="edgeasr-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run PostgreSQL as")
        os.chown(data, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    try:
        subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "mlflow"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w",
                        "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True, timeout=120)
        try:
            subprocess.run([*run_as, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow",
                            "mlflow"], check=True, capture_output=True, timeout=60)
            yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
        finally:
            subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"],
                           capture_output=True, timeout=60)
    finally:
        shutil.rmtree(data, ignore_errors=True)


@dataclass(frozen=True)
class TinyPipeline:
    root: Path  # a git repository with the project's pipeline files; tests may run more in it
    env: dict[str, str]  # the environment the pipeline ran in (this venv first on PATH, no MLflow/DVC vars)
    output: str  # what `dvc exp run` printed
    mlflow_db: Path  # a copy of root/mlflow.db as that first run left it: one parent, one child per stage


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> TinyPipeline:
    """The whole pipeline run once per session by a real `dvc exp run -S experiment=tiny` in a clean
    copy of the project (about 2 minutes on 2 cores)."""
    root = tmp_path_factory.mktemp("tiny_pipeline")
    copy_project(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_URI", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    sh("git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm init", root, env)
    out = sh("dvc exp run -S experiment=tiny -S prepare.progress=false -S trainer.progress=false", root, env)
    db = tmp_path_factory.mktemp("tiny_pipeline_mlflow") / "mlflow.db"
    shutil.copy(root / "mlflow.db", db)
    return TinyPipeline(root, env, out, db)


@pytest.fixture
def student_root(tiny_prepared, tmp_path, monkeypatch):
    """A workspace with the tiny corpus and an untrained tiny student where the distill stage puts it."""
    from edgeasr.data.tokenizer import Tokenizer
    from edgeasr.models import build_transducer
    from edgeasr.models.io import save_model

    root, cfg, _ = tiny_prepared
    shutil.copytree(root / "data" / "prepare", tmp_path / "data" / "prepare")
    vocab = Tokenizer(tmp_path / "data/prepare/tokenizer/bpe.model").vocab_size
    import torch

    torch.manual_seed(0)
    model_cfg = {**cfg.model.student, "vocab_size": vocab}
    save_model(tmp_path / "data/distill/model.pt", build_transducer(model_cfg), model_cfg, meta={"stage": "distill"})
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


# A tiny LSTM student for runtime/emulator tests that need no corpus.
TINY_STUDENT_CFG = {"vocab_size": 48, "joiner_dim": 48, "ctc_weight": 0.0,
                    "encoder": {"type": "lstm", "hidden": 48, "num_layers": 2, "subsampling_channels": 8,
                                "frame_stack": 2},
                    "predictor": {"type": "stateless", "embed_dim": 48, "context_size": 2}}


def random_batch(gen, n=3, t=180):
    """A DataModule-shaped batch of fbank-like random features and random labels."""
    import torch

    x = torch.randn(n, t, 80, generator=gen) * 3 + 10
    lens = torch.tensor([t - 9 * i for i in range(n)])
    return {"features": x, "feature_lens": lens, "tokens": torch.randint(1, 48, (n, 8), generator=gen).tolist()}


def quantized_tiny_student():
    """``TINY_STUDENT_CFG`` 50 % pruned per layer, int8 weights, activation scales calibrated on 3
    random batches, in eval mode; returns ``(model, gen)`` with the generator for further batches."""
    import torch

    from edgeasr.compression import Compression, attach_activation_quant, calibrate, layer_mask
    from edgeasr.models import build_transducer

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = build_transducer(TINY_STUDENT_CFG)
    comp = Compression(model, bits=8)
    comp.set_masks([layer_mask(t.effective(), 0.5) for t in comp.targets])
    comp.materialize()
    attach_activation_quant(model, weight_bits=8)
    calibrate(model, [random_batch(gen) for _ in range(3)])
    return model.eval(), gen


def stage_runs(root: Path, stage: str):
    """The child runs of ``stage`` in ``root/mlflow.db``, newest first (a stage run by hand names its
    parent run after the stage too: only the ``edgeasr.kind=stage`` runs); returns ``(client, runs)``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("edgeasr")
    return client, client.search_runs(
        [exp.experiment_id], f"attributes.run_name = '{stage}' and tags.`edgeasr.kind` = 'stage'")


def sweep_runs(root: Path, stage: str, n_jobs: int):
    """A multirun's MLflow runs in ``root/mlflow.db``: asserts one parent run ``sweep:<stage>`` holding
    ``n_jobs`` child runs named ``stage``; returns ``(client, parent, children)``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("edgeasr").experiment_id])
    parents = [r for r in runs if r.info.run_name == f"sweep:{stage}"]
    jobs = [r for r in runs if r.info.run_name == stage]
    assert len(parents) == 1 and len(jobs) == n_jobs
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parents[0].info.run_id}
    return client, parents[0], jobs
