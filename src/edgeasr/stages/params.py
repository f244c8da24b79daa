"""The config each stage reads, declared once.

``STAGE_PARAMS`` is what a stage's ``params:`` list in ``dvc.yaml`` must be (a test compares the
two), so DVC reruns a stage exactly when something it reads changes; the same keys, less
``NOT_LOGGED``, are the params of the stage's MLflow run.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "prepare": ("seed", "paths.data_dir", "data", "prepare"),
    "train_teacher": ("seed", "model.teacher", "trainer", "hw", "train_teacher", "context_lists"),
    "distill": ("seed", "model.student", "trainer", "hw", "distill", "context_lists"),
    "compress": ("seed", "trainer", "hw", "compress", "context_lists"),
    "mwer": ("seed", "trainer", "hw", "mwer", "context_lists"),
    "export": ("seed", "hw", "export"),
    "train_lm": ("seed", "data", "trainer", "train_lm"),
    "reference": ("seed", "data.text_normalization", "reference"),
    "evaluate": ("seed", "hw", "export.source", "prepare.features", "evaluate"),
}

# Read by the stage but not logged on its run: where the data lives on this machine is no setting
# of the experiment, and the export stage's run already logs which model was exported.
NOT_LOGGED: dict[str, tuple[str, ...]] = {
    "prepare": ("paths.data_dir",),
    "evaluate": ("export.source",),
}


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def logged_params(stage: str, cfg: DictConfig) -> dict[str, Any]:
    """The params ``stage`` logs to MLflow: its declared keys less ``NOT_LOGGED``, as nested plain
    containers (``model.teacher`` -> ``{"model": {"teacher": {...}}}``), interpolations resolved."""
    if stage not in STAGE_PARAMS:
        raise KeyError(f"stage {stage!r} declares no params in edgeasr.stages.params.STAGE_PARAMS")
    params: dict[str, Any] = {}
    for key in STAGE_PARAMS[stage]:
        if key in NOT_LOGGED.get(stage, ()):
            continue
        node = OmegaConf.select(cfg, key, default=KeyError)
        if node is KeyError:
            raise KeyError(f"stage {stage!r} reads config key {key!r} (edgeasr.stages.params), "
                           "which the composed config lacks")
        *parents, leaf = key.split(".")
        target = params
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = _plain(node)
    return params
