"""What may be logged: params flattened from the config, metric names and values checked against
MLflow's limits, batched writes, and the report file."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import posixpath
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, ListConfig, OmegaConf

from edgeasr.atomic import atomic_write_bytes

# MLflow 3.17 limits (mlflow.utils.validation)
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_KEY_LENGTH = 250
_VALID_NAME = re.compile(r"^[/\w.\- :]*$")
_TRUNCATION_MARK = "...[truncated]"


def cfg_get(cfg: Any, *keys: str) -> Any:
    """``cfg[k1][k2]...`` for a mapping or DictConfig, None where a level is missing or fails."""
    node = cfg
    for k in keys:
        if node is None:
            return None
        try:
            node = node.get(k) if hasattr(node, "get") else getattr(node, k, None)
        except Exception:  # omegaconf missing value / interpolation errors
            return None
    return node


def to_plain(obj: Any) -> Any:
    """DictConfig/ListConfig -> plain containers (resolved where possible)."""
    if isinstance(obj, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(obj, resolve=True, throw_on_missing=False)
        except Exception:  # e.g. ${hydra:...} outside a Hydra app
            return OmegaConf.to_container(obj, resolve=False, throw_on_missing=False)
    return obj


def truncate(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    return value[: limit - len(_TRUNCATION_MARK)] + _TRUNCATION_MARK


def safe_key(key: str) -> str:
    """A valid MLflow param/metric name for ``key`` (invalid characters -> ``_``)."""
    key = re.sub(r"[^/\w.\- :]", "_", key)
    key = re.sub(r"/+", "/", key).strip("/") or "_"
    if len(key) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        key = key[: MAX_KEY_LENGTH - 9] + "~" + digest
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
    cfg = to_plain(cfg)
    if not isinstance(cfg, Mapping):
        if prefix:
            out[safe_key(prefix)] = truncate(_stringify(cfg), MAX_PARAM_VAL_LENGTH)
        return out
    for k, v in cfg.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten_params(v, key))
        else:
            out[safe_key(key)] = truncate(_stringify(to_plain(v)), MAX_PARAM_VAL_LENGTH)
    return out


def check_metric_name(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"metric key {key!r} must be a non-empty string")
    if (
        not _VALID_NAME.match(key)
        or len(key) > MAX_KEY_LENGTH
        or posixpath.normpath(key) != key
        or key.startswith(("/", ".."))
    ):
        raise ValueError(
            f"metric key {key!r} is not a valid MLflow metric name (alphanumerics, '_', '-', "
            "'.', ' ', ':', single inner '/', at most 250 characters)"
        )
    return key


def _item(value: Any) -> Any:
    """numpy scalars and 0-d tensors -> their Python number."""
    if hasattr(value, "item") and not isinstance(value, numbers.Number):
        return value.item()
    return value


def check_metric_value(key: str, value: Any) -> int | float:
    """A finite int/float for ``value`` (numpy scalars and 0-d tensors via ``.item()``)."""
    try:
        value = _item(value)
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


def check_curve_value(key: str, value: Any) -> float:
    """A float for a training-curve point; NaN/inf pass (MLflow accepts them in curves)."""
    value = _item(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"metric {key!r} must be a real number, got {value!r}")
    return float(value)


def metric_batches(metrics: Mapping[str, float], step: int = 0) -> Iterator[list[Metric]]:
    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
    for i in range(0, len(items), MAX_METRICS_PER_BATCH):
        yield items[i : i + MAX_METRICS_PER_BATCH]


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i : i + MAX_PARAMS_PER_BATCH], synchronous=True)


def log_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    items = [RunTag(k, truncate(str(v), MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, tags=items[i : i + MAX_PARAMS_PER_BATCH])


def write_report(path: Path, metrics: Mapping[str, int | float]) -> Path:
    """Write ``metrics`` as flat, key-sorted JSON (floats in shortest round-trip form)."""
    text = json.dumps(dict(sorted(metrics.items())), indent=2, sort_keys=True, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())  # temp file, fsync, rename
