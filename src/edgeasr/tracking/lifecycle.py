"""The life of a stage's child run: opened under the parent, active for mlflow's fluent API while
the stage runs, closed with the stage's outcome, then the reports rolled up onto the parent and
the parent's description (its MLflow note) rewritten."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import mlflow
from omegaconf import DictConfig

from .fluent import FluentUri
from .locations import repo_root, tracking_uri
from .note import stage_order, update_note
from .parent import Parent, open_parent
from .rollup import rollup
from .run import StageRun
from .server import is_http, reachable_uri
from .tags import (DEFAULT_EXPERIMENT, PARENT_RUN_TAG, TAG_FALLBACK, TAG_INVOCATION, TAG_KIND, TAG_STAGE,
                   default_tags, git_tags)
from .ui import runs_url
from .values import cfg_get

log = logging.getLogger(__name__)


def _child_tags(stage: str, parent: Parent, git: dict[str, str]) -> dict[str, str]:
    tags = {
        TAG_KIND: "stage",
        TAG_STAGE: stage,
        PARENT_RUN_TAG: parent.run_id,
        "mlflow.source.name": f"pipelines/{stage}.py",
        **git,
    }
    if parent.invocation_key:
        tags[TAG_INVOCATION] = parent.invocation_key
    exp_name = os.environ.get("DVC_EXP_NAME")
    if exp_name:
        tags["dvc.exp_name"] = exp_name
    dvc_stage = os.environ.get("DVC_STAGE")
    if dvc_stage:
        tags["dvc.stage"] = dvc_stage
    return tags


@contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the block, then as it was."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _activate(stack: contextlib.ExitStack, run: StageRun) -> None:
    """Make ``run`` the active fluent run; a warning where mlflow refuses."""
    try:
        stack.enter_context(FluentUri(run.tracking_uri))
        mlflow.start_run(run_id=run.run_id, nested=mlflow.active_run() is not None)
    except Exception as err:  # e.g. mlflow.set_experiment() set to another experiment
        log.warning("could not activate the stage run for mlflow's fluent API: %s", err)


def _exit_status(exc: BaseException | None) -> str:
    """The run status for a stage that ended with ``exc`` (None: returned normally)."""
    if exc is None:
        return "FINISHED"
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED"
    if isinstance(exc, SystemExit):  # sys.exit(0) inside a stage is a success
        return "FINISHED" if exc.code in (None, 0) else "FAILED"
    return "FAILED"


def _is_fluent(run_id: str) -> bool:
    top = mlflow.active_run()
    return top is not None and top.info.run_id == run_id


def _close(run: StageRun, parent: Parent, status: str, roll_up: bool) -> None:
    """Terminate the child (through the fluent API if it is the active run), roll the reports up,
    and terminate the parent if this stage owns it. Failures here only warn. If the server was lost
    during the stage, none of this is tried (a run whose logging was cut never looks FINISHED)."""
    client = run.client  # guarded: calls to a server found gone are dropped
    if run.tracking_lost is None:
        try:
            if _is_fluent(run.run_id):
                mlflow.end_run(status)
            else:
                client.set_terminated(run.run_id, status)
        except Exception as err:
            log.warning("could not terminate stage run %s: %s", run.run_id, err)
        try:
            if roll_up:
                rollup(client, parent.run_id, run.root)
            if parent.owned:
                client.set_terminated(parent.run_id, status)
        except Exception as err:
            log.warning("could not roll up onto parent run %s: %s", parent.run_id, err)
    lost = run.tracking_lost
    if not lost:
        return
    if _is_fluent(run.run_id):  # mlflow pops it, then tells the server: one quick try, no retries
        with (_environ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"), _environ("MLFLOW_HTTP_REQUEST_TIMEOUT", "5"),
              contextlib.suppress(Exception)):
            mlflow.end_run("FAILED")
    done = f"its outputs and {run.report_path} are written" if status == "FINISHED" else f"it ended {status}"
    log.error("stage %s ran on without MLflow: tracking server %s lost (%s), %d calls dropped; %s; its "
              "MLflow run %s is incomplete and not marked FINISHED", run.stage, run.tracking_uri, lost,
              client.dropped, done, run.run_id)


def _describe(parent: Parent, run: StageRun) -> None:
    """The parent's note, with this stage's row now that it ended, and where the UI shows it; only
    on a parent edgeasr owns (another's run keeps the description its owner wrote). Failures only
    warn."""
    if not parent.owned:
        return
    try:
        update_note(parent.client, parent.run_id, stage_order(run.root))
    except Exception as err:
        log.warning("could not update the description of parent run %s: %s", parent.run_id, err)
        return
    where = "" if is_http(run.tracking_uri) else " (with mlflow ui)"
    log.info("MLflow runs table%s: %s", where, runs_url(run.tracking_uri, parent.experiment_id))


@contextmanager
def stage_run(
    stage: str,
    cfg: DictConfig | Mapping | None,
    params: Mapping | None = None,
    report_dir: str | os.PathLike | None = None,
) -> Iterator[StageRun]:
    """Open the MLflow child run for ``stage`` under the pipeline's parent run.

    ``report_dir``: where ``<stage>.json`` goes instead of ``reports/`` (a Hydra multirun job
    writes into its own folder; the repository's reports are then not rolled up).

    ``params``: the config sections the stage reads (flattened with '.'-joined keys); None logs
    the whole ``cfg``. The experiment is ``cfg.tracking.experiment`` (default ``edgeasr``).

    An ``http(s)`` tracking URI is probed first (``GET /health``, 5 s): if the server does not
    answer, :class:`~edgeasr.tracking.server.TrackingServerUnreachable` is raised before anything
    runs, or, with ``cfg.tracking.fallback_to_local``, the stage logs to the local sqlite store
    (``MLFLOW_TRACKING_URI`` pointed there for the block; both runs tagged
    ``edgeasr.tracking_fallback_from=<uri>``).
    The child run is also the active fluent run inside the block, so ``mlflow.log_*`` and
    ``mlflow.<flavor>.log_model`` land on it.
    """
    if not stage or not re.fullmatch(r"[\w.@:-]+", stage):
        raise ValueError(f"invalid stage name {stage!r}")
    # A dead server fails the stage here, in seconds, before any work (or, with the setting, the
    # stage logs to the local store instead).
    uri, unreachable = reachable_uri(tracking_uri(), fallback=bool(cfg_get(cfg, "tracking", "fallback_to_local")))
    with contextlib.ExitStack() as stack:
        if unreachable:  # Lightning's MLFlowLogger and child processes read the variable too
            stack.enter_context(_environ("MLFLOW_TRACKING_URI", uri))
        root = repo_root()
        experiment = str(cfg_get(cfg, "tracking", "experiment") or DEFAULT_EXPERIMENT)
        git = git_tags(root)
        parent = open_parent(uri, experiment, stage, git)
        tags = _child_tags(stage, parent, git)
        if unreachable:
            tags[TAG_FALLBACK] = unreachable
            parent.client.set_tag(parent.run_id, TAG_FALLBACK, unreachable)
        child = parent.client.create_run(parent.experiment_id, tags=default_tags(tags), run_name=stage)
        run = StageRun(parent.client, child.info.run_id, parent.run_id, stage, uri=uri,
                       experiment_id=parent.experiment_id, invocation_key=parent.invocation_key, root=root,
                       report_dir=Path(report_dir) if report_dir is not None else None)

        _activate(stack, run)
        exc: BaseException | None = None
        try:
            run.log_params(params if params is not None else (cfg or {}))
            yield run
        except BaseException as err:
            exc = err
            raise
        finally:
            _close(run, parent, _exit_status(exc), roll_up=report_dir is None)
            if run.tracking_lost is None:
                _describe(parent, run)
