""":class:`StageRun`: what a stage logs through (report, curves, params, artifacts, tags)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from .guard import GuardedClient, guarded
from .locations import repo_root
from .tags import PARENT_RUN_TAG, TAG_KIND, TAG_STAGE, default_tags
from .values import (
    check_curve_value,
    check_metric_name,
    check_metric_value,
    flatten_params,
    log_params,
    log_tags,
    metric_batches,
    to_plain,
    write_report,
)


class StageRun:
    """Handle on the MLflow child run of one stage (see :func:`edgeasr.tracking.stage_run`)."""

    def __init__(
        self,
        client: MlflowClient | GuardedClient,
        run_id: str,
        parent_run_id: str,
        stage: str,
        *,
        uri: str,
        experiment_id: str,
        invocation_key: str | None,
        root: Path | None = None,
        report_dir: Path | None = None,
    ) -> None:
        # a server that dies mid-stage stops the logging, not the stage (tracking.guard)
        self.client = guarded(client, uri)
        self.run_id = run_id
        self.parent_run_id = parent_run_id
        self.stage = stage
        self.tracking_uri = uri
        self.experiment_id = experiment_id
        self.invocation = invocation_key
        self.root = root if root is not None else repo_root()  # fixed: stage code may chdir
        self.report_dir = Path(report_dir) if report_dir is not None else self.root / "reports"
        self._report: dict[str, int | float] = {}

    @property
    def tracking_lost(self) -> str | None:
        """Why the tracking server was given up during the stage; None while it answers."""
        return self.client.lost

    @property
    def report_path(self) -> Path:
        return self.report_dir / f"{self.stage}.json"

    def log_report(self, metrics: Mapping[str, float]) -> Path:
        """Write ``reports/<stage>.json`` and log the same keys/values as child-run metrics.

        Keys from earlier calls in this run are kept (the file always holds what MLflow holds).
        Raises ValueError naming the key for a non-numeric, non-finite or invalid entry; nothing
        is written or logged then.
        """
        clean = {check_metric_name(key): check_metric_value(key, value) for key, value in metrics.items()}
        self._report.update(clean)
        path = write_report(self.report_path, self._report)
        for batch in metric_batches(clean):
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)
        with contextlib.suppress(Exception):
            self.client.log_artifact(self.run_id, str(path), "reports")
        return path

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Curves over training (NaN/inf are passed through as MLflow accepts them)."""
        clean = {check_metric_name(key): check_curve_value(key, value) for key, value in metrics.items()}
        for batch in metric_batches(clean, step or 0):
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def log_params(self, params: Mapping[str, Any]) -> None:
        log_params(self.client, self.run_id, flatten_params(params))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        p = Path(path)
        if p.is_dir():
            self.client.log_artifacts(self.run_id, str(p), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(p), artifact_path)

    def log_dict(self, d: Mapping[str, Any], name: str) -> None:
        self.client.log_dict(self.run_id, to_plain(d), name)

    def log_figure(self, fig: Any, name: str, on_parent: bool = False) -> None:
        """``fig`` as artifact ``name``; ``on_parent``: on the pipeline's parent run too."""
        for run_id in (self.run_id, self.parent_run_id) if on_parent else (self.run_id,):
            self.client.log_figure(run_id, fig, name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        log_tags(self.client, self.run_id, tags)

    @contextmanager
    def nested(self, name: str) -> Iterator[StageRun]:
        """A run nested under this stage's run (``<stage>/<name>``), e.g. a baseline trained inside
        the stage, so the MLflow UI shows its curves apart from the main model's. Use its
        ``log_metrics``/``log_artifact``; the stage's report stays on the stage run."""
        tags = {TAG_KIND: "stage_part", TAG_STAGE: self.stage, PARENT_RUN_TAG: self.run_id,
                "mlflow.source.name": f"pipelines/{self.stage}.py"}
        child = self.client.create_run(self.experiment_id, tags=default_tags(tags), run_name=f"{self.stage}/{name}")
        run_id = child.info.run_id if child is not None else ""  # None: the server is gone (tracking.guard)
        run = StageRun(self.client, run_id, self.run_id, f"{self.stage}.{name}", uri=self.tracking_uri,
                       experiment_id=self.experiment_id, invocation_key=self.invocation, root=self.root)
        status = "FAILED"
        try:
            yield run
            status = "FINISHED"
        finally:
            self.client.set_terminated(run.run_id, status)

    def __repr__(self) -> str:
        return f"StageRun(stage={self.stage!r}, run_id={self.run_id!r}, parent={self.parent_run_id!r})"


class QuietRun:
    """Stands in for :class:`StageRun` in a training process other than rank zero: the stage's run
    is rank zero's; this one logs nothing (Lightning logs from rank zero only, too)."""

    run_id = parent_run_id = tracking_uri = experiment_id = ""
    client = invocation = tracking_lost = None

    def __init__(self, stage: str, root: Path | None = None) -> None:
        self.stage = stage
        self.root = root if root is not None else repo_root()

    def log_report(self, metrics: Mapping[str, float]) -> Path:
        raise RuntimeError(f"{self.stage}: only rank zero writes the stage report")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def log_dict(self, d: Mapping[str, Any], name: str) -> None:
        pass

    def log_figure(self, fig: Any, name: str, on_parent: bool = False) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    @contextmanager
    def nested(self, name: str) -> Iterator[QuietRun]:
        yield QuietRun(f"{self.stage}.{name}", self.root)
