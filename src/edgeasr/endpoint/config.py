"""What the evaluate stage chose and a device (or ``edgeasr transcribe --streaming --endpoint``)
runs: both rules and how the stream is decoded. Written as ``results/endpoint/rule.json``; read
back as untrusted data, every field checked (:class:`EndpointConfigError` names the file)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .eoq import read_json
from .rules import EndpointRule


class EndpointConfigError(ValueError):
    """An end-pointing configuration file that cannot be used; names the file and the field."""


@dataclass(frozen=True)
class EndpointConfig:
    final: EndpointRule
    speculative: EndpointRule
    chunk_ms: float = 80.0
    beam: int = 8
    vad_margin_db: float = 15.0
    support_s: float = 0.24
    beam_temperature: float = 2.0
    max_sym_per_frame: int = 1     # the beam search's symbols per encoder frame

    def as_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path, **extra) -> None:
        Path(path).write_text(json.dumps({**self.as_dict(), **extra}, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> EndpointConfig:
        path = Path(path)
        doc = read_json(path, EndpointConfigError, "end-pointing configuration",
                        "the evaluate stage writes data/evaluate/results/endpoint/rule.json (dvc repro evaluate)")
        if not isinstance(doc, dict):
            raise EndpointConfigError(f"{path}: expected a JSON object with 'final' and 'speculative' rules")
        rules = {}
        for name in ("final", "speculative"):
            r = doc.get(name)
            keys = [f.name for f in fields(EndpointRule)]
            if not isinstance(r, dict) or any(not _number(r.get(k)) for k in keys):
                raise EndpointConfigError(f"{path}: {name!r} must be an object with numbers {keys}, got {r!r}")
            try:
                rules[name] = EndpointRule(**{k: float(r[k]) for k in keys})
            except ValueError as e:
                raise EndpointConfigError(f"{path}: {name!r}: {e}") from e
        values = {}
        for f in fields(cls):
            if f.name in rules or f.name not in doc:
                continue
            v = doc[f.name]
            whole = f.name in ("beam", "max_sym_per_frame")
            if not _number(v) or v <= 0 or (whole and (type(v) is not int or v > 64)):
                raise EndpointConfigError(f"{path}: {f.name}={v!r} must be a positive number"
                                          + (" (an integer <= 64)" if whole else ""))
            values[f.name] = v
        return cls(rules["final"], rules["speculative"], **values)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
