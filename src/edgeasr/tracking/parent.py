"""The parent run of a pipeline invocation: the run named by ``$EDGEASR_PARENT_RUN_ID``, else the
fluent run active in this process, else the run tagged ``edgeasr.invocation=<key>`` (created on
first use, under a file lock so that stages started side by side share it, and named for the
invocation: :func:`parent_run_name`)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .fluent import active_fluent_run
from .locations import is_local_store, store_root, tracking_uri
from .processes import INVOCATION_ENV, invocation
from .tags import DEFAULT_EXPERIMENT, PARENT_ENV, TAG_INVOCATION, TAG_KIND, default_tags
from .ui import experiment_tags, tag_experiment
from .values import MAX_TAG_VAL_LENGTH, truncate

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, no lock
    fcntl = None


@contextmanager
def file_lock(name: str) -> Iterator[None]:
    """Inter-process lock (POSIX flock) in the temp dir; a no-op where flock is unavailable."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    digest = hashlib.sha1(name.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"edgeasr-tracking-{digest}.lock"
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Parent:
    """The parent run a stage's child run nests under."""

    client: MlflowClient
    run_id: str
    experiment_id: str
    owned: bool  # found or created by invocation key: the stage sets its status on exit
    invocation_key: str | None = None


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = (store_root() / "mlruns").as_uri() if is_local_store(uri) else None
        try:
            return client.create_experiment(name, artifact_location=location, tags=experiment_tags())
        except MlflowException:  # created concurrently by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    tag_experiment(client, exp)  # created before these tags existed, or by someone else
    return exp.experiment_id


def find_parent(client: MlflowClient, experiment_id: str, key: str) -> str | None:
    value = key.replace("\\", "\\\\").replace("'", "\\'")
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_INVOCATION}` = '{value}'",
        order_by=["attributes.start_time ASC"],
        max_results=10,
    )
    # belt and braces: keep only exact matches of the tag value
    runs = [r for r in runs if r.data.tags.get(TAG_INVOCATION) == key]
    return runs[0].info.run_id if runs else None


def parent_run_name(stage: str, command: str | None, git: dict[str, str]) -> str:
    """The name of a new parent run, for what started the invocation: ``sweep:<stage>`` for a Hydra
    multirun (``edgeasr.sweep`` sets :data:`INVOCATION_ENV`), the DVC experiment's name under
    ``dvc exp run``, ``repro@<short commit>`` under another dvc command (``dvc repro``; plain
    ``repro`` outside git), else ``<stage>`` (a stage run by hand)."""
    if os.environ.get(INVOCATION_ENV):
        return f"sweep:{stage}"
    exp_name = os.environ.get("DVC_EXP_NAME")
    if exp_name:
        return exp_name
    if command is not None:
        commit = git.get("git.commit")
        return f"repro@{commit[:7]}" if commit else "repro"
    return stage


def _invocation_parent(client: MlflowClient, experiment_id: str, stage: str,
                       git: dict[str, str], exp_name: str | None) -> tuple[str, str]:
    """``(run id, invocation key)`` of this invocation's parent run, created if missing and
    marked RUNNING again if found."""
    inv_key, command = invocation()
    parent_run_id = find_parent(client, experiment_id, inv_key)
    if parent_run_id is not None:
        client.update_run(parent_run_id, status="RUNNING")
        return parent_run_id, inv_key
    ptags = {
        TAG_KIND: "pipeline",
        TAG_INVOCATION: inv_key,
        "mlflow.source.name": truncate(command or f"pipelines/{stage}.py", MAX_TAG_VAL_LENGTH),
        **git,
    }
    if exp_name:
        ptags["dvc.exp_name"] = exp_name
    parent = client.create_run(experiment_id, tags=default_tags(ptags), run_name=parent_run_name(stage, command, git))
    return parent.info.run_id, inv_key


def open_parent(uri: str, experiment: str, stage: str, git: dict[str, str]) -> Parent:
    """The parent for a child run of ``stage`` in the store at ``uri`` (see the module doc)."""
    explicit = os.environ.get(PARENT_ENV)
    active = None if explicit else active_fluent_run(uri)
    # One lock per store on this machine: a fresh sqlite db is migrated when the first client
    # opens it (concurrent migrations corrupt it), and look-up-or-create of the parent must be
    # atomic for stages started side by side under one invocation.
    with file_lock(f"edgeasr|{uri}"):
        client = MlflowClient(tracking_uri=uri)
        if explicit:
            return Parent(client, explicit, client.get_run(explicit).info.experiment_id, owned=False)
        if active is not None:
            return Parent(client, active.info.run_id, active.info.experiment_id, owned=False)
        experiment_id = get_or_create_experiment(client, experiment, uri)
        run_id, inv_key = _invocation_parent(client, experiment_id, stage, git, os.environ.get("DVC_EXP_NAME"))
        return Parent(client, run_id, experiment_id, owned=True, invocation_key=inv_key)


def current_parent_run_id(experiment: str = DEFAULT_EXPERIMENT) -> str | None:
    """The parent run of this process's invocation (created by the first stage run in it), if any."""
    client = MlflowClient(tracking_uri=tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    return None if exp is None else find_parent(client, exp.experiment_id, invocation()[0])
