"""NPU hardware profiles (conf/hw/*.yaml)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

_REQUIRED = ("name", "macs_per_cycle", "clock_hz", "zero_skipping", "sram_bytes", "bandwidth_bytes_per_s")
_OPTIONAL = ("energy_pj",)
_LEVELS = ("sram", "flash")
_ENERGY_MACS = ("mac_int8", "mac_fp32")  # required in energy_pj; mac_fp16 optional (default: mac_fp32)
_ENERGY_KEYS = (*_ENERGY_MACS, "mac_fp16", "byte")


@dataclass
class HwProfile:
    """An NPU as the roofline sees it: int8 MAC throughput, weight SRAM size, and per-level bandwidth."""

    name: str
    macs_per_cycle: int  # int8 MACs per cycle
    clock_hz: float
    zero_skipping: bool  # MACs against zero weights cost nothing
    sram_bytes: int  # on-chip memory available for resident weights
    bandwidth_bytes_per_s: dict[str, float] = field(default_factory=dict)  # 'sram', 'flash' (+ any other level)
    # optional energy model (the NPU emulator's): {'mac_int8': pJ, 'mac_fp32': pJ, 'byte': {level: pJ per byte read}}
    energy_pj: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.macs_per_cycle <= 0 or self.clock_hz <= 0:
            raise ValueError(f"hw {self.name!r}: macs_per_cycle and clock_hz must be > 0")
        if self.sram_bytes < 0:
            raise ValueError(f"hw {self.name!r}: sram_bytes must be >= 0")
        missing = [k for k in _LEVELS if k not in self.bandwidth_bytes_per_s]
        if missing:
            raise ValueError(f"hw {self.name!r}: bandwidth_bytes_per_s lacks {missing}")
        bad = {k: v for k, v in self.bandwidth_bytes_per_s.items() if not float(v) > 0}
        if bad:
            raise ValueError(f"hw {self.name!r}: bandwidths must be > 0, got {bad}")
        if self.energy_pj:
            e = self.energy_pj
            per_byte = e.get("byte") or {}
            missing = [k for k in _ENERGY_MACS if k not in e] + [f"byte.{k}" for k in self.bandwidth_bytes_per_s
                                                                 if k not in per_byte]
            unknown = sorted(set(e) - set(_ENERGY_KEYS))
            values = [v for k, v in e.items() if k != "byte"] + list(per_byte.values())
            if missing or unknown or not all(isinstance(v, (int, float)) and v >= 0 for v in values):
                raise ValueError(f"hw {self.name!r}: energy_pj needs {list(_ENERGY_MACS)} and byte.<level> for every "
                                 f"memory level, all >= 0 (missing {missing}, unknown {unknown})")

    @property
    def peak_macs_per_s(self) -> float:
        """int8 peak; wider operands get a fraction of it (see cost.macs_per_s)."""
        return float(self.macs_per_cycle) * float(self.clock_hz)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> HwProfile:
        """From a mapping shaped like conf/hw/*.yaml (a dict or an OmegaConf DictConfig such as cfg.hw)."""
        if isinstance(cfg, DictConfig):  # resolve interpolations; plain dicts pass through
            cfg = OmegaConf.to_container(cfg, resolve=True)
        cfg = dict(cfg)
        missing = [k for k in _REQUIRED if k not in cfg]
        unknown = sorted(set(cfg) - set(_REQUIRED) - set(_OPTIONAL))
        if missing or unknown:  # strict: a misspelt key would otherwise silently keep a default
            raise ValueError(f"hw profile: missing keys {missing}, unknown keys {unknown}; expected {list(_REQUIRED)} "
                             f"(optional: {list(_OPTIONAL)})")
        return cls(
            name=str(cfg["name"]),
            macs_per_cycle=int(cfg["macs_per_cycle"]),
            clock_hz=float(cfg["clock_hz"]),
            zero_skipping=bool(cfg["zero_skipping"]),
            sram_bytes=int(cfg["sram_bytes"]),
            bandwidth_bytes_per_s={str(k): float(v) for k, v in dict(cfg["bandwidth_bytes_per_s"]).items()},
            energy_pj=_energy(cfg.get("energy_pj")),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> HwProfile:
        return cls.from_cfg(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


def _energy(e: Mapping[str, Any] | None) -> dict[str, Any]:
    if not e:
        return {}
    out: dict[str, Any] = {str(k): float(v) for k, v in dict(e).items() if k != "byte"}
    out["byte"] = {str(k): float(v) for k, v in dict(e.get("byte") or {}).items()}
    return out
