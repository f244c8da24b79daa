"""Model files passed between stages: ``{"format", "version", "model_cfg", "state_dict", "meta"}``.

A checkpoint carries its own model config, so a later stage (or ``transcribe``) rebuilds the exact
architecture without reading the config that trained it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import OmegaConf
from torch import nn

from edgeasr.atomic import atomic_write

from .transducer import build_transducer

FORMAT = "edgeasr-transducer"
VERSION = 1


def save_model(path: str | Path, model: nn.Module, model_cfg: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> Path:
    # Plain containers only (nested DictConfigs included): the loader reads with weights_only=True.
    cfg = OmegaConf.to_container(OmegaConf.create(dict(model_cfg)), resolve=True)
    # Temp file, fsync, rename (edgeasr.atomic): a crash never leaves a partial model.pt, and an
    # old file that is a hardlink into DVC's cache (cache.type hardlink) is replaced, not written through.
    obj = {"format": FORMAT, "version": VERSION, "model_cfg": cfg,
           "state_dict": model.state_dict(), "meta": dict(meta or {})}
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a file written by :func:`save_model`; returns ``(model, meta)``.

    Raises ``ValueError`` naming the file for anything that is not such a file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found; run the stage that writes it (dvc repro)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable edgeasr model file ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path} is not an edgeasr model file (expected format {FORMAT!r})")
    if obj.get("version") != VERSION:
        raise ValueError(f"{path} has model-file version {obj.get('version')}, this edgeasr reads {VERSION}")
    model = build_transducer(obj["model_cfg"])
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match its model config: {e}") from e
    return model.eval(), dict(obj.get("meta", {}), model_cfg=obj["model_cfg"])
