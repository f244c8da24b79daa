"""MLflow tracking for pipeline stages: one parent run per pipeline invocation, one child per stage.

Every stage script (``pipelines/<stage>.py``) is its own process, started by ``dvc repro`` /
``dvc exp run`` or by hand. :func:`stage_run` opens the MLflow child run for the stage and
nests it under the run of the *pipeline invocation* it belongs to:

* ``EDGEASR_PARENT_RUN_ID`` set: that run is the parent (its owner manages its status).
* else an MLflow run already active in this process (e.g. a Hydra multirun job wrapped in
  ``mlflow.start_run()``) in the same tracking store: that run is the parent.
* else the invocation is the nearest ancestor process whose command line is a ``dvc`` command
  (``dvc repro``, ``dvc exp run``, ``python -m dvc ...``); with none, it is this process (a stage
  run by hand gets its own fresh parent). The parent is the run tagged
  ``edgeasr.invocation=<key>`` in the experiment, created on first use under a file lock and named
  for the invocation: the DVC experiment's name (``dvc exp run``), ``repro@<short commit>``
  (``dvc repro``), ``sweep:<stage>`` (a Hydra multirun), ``<stage>`` (by hand).

On exit the child is FINISHED (FAILED/KILLED if an exception propagates, which is re-raised),
and every ``reports/*.json`` in the repo (cached stages make no child run but keep their report)
is rolled up onto the parent as ``<stage>/<key>`` metrics, with ``params.yaml`` and ``dvc.lock``
as parent artifacts; the parent's MLflow note is rewritten with every stage's four metrics.
The experiment is tagged for MLflow's model-training view, with a saved view of those metrics.

A remote store (``MLFLOW_TRACKING_URI=http(s)://...``) is probed before the stage's runs are
opened: a server that does not answer within 5 s fails the stage at once with one line naming it,
or, with ``tracking.fallback_to_local: true`` in the config, the stage logs to the local sqlite
store and says so (a warning, and the ``edgeasr.tracking_fallback_from`` tag on its runs).
Importing this package also sets MLflow's HTTP retry count, backoff and request timeout to
seconds instead of minutes (:data:`server.HTTP_DEFAULTS`, only where the variables are unset).
A server that dies while the stage runs stops its logging, not the stage (``guard``).

``MLFLOW_RUN_ID`` is deliberately not used to pass the parent: ``mlflow.start_run`` *reopens*
that run instead of nesting under it.

The modules, one job each: ``locations`` (workspace, store URI), ``processes`` (the invocation
from the process tree), ``parent`` (the parent run, file lock), ``lifecycle`` (:func:`stage_run`),
``run`` (:class:`StageRun`; :class:`QuietRun` for a training process other than rank zero), ``server`` (the remote store's probe, HTTP limits), ``guard`` (a
server lost mid-stage), ``rollup`` (reports onto the parent), ``note`` (the parent's description),
``ui`` (the experiment's kind and saved view, the runs-table link), ``values`` (params and metrics
checked against MLflow's limits, the report file), ``tags``, ``fluent`` (mlflow's fluent API).
"""

from .lifecycle import stage_run
from .locations import repo_root, store_root, tracking_uri
from .parent import current_parent_run_id
from .processes import INVOCATION_ENV, invocation
from .run import QuietRun, StageRun
from .server import TrackingServerUnreachable, set_http_defaults
from .tags import DEFAULT_EXPERIMENT, PARENT_ENV, PARENT_RUN_TAG, TAG_INVOCATION, TAG_KIND, TAG_STAGE
from .values import flatten_params, write_report

set_http_defaults()  # before any MLflow client of this process makes a request

__all__ = [
    "DEFAULT_EXPERIMENT",
    "INVOCATION_ENV",
    "PARENT_ENV",
    "PARENT_RUN_TAG",
    "TAG_INVOCATION",
    "TAG_KIND",
    "TAG_STAGE",
    "QuietRun",
    "StageRun",
    "TrackingServerUnreachable",
    "current_parent_run_id",
    "flatten_params",
    "invocation",
    "repo_root",
    "stage_run",
    "store_root",
    "tracking_uri",
    "write_report",
]
