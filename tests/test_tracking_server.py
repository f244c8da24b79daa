"""A remote tracking server that is down, against real closed ports and real HTTP servers (no mocks):

* the stage fails in seconds, before its body runs, with one line naming the URI;
* with ``tracking.fallback_to_local`` it runs and logs to the local sqlite store, and says so;
* MLflow's own client gives up on a dead server in seconds, not ~4 minutes;
* the probe's verdict on live servers answering 404 (alive) and 503 (a proxy before a dead one).
"""

from __future__ import annotations

import http.server
import logging
import os
import threading
import time

import pytest

from conftest import free_port
from edgeasr.tracking import TrackingServerUnreachable, stage_run, tracking_uri
from edgeasr.tracking.server import HTTP_DEFAULTS, probe

_SCRUB = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "DVC_ROOT",
          "DVC_STAGE", "DVC_EXP_NAME", "EDGEASR_PARENT_RUN_ID")


@pytest.fixture(autouse=True)
def _mlflow_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for name in _SCRUB:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def dead_uri(tmp_path, monkeypatch):
    """A repo in tmp_path whose MLFLOW_TRACKING_URI is a real closed port on this machine."""
    uri = f"http://127.0.0.1:{free_port()}"  # closed: a connection is refused at once
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_dead_server_fails_the_stage_fast_in_one_line(dead_uri, tmp_path):
    ran = False
    t0 = time.monotonic()
    with pytest.raises(TrackingServerUnreachable) as info:
        with stage_run("train", {"tracking": {"experiment": "edgeasr"}}):
            ran = True
    assert time.monotonic() - t0 < 10  # was ~250 s of MLflow retries
    assert not ran
    msg = str(info.value)
    assert "\n" not in msg and dead_uri in msg and "tracking.fallback_to_local=true" in msg
    assert not (tmp_path / "mlflow.db").exists()  # no silent local store
    assert os.environ["MLFLOW_TRACKING_URI"] == dead_uri


def test_dead_server_falls_back_to_local_store_when_set(dead_uri, tmp_path, caplog):
    import mlflow
    from mlflow.tracking import MlflowClient

    local = f"sqlite:///{tmp_path.as_posix()}/mlflow.db"
    cfg = {"tracking": {"fallback_to_local": True}, "train": {"lr": 0.1}}
    with caplog.at_level(logging.WARNING, logger="edgeasr.tracking"):
        with stage_run("train", cfg) as run:
            # the body runs, and everything in it (Lightning's logger, child processes) sees the local store
            assert tracking_uri() == local and run.tracking_uri == local
            assert mlflow.active_run().info.run_id == run.run_id
            run.log_report({"wer": 12.5})
    assert os.environ["MLFLOW_TRACKING_URI"] == dead_uri  # put back afterwards
    assert any(dead_uri in r.getMessage() and "local store" in r.getMessage() for r in caplog.records)

    client = MlflowClient(tracking_uri=local)
    child = client.get_run(run.run_id)
    assert child.info.status == "FINISHED"
    assert child.data.metrics == {"wer": 12.5} and child.data.params["train.lr"] == "0.1"
    assert child.data.tags["edgeasr.tracking_fallback_from"] == dead_uri
    assert client.get_run(run.parent_run_id).data.tags["edgeasr.tracking_fallback_from"] == dead_uri
    assert (tmp_path / "reports" / "train.json").is_file()


def test_mlflow_client_gives_up_on_a_dead_server_in_seconds(dead_uri):
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    for name, value in HTTP_DEFAULTS.items():  # set by importing edgeasr.tracking, unless set before
        assert os.environ[name] == value, f"{name} set outside the tests: this test measures the defaults"
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 4 and MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 30
    t0 = time.monotonic()
    with pytest.raises(MlflowException):
        MlflowClient(tracking_uri=dead_uri).search_experiments()
    assert time.monotonic() - t0 < 40  # MLflow's defaults: 7 retries with backoff 2, ~250 s


class _Status(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, alive", [(200, True), (404, True), (401, True), (503, False)])
def test_probe_of_a_live_http_server(status, alive):
    handler = type("Handler", (_Status,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        reason = probe(f"http://127.0.0.1:{server.server_address[1]}/")
    finally:
        server.shutdown()
        server.server_close()
    assert (reason is None) == alive
    if not alive:
        assert "HTTP 503" in reason


def test_local_and_file_stores_are_not_probed(tmp_path, monkeypatch):
    from edgeasr.tracking.server import reachable_uri

    for uri in (f"sqlite:///{tmp_path}/x.db", f"file://{tmp_path}/mlruns", "databricks"):
        assert reachable_uri(uri, fallback=False) == (uri, None)


def test_a_server_gone_mid_stage_stops_the_logging_not_the_stage(dead_uri, monkeypatch, caplog):
    """The guard every StageRun logs through: a call failing on a dead server (a real closed port)
    is dropped with one error naming the URI, and later calls are not even tried."""
    from mlflow.tracking import MlflowClient

    from edgeasr.tracking.guard import GuardedClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the drill measures the real retries
    client = GuardedClient(MlflowClient(dead_uri), dead_uri)
    assert client.tracking_uri == dead_uri  # attributes pass through
    with caplog.at_level(logging.ERROR, logger="edgeasr.tracking"):
        assert client.set_tag("0" * 32, "k", "v") is None
        t0 = time.monotonic()
        assert client.get_run("0" * 32) is None and client.log_param("0" * 32, "p", 1) is None
    assert time.monotonic() - t0 < 0.5  # not tried
    assert client.dropped == 3 and client.lost.startswith("set_tag failed after ") and "refused" in client.lost
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0] and dead_uri in lines[0]


def test_a_failing_call_to_a_live_server_is_raised(monkeypatch):
    """A server that answers (here 404 to every API call) is no lost server: the error is real."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from edgeasr.tracking.guard import GuardedClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Status,), {"status": 404}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        client = GuardedClient(MlflowClient(url), url)
        with pytest.raises(MlflowException):
            client.set_tag("0" * 32, "k", "v")
    finally:
        server.shutdown()
        server.server_close()
    assert client.lost is None and client.dropped == 0
