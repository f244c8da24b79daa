"""Where a stage's outputs and the MLflow store live."""

from __future__ import annotations

import os
import re
from pathlib import Path


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


def local_store_uri() -> str:
    """The sqlite store ``<repo root>/mlflow.db`` (``$DVC_ROOT`` or cwd, see :func:`store_root`)."""
    return f"sqlite:///{store_root().as_posix()}/mlflow.db"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else :func:`local_store_uri`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri()


def _uri_scheme(uri: str) -> str:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", uri)
    return m.group(1).lower().split("+")[0] if m else "file"


def is_local_store(uri: str) -> bool:
    """A store on this machine whose default artifact root would be cwd-relative ``./mlruns``."""
    return _uri_scheme(uri) in {"sqlite", "file"}
