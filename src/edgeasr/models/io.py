"""Model files passed between stages: ``{"format", "version", "model_cfg", "state_dict", "meta"}``.

A checkpoint carries its own model config, so a later stage (or ``transcribe``) rebuilds the exact
architecture without reading the config that trained it.
"""

from __future__ import annotations

import pickle
import re
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


def _one_line(e: BaseException) -> str:
    return "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def unreadable(path: Path, e: Exception, what: str = "edgeasr model file") -> str:
    """Why torch.load(weights_only=True) failed, in one line. Never torch's own text for a refused
    pickle: it advises retrying with safe loading off, which is exactly what must not be done."""
    if isinstance(e, pickle.UnpicklingError):
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            return (f"{path}: refused: the file holds pickled Python objects ({found.group(1)}; code could run on "
                    f"load); an {what} holds only tensors and plain containers")
        return f"{path} is not a readable {what} (its pickle data is malformed or unsupported)"
    return f"{path} is not a readable {what} ({type(e).__name__}: {_one_line(e)})"


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a file written by :func:`save_model`; returns ``(model, meta)``.

    Raises ``ValueError`` naming the file, in one line, for anything that is not such a file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found; run the stage that writes it (dvc repro)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(unreadable(path, e)) from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path} is not an edgeasr model file (expected format {FORMAT!r})")
    if obj.get("version") != VERSION:
        raise ValueError(f"{path} has model-file version {obj.get('version')}, this edgeasr reads {VERSION}")
    cfg, meta = obj.get("model_cfg"), obj.get("meta", {})
    for key, value in (("model_cfg", cfg), ("state_dict", obj.get("state_dict")), ("meta", meta)):
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}: malformed model file: its {key!r} is a {type(value).__name__}, not a mapping")
    try:
        model = build_transducer(cfg)
    except Exception as e:  # a hand-edited or foreign config: any error, one line naming the file
        raise ValueError(f"{path}: its model config does not build a model ({type(e).__name__}: {_one_line(e)})") from e
    try:
        model.load_state_dict(obj["state_dict"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: weights do not match its model config: {_one_line(e)}") from e
    return model.eval(), dict(meta, model_cfg=cfg)
