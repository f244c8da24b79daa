"""A tracking server that dies while a stage runs: the stage's work goes on without it.

The server is probed before a stage starts (:mod:`.server`). If it dies later, the first MLflow
call that fails (after MLflow's own retries, ~15 s: :data:`.server.HTTP_DEFAULTS`) is judged by a
probe: the server gone, the stage logs one error naming the URI and the failure and carries on,
every later call of its client dropped at once, so the model, the results and
``reports/<stage>.json`` are still written (tests/test_drills_tracking.py). A call that fails while
the server answers is a real error and is raised. Local stores (sqlite, file) are not guarded.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from .server import is_http, probe

log = logging.getLogger(__name__)


class GuardedClient:
    """An ``MlflowClient`` whose calls stop, instead of failing the stage, once its server is gone.

    ``lost``: why the server was given up (None while it answers); ``dropped``: the calls not made.
    """

    def __init__(self, client: Any, uri: str) -> None:
        self._client, self.uri = client, uri
        self.lost: str | None = None
        self.dropped = 0

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_client":  # copy/pickle probes; _client unset while unpickling
            raise AttributeError(name)
        attr = getattr(self._client, name)
        if not callable(attr) or not is_http(self.uri):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.lost is not None:
                self.dropped += 1
                return None
            t0 = time.monotonic()
            try:
                return attr(*args, **kwargs)
            except Exception:
                down = probe(self.uri)
                if down is None:
                    raise  # the server answers: a real error
                self.lost = f"{name} failed after {time.monotonic() - t0:.1f} s; /health: {down}"
                self.dropped += 1
                log.error("MLflow tracking server %s stopped answering (%s); the stage goes on without MLflow "
                          "and still writes its outputs and report", self.uri, self.lost)
                return None

        return call


def guarded(client: Any, uri: str) -> GuardedClient:
    """``client`` behind a guard (itself if it already is one, so nested runs share its verdict)."""
    return client if isinstance(client, GuardedClient) else GuardedClient(client, uri)
