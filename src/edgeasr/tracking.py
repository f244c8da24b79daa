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
  ``edgeasr.invocation=<key>`` in the experiment, created on first use under a file lock.

On exit the child is FINISHED (FAILED/KILLED if an exception propagates, which is re-raised),
and every ``reports/*.json`` in the repo (cached stages make no child run but keep their report)
is rolled up onto the parent as ``<stage>/<key>`` metrics, with ``params.yaml`` and ``dvc.lock``
as parent artifacts.

``MLFLOW_RUN_ID`` is deliberately not used to pass the parent: ``mlflow.start_run`` *reopens*
that run instead of nesting under it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import numbers
import os
import posixpath
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient
    from omegaconf import DictConfig

__all__ = [
    "StageRun",
    "invocation",
    "repo_root",
    "stage_run",
    "store_root",
    "tracking_uri",
]

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "edgeasr"
PARENT_ENV = "EDGEASR_PARENT_RUN_ID"
# Set by a Hydra multirun's main process (edgeasr.sweep) so that jobs in worker processes (joblib)
# belong to the sweep's invocation: one parent run whatever the launcher.
INVOCATION_ENV = "EDGEASR_INVOCATION"
TAG_KIND = "edgeasr.kind"
TAG_INVOCATION = "edgeasr.invocation"
TAG_STAGE = "edgeasr.stage"
PARENT_RUN_TAG = "mlflow.parentRunId"

# MLflow 3.17 limits (mlflow.utils.validation)
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_VAL_LENGTH = 6000
_MAX_TAG_VAL_LENGTH = 8000
_MAX_KEY_LENGTH = 250
_VALID_NAME = re.compile(r"^[/\w.\- :]*$")
_TRUNCATION_MARK = "...[truncated]"


# --------------------------------------------------------------------------- locations


def repo_root() -> Path:
    """The workspace the stage runs in: ``$DVC_ROOT`` (set by DVC for every stage) if set,
    else the cwd.

    One exception: a queued ``dvc exp run`` (``--queue`` / ``--temp``) runs the stage in a copy
    of the repo under ``$DVC_ROOT/.dvc/tmp/exps/<tmp>/`` while ``$DVC_ROOT`` still names the
    original repo (measured, DVC 3.67). Outputs such as ``reports/`` must go to that copy, which
    DVC collects, so there the copy is returned.
    """
    root = os.environ.get("DVC_ROOT")
    cwd = Path.cwd()
    if not root:
        return cwd
    root_path = Path(root).expanduser().absolute()
    exps = (root_path / ".dvc" / "tmp" / "exps").resolve()
    here = cwd.resolve()
    if exps in here.parents:
        for candidate in (here, *here.parents):
            if candidate == exps:
                break
            if (candidate / ".dvc").is_dir():
                return candidate
        return exps / here.relative_to(exps).parts[0]
    return root_path


def store_root() -> Path:
    """Where the default store lives: ``$DVC_ROOT`` if set (the original repo, also for queued
    experiments whose temp workspace is deleted afterwards), else the cwd."""
    root = os.environ.get("DVC_ROOT")
    return Path(root).expanduser().absolute() if root else Path.cwd()


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the sqlite store ``<repo root>/mlflow.db``
    (``$DVC_ROOT`` or cwd, see :func:`store_root`)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{store_root().as_posix()}/mlflow.db"


def _uri_scheme(uri: str) -> str:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", uri)
    return m.group(1).lower().split("+")[0] if m else "file"


def _is_local_store(uri: str) -> bool:
    """A store on this machine whose default artifact root would be cwd-relative ``./mlruns``."""
    return _uri_scheme(uri) in {"sqlite", "file"}


# --------------------------------------------------------------------------- invocation


def _is_dvc_cmdline(cmdline: list[str]) -> bool:
    """True for ``dvc ...``, ``<python> .../bin/dvc ...`` (shebang) and ``<python> -m dvc ...``."""
    if not cmdline:
        return False

    def name(arg: str) -> str:
        base = arg.replace("\\", "/").rsplit("/", 1)[-1].lower()
        for suffix in (".exe", "-script.py"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        return base

    exe = name(cmdline[0])
    if exe == "dvc":
        return True
    if not re.fullmatch(r"python[0-9.]*w?", exe):
        return False
    args = cmdline[1:]
    i = 0
    while i < len(args):  # skip interpreter options
        a = args[i]
        if a in ("-m",):
            return i + 1 < len(args) and args[i + 1] == "dvc"
        if a.startswith("-m") and len(a) > 2:
            return a[2:] == "dvc"
        if a in ("-X", "-W", "-Q"):
            i += 2
            continue
        if a.startswith("-") and a != "-":
            i += 1
            continue
        return name(a) == "dvc"
    return False


def _linux_start_ticks(pid: int) -> int | None:
    """Process start time in clock ticks since boot (immune to wall-clock/NTP changes)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22 overall
    except (OSError, ValueError, IndexError):
        return None


def _process_key(proc: Any) -> str:
    """``<pid>-<start time>``: unique for a process across pid reuse.

    On Linux the start time is read as seconds since boot, suffixed with the boot id: psutil's
    ``create_time()`` adds ``btime`` from ``/proc/stat``, which follows wall-clock adjustments
    and could differ between two stages of one long pipeline.
    """
    ticks = _linux_start_ticks(proc.pid)
    if ticks is not None:
        try:
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        except OSError:
            boot = "0"
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        return f"{proc.pid}-{ticks / hz:.2f}@{boot}"
    return f"{proc.pid}-{proc.create_time():.3f}"


def invocation() -> tuple[str, str | None]:
    """``(key, command)`` of the pipeline invocation this process belongs to.

    The invocation is the nearest ancestor whose command line is a ``dvc`` command; with none,
    it is this process. ``command`` is the dvc command line (None without a dvc ancestor).
    ``$DVC_EXP_NAME`` is appended to the key so experiments run by one long-lived DVC worker
    process still get one parent each.
    """
    import psutil

    if os.environ.get(INVOCATION_ENV):
        return os.environ[INVOCATION_ENV], None
    me = psutil.Process()
    key, command = None, None
    try:
        ancestors = me.parents()
    except (psutil.Error, OSError):
        ancestors = []
    for proc in ancestors:
        try:
            cmdline = proc.cmdline()
        except (psutil.Error, OSError):
            continue
        if _is_dvc_cmdline(cmdline):
            try:
                key = "dvc:" + _process_key(proc)
            except (psutil.Error, OSError):
                continue
            command = " ".join(cmdline)
            break
    if key is None:
        key = "proc:" + _process_key(me)
    exp = os.environ.get("DVC_EXP_NAME")
    if exp:
        key += f":{exp}"
    return key, command


@contextmanager
def _file_lock(name: str) -> Iterator[None]:
    """Inter-process lock (POSIX flock) in the temp dir; a no-op where flock is unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
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


# --------------------------------------------------------------------------- config helpers


def _cfg_get(cfg: Any, *keys: str) -> Any:
    node = cfg
    for k in keys:
        if node is None:
            return None
        try:
            node = node.get(k) if hasattr(node, "get") else getattr(node, k, None)
        except Exception:  # omegaconf missing value / interpolation errors
            return None
    return node


def _to_plain(obj: Any) -> Any:
    """DictConfig/ListConfig -> plain containers (resolved where possible)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover
        return obj
    if isinstance(obj, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(obj, resolve=True, throw_on_missing=False)
        except Exception:  # e.g. ${hydra:...} outside a Hydra app
            return OmegaConf.to_container(obj, resolve=False, throw_on_missing=False)
    return obj


def _truncate(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    return value[: limit - len(_TRUNCATION_MARK)] + _TRUNCATION_MARK


def _safe_key(key: str) -> str:
    """A valid MLflow param/metric name for ``key`` (invalid characters -> ``_``)."""
    key = re.sub(r"[^/\w.\- :]", "_", key)
    key = re.sub(r"/+", "/", key).strip("/") or "_"
    if len(key) > _MAX_KEY_LENGTH:
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        key = key[: _MAX_KEY_LENGTH - 9] + "~" + digest
    return key


def _stringify(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        try:
            return json.dumps(value, sort_keys=True, default=str)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def flatten_params(cfg: Any, prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings into ``{"a.b.c": "value"}``; lists become JSON strings."""
    out: dict[str, str] = {}
    cfg = _to_plain(cfg)
    if not isinstance(cfg, Mapping):
        if prefix:
            out[_safe_key(prefix)] = _truncate(_stringify(cfg), _MAX_PARAM_VAL_LENGTH)
        return out
    for k, v in cfg.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten_params(v, key))
        else:
            out[_safe_key(key)] = _truncate(_stringify(_to_plain(v)), _MAX_PARAM_VAL_LENGTH)
    return out


# --------------------------------------------------------------------------- metrics helpers


def _check_metric_name(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"metric key {key!r} must be a non-empty string")
    if (
        not _VALID_NAME.match(key)
        or len(key) > _MAX_KEY_LENGTH
        or posixpath.normpath(key) != key
        or key.startswith(("/", ".."))
    ):
        raise ValueError(
            f"metric key {key!r} is not a valid MLflow metric name (alphanumerics, '_', '-', "
            "'.', ' ', ':', single inner '/', at most 250 characters)"
        )
    return key


def _check_metric_value(key: str, value: Any) -> int | float:
    """A finite int/float for ``value`` (numpy scalars and 0-d tensors via ``.item()``)."""
    if hasattr(value, "item") and not isinstance(value, numbers.Number):
        try:
            value = value.item()
        except Exception:
            pass
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"metric {key!r} must be a real number, got {type(value).__name__}: {value!r}"
        )
    if isinstance(value, numbers.Integral):
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"metric {key!r} is not finite: {value!r}")
    return value


def _metric_batches(metrics: Mapping[str, float], step: int = 0) -> Iterator[list]:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
    for i in range(0, len(items), _MAX_METRICS_PER_BATCH):
        yield items[i : i + _MAX_METRICS_PER_BATCH]


def write_report(path: Path, metrics: Mapping[str, int | float]) -> Path:
    """Write ``metrics`` as flat, key-sorted JSON (floats in shortest round-trip form)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(sorted(metrics.items())), indent=2, sort_keys=True, allow_nan=False)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- git


def _git_tags(root: Path) -> dict[str, str]:
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no")
    tags = {"git.commit": commit}
    if status is not None:
        tags["git.dirty"] = "true" if status else "false"
    return tags


# --------------------------------------------------------------------------- the run


class StageRun:
    """Handle on the MLflow child run of one stage (see :func:`stage_run`)."""

    def __init__(
        self,
        client: MlflowClient,
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
        self.client = client
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
    def report_path(self) -> Path:
        return self.report_dir / f"{self.stage}.json"

    def log_report(self, metrics: Mapping[str, float]) -> Path:
        """Write ``reports/<stage>.json`` and log the same keys/values as child-run metrics.

        Keys from earlier calls in this run are kept (the file always holds what MLflow holds).
        Raises ValueError naming the key for a non-numeric, non-finite or invalid entry; nothing
        is written or logged then.
        """
        clean: dict[str, int | float] = {}
        for key, value in metrics.items():
            _check_metric_name(key)
            clean[key] = _check_metric_value(key, value)
        self._report.update(clean)
        path = write_report(self.report_path, self._report)
        for batch in _metric_batches(clean):
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)
        with contextlib.suppress(Exception):
            self.client.log_artifact(self.run_id, str(path), "reports")
        return path

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Curves over training (NaN/inf are passed through as MLflow accepts them)."""
        clean = {}
        for key, value in metrics.items():
            _check_metric_name(key)
            if hasattr(value, "item") and not isinstance(value, numbers.Number):
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"metric {key!r} must be a real number, got {value!r}")
            clean[key] = float(value)
        for batch in _metric_batches(clean, step or 0):
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def log_params(self, params: Mapping[str, Any]) -> None:
        _log_params(self.client, self.run_id, flatten_params(params))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        p = Path(path)
        if p.is_dir():
            self.client.log_artifacts(self.run_id, str(p), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(p), artifact_path)

    def log_dict(self, d: Mapping[str, Any], name: str) -> None:
        self.client.log_dict(self.run_id, _to_plain(d), name)

    def log_figure(self, fig: Any, name: str) -> None:
        self.client.log_figure(self.run_id, fig, name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, _truncate(str(v), _MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + _MAX_PARAMS_PER_BATCH])

    @contextmanager
    def nested(self, name: str) -> Iterator["StageRun"]:
        """A run nested under this stage's run (``<stage>/<name>``), e.g. a baseline trained inside
        the stage, so the MLflow UI shows its curves apart from the main model's. Use its
        ``log_metrics``/``log_artifact``; the stage's report stays on the stage run."""
        tags = {TAG_KIND: "stage_part", TAG_STAGE: self.stage, PARENT_RUN_TAG: self.run_id,
                "mlflow.source.name": f"pipelines/{self.stage}.py"}
        child = self.client.create_run(self.experiment_id, tags=_default_tags(tags), run_name=f"{self.stage}/{name}")
        run = StageRun(self.client, child.info.run_id, self.run_id, f"{self.stage}.{name}", uri=self.tracking_uri,
                       experiment_id=self.experiment_id, invocation_key=self.invocation, root=self.root)
        status = "FAILED"
        try:
            yield run
            status = "FINISHED"
        finally:
            self.client.set_terminated(run.run_id, status)

    def __repr__(self) -> str:
        return f"StageRun(stage={self.stage!r}, run_id={self.run_id!r}, parent={self.parent_run_id!r})"


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH], synchronous=True)


def _get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = (store_root() / "mlruns").as_uri() if _is_local_store(uri) else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created concurrently by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _find_parent(client: MlflowClient, experiment_id: str, key: str) -> str | None:
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


def _default_tags(tags: dict[str, str]) -> dict[str, str]:
    """mlflow's context tags (user, source type, ...) overridden by ``tags``."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return {k: str(v) for k, v in resolve_tags(tags).items()}
    except Exception:  # pragma: no cover - registry internals moved
        return dict(tags)


def _active_fluent_run(uri: str) -> Any:
    """The fluent run active in this process, if any and in the same store."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return None
    try:
        if mlflow.get_tracking_uri() != uri:
            return None
    except Exception:
        return None
    return run


def _rollup(client: MlflowClient, parent_run_id: str, root: Path) -> None:
    """Reports -> ``<stage>/<key>`` parent metrics; params.yaml, dvc.lock -> parent artifacts."""
    metrics: dict[str, float] = {}
    for report in sorted((root / "reports").glob("*.json")):
        try:
            data = json.loads(report.read_text())
        except (OSError, ValueError) as err:
            log.warning("skipping unreadable report %s: %s", report, err)
            continue
        if not isinstance(data, Mapping):
            continue
        prefix = _safe_key(report.stem)
        for key, value in data.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            metrics[_safe_key(f"{prefix}/{key}")] = float(value)
    for batch in _metric_batches(metrics):
        client.log_batch(parent_run_id, metrics=batch, synchronous=True)
    for name in ("params.yaml", "dvc.lock"):
        path = root / name
        if path.is_file():
            client.log_artifact(parent_run_id, str(path))


def current_parent_run_id(experiment: str = DEFAULT_EXPERIMENT) -> str | None:
    """The parent run of this process's invocation (created by the first stage run in it), if any."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    return None if exp is None else _find_parent(client, exp.experiment_id, invocation()[0])


class _FluentUri:
    """Point mlflow's fluent API at ``uri`` for the stage and put everything back afterwards.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``; mlflow's own
    ``_use_tracking_uri`` restores by *unsetting* it, dropping a user's variable.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def __enter__(self) -> _FluentUri:
        import mlflow
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
        import mlflow

        mlflow.set_tracking_uri(self._old_private)  # None: back to "not set"
        if self._old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = self._old_env


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
    The child run is also the active fluent run inside the block, so ``mlflow.log_*`` and
    ``mlflow.<flavor>.log_model`` land on it.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    if not stage or not re.fullmatch(r"[\w.@:-]+", stage):
        raise ValueError(f"invalid stage name {stage!r}")
    uri = tracking_uri()
    root = repo_root()
    experiment = str(_cfg_get(cfg, "tracking", "experiment") or DEFAULT_EXPERIMENT)
    git_tags = _git_tags(root)
    exp_name = os.environ.get("DVC_EXP_NAME")
    dvc_stage = os.environ.get("DVC_STAGE")

    owns_parent = False
    inv_key: str | None = None
    explicit = os.environ.get(PARENT_ENV)
    active = None if explicit else _active_fluent_run(uri)
    # One lock per store on this machine: a fresh sqlite db is migrated when the first client
    # opens it (concurrent migrations corrupt it), and look-up-or-create of the parent must be
    # atomic for stages started side by side under one invocation.
    with _file_lock(f"edgeasr|{uri}"):
        client = MlflowClient(tracking_uri=uri)
        if explicit:
            parent_run_id = explicit
            experiment_id = client.get_run(parent_run_id).info.experiment_id
        elif active is not None:
            parent_run_id = active.info.run_id
            experiment_id = active.info.experiment_id
        else:
            experiment_id = _get_or_create_experiment(client, experiment, uri)
            inv_key, command = invocation()
            owns_parent = True
            parent_run_id = _find_parent(client, experiment_id, inv_key)
            if parent_run_id is None:
                ptags = {
                    TAG_KIND: "pipeline",
                    TAG_INVOCATION: inv_key,
                    "mlflow.source.name": _truncate(
                        command or f"pipelines/{stage}.py", _MAX_TAG_VAL_LENGTH
                    ),
                    **git_tags,
                }
                if exp_name:
                    ptags["dvc.exp_name"] = exp_name
                parent = client.create_run(
                    experiment_id, tags=_default_tags(ptags), run_name=exp_name or "pipeline"
                )
                parent_run_id = parent.info.run_id
            else:
                client.update_run(parent_run_id, status="RUNNING")

    ctags = {
        TAG_KIND: "stage",
        TAG_STAGE: stage,
        PARENT_RUN_TAG: parent_run_id,
        "mlflow.source.name": f"pipelines/{stage}.py",
        **git_tags,
    }
    if inv_key:
        ctags[TAG_INVOCATION] = inv_key
    if exp_name:
        ctags["dvc.exp_name"] = exp_name
    if dvc_stage:
        ctags["dvc.stage"] = dvc_stage
    child = client.create_run(experiment_id, tags=_default_tags(ctags), run_name=stage)
    run = StageRun(
        client,
        child.info.run_id,
        parent_run_id,
        stage,
        uri=uri,
        experiment_id=experiment_id,
        invocation_key=inv_key,
        root=root,
        report_dir=Path(report_dir) if report_dir is not None else None,
    )

    status = "FINISHED"
    with contextlib.ExitStack() as stack:
        activated = False
        try:
            stack.enter_context(_FluentUri(uri))
            mlflow.start_run(run_id=run.run_id, nested=mlflow.active_run() is not None)
            activated = True
        except Exception as err:  # e.g. mlflow.set_experiment() set to another experiment
            log.warning("could not activate the stage run for mlflow's fluent API: %s", err)
        try:
            run.log_params(params if params is not None else (cfg or {}))
            yield run
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except SystemExit as exc:  # sys.exit(0) inside a stage is a success
            status = "FINISHED" if exc.code in (None, 0) else "FAILED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            try:
                top = mlflow.active_run() if activated else None
                if top is not None and top.info.run_id == run.run_id:
                    mlflow.end_run(status)
                else:
                    client.set_terminated(run.run_id, status)
            except Exception as err:
                log.warning("could not terminate stage run %s: %s", run.run_id, err)
            try:
                if report_dir is None:
                    _rollup(client, parent_run_id, root)
                if owns_parent:
                    client.set_terminated(parent_run_id, status)
            except Exception as err:
                log.warning("could not roll up onto parent run %s: %s", parent_run_id, err)


if __name__ == "__main__":  # pragma: no cover - debugging aid
    print(json.dumps({"repo_root": str(repo_root()), "tracking_uri": tracking_uri(),
                      "invocation": invocation()[0]}, indent=2), file=sys.stdout)
