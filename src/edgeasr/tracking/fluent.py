"""mlflow's fluent API (``mlflow.log_*``, ``mlflow.active_run()``) around a stage run: which run a
process already has active, and pointing the fluent API at the stage's store without losing the
user's ``MLFLOW_TRACKING_URI``."""

from __future__ import annotations

import os
from typing import Any

import mlflow
from mlflow.entities import Run


def active_fluent_run(uri: str) -> Run | None:
    """The fluent run active in this process, if any and in the same store."""
    run = mlflow.active_run()
    if run is None:
        return None
    try:
        if mlflow.get_tracking_uri() != uri:
            return None
    except Exception:
        return None
    return run


class FluentUri:
    """Point mlflow's fluent API at ``uri`` for the stage and put everything back afterwards.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``; mlflow's own
    ``_use_tracking_uri`` restores by *unsetting* it, dropping a user's variable. So the private
    ``_tracking_uri`` and the variable are saved here and restored by hand.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def __enter__(self) -> FluentUri:
        # mlflow's private module, imported here: if a release moves it, only the fluent
        # activation fails (stage_run warns and goes on), not every import of edgeasr.tracking
        from mlflow.tracking._tracking_service import utils

        self._old_private = getattr(utils, "_tracking_uri", None)
        self._old_env = os.environ.get("MLFLOW_TRACKING_URI")
        self._changed = mlflow.get_tracking_uri() != self.uri
        if self._changed:
            mlflow.set_tracking_uri(self.uri)
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._changed:
            return
        mlflow.set_tracking_uri(self._old_private)  # None: back to "not set"
        if self._old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = self._old_env
