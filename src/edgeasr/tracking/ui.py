"""What the MLflow UI shows first for an edgeasr experiment: its kind and a saved view of the runs
table with the four metrics every model stage reports.

Both are experiment tags, set when the experiment is created and added to an existing one that
lacks them (MLflow 3.17.2's UI bundle, ``mlflow/server/js/build/static/js``, is the reference):

* ``mlflow.experimentKind = custom_model_development``: the kind the UI's own selector writes
  ("Machine learning"; MLflow's demo sets ``genai_development`` the same way,
  ``mlflow/demo/generators/traces.py``). MLflow 3.17.2 itself chooses the first screen from the
  browser's workflow switch instead (``workflowType``: the URL parameter, else the sidebar's
  GenAI / Model training toggle remembered in the browser, GenAI by default), so
  :data:`RUNS_QUERY` asks for model training in every link edgeasr prints.
* ``mlflow.sharedViewState.<id>``: a saved view (the runs table's "Views" menu, and the link
  ``...?viewStateShareKey=<id>``): ``{name, createdAt, updatedAt, state}`` where ``state`` is the
  JSON of the columns to show, merged by the UI over its defaults.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from mlflow.entities import Experiment
from mlflow.tracking import MlflowClient

from .server import is_http

log = logging.getLogger(__name__)

FOUR_METRICS = ("wer", "sparsity", "size_bytes", "emulated_latency_ms")
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
VIEW_ID = "edgeasr-four-metrics"
VIEW_NAME = "edgeasr: WER, sparsity, size, latency"
TAG_VIEW = f"mlflow.sharedViewState.{VIEW_ID}"
# The runs table's columns are keyed "<type>.`<name>`" (the UI's makeCanonicalSortKey).
VIEW_STATE = {"selectedColumns": [f"metrics.`{key}`" for key in FOUR_METRICS]}
# The query of every runs-table link: model training mode, the saved view.
RUNS_QUERY = f"workflowType=machine_learning&viewStateShareKey={VIEW_ID}"
DEFAULT_UI = "http://127.0.0.1:5000"  # where a plain `mlflow ui` serves


def _view_value(created_ms: int) -> str:
    return json.dumps({"name": VIEW_NAME, "createdAt": created_ms, "updatedAt": int(time.time() * 1000),
                       "state": json.dumps(VIEW_STATE)})


def experiment_tags() -> dict[str, str]:
    """The tags a new edgeasr experiment is created with."""
    return {TAG_EXPERIMENT_KIND: MODEL_TRAINING, TAG_VIEW: _view_value(int(time.time() * 1000))}


def _view_state(value: str | None) -> Any:
    try:
        return json.loads(json.loads(value)["state"])
    except (TypeError, ValueError, KeyError):
        return None


def tag_experiment(client: MlflowClient, exp: Experiment) -> None:
    """Add the kind and the saved view to an existing experiment where missing; a kind someone
    chose is kept, a saved view whose columns differ from :data:`VIEW_STATE` is rewritten."""
    tags = exp.tags or {}
    if TAG_EXPERIMENT_KIND not in tags:
        client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, MODEL_TRAINING)
    if _view_state(tags.get(TAG_VIEW)) != VIEW_STATE:
        client.set_experiment_tag(exp.experiment_id, TAG_VIEW, _view_value(int(time.time() * 1000)))


def runs_url(uri: str, experiment_id: str) -> str:
    """The runs table of the experiment in model training mode with the saved view: on the server
    at ``uri``, or on a local ``mlflow ui`` at its default address."""
    base = uri.rstrip("/") if is_http(uri) else DEFAULT_UI
    return f"{base}/#/experiments/{experiment_id}/runs?{RUNS_QUERY}"
