"""The tags that tie runs together (pipeline parent, stage child, part of a stage) and the
context tags every run carries."""

from __future__ import annotations

import subprocess
from pathlib import Path

DEFAULT_EXPERIMENT = "edgeasr"
PARENT_ENV = "EDGEASR_PARENT_RUN_ID"
TAG_KIND = "edgeasr.kind"
TAG_INVOCATION = "edgeasr.invocation"
TAG_STAGE = "edgeasr.stage"
TAG_FALLBACK = "edgeasr.tracking_fallback_from"  # the unreachable server a run was logged instead of
PARENT_RUN_TAG = "mlflow.parentRunId"


def default_tags(tags: dict[str, str]) -> dict[str, str]:
    """mlflow's context tags (user, source type, ...) overridden by ``tags``."""
    try:
        # mlflow internals, imported here so that a release which moves them costs only these tags
        from mlflow.tracking.context.registry import resolve_tags

        return {k: str(v) for k, v in resolve_tags(tags).items()}
    except Exception:  # pragma: no cover - registry internals moved
        return dict(tags)


def _git(root: Path, *args: str) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_tags(root: Path) -> dict[str, str]:
    """``git.commit`` and ``git.dirty`` (tracked files only) of the repository at ``root``."""
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return {}
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    tags = {"git.commit": commit}
    if status is not None:
        tags["git.dirty"] = "true" if status else "false"
    return tags
