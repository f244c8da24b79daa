"""NPU hardware profiles (conf/hw/*.yaml)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_REQUIRED = ("name", "macs_per_cycle", "clock_hz", "zero_skipping", "sram_bytes", "bandwidth_bytes_per_s")
_LEVELS = ("sram", "flash")


@dataclass
class HwProfile:
    """An NPU as the roofline sees it: int8 MAC throughput, weight SRAM size, and per-level bandwidth."""

    name: str
    macs_per_cycle: int  # int8 MACs per cycle
    clock_hz: float
    zero_skipping: bool  # MACs against zero weights cost nothing
    sram_bytes: int  # on-chip memory available for resident weights
    bandwidth_bytes_per_s: dict[str, float] = field(default_factory=dict)  # 'sram', 'flash' (+ any other level)

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

    @property
    def peak_macs_per_s(self) -> float:
        """int8 peak; wider operands get a fraction of it (see cost.macs_per_s)."""
        return float(self.macs_per_cycle) * float(self.clock_hz)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> HwProfile:
        """From a mapping shaped like conf/hw/*.yaml (a dict or an OmegaConf DictConfig such as cfg.hw)."""
        try:  # resolve interpolations; plain dicts pass through
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg, DictConfig):
                cfg = OmegaConf.to_container(cfg, resolve=True)
        except ImportError:  # pragma: no cover
            pass
        cfg = dict(cfg)
        missing = [k for k in _REQUIRED if k not in cfg]
        unknown = sorted(set(cfg) - set(_REQUIRED))
        if missing or unknown:  # strict: a misspelt key would otherwise silently keep a default
            raise ValueError(f"hw profile: missing keys {missing}, unknown keys {unknown}; expected {list(_REQUIRED)}")
        return cls(
            name=str(cfg["name"]),
            macs_per_cycle=int(cfg["macs_per_cycle"]),
            clock_hz=float(cfg["clock_hz"]),
            zero_skipping=bool(cfg["zero_skipping"]),
            sram_bytes=int(cfg["sram_bytes"]),
            bandwidth_bytes_per_s={str(k): float(v) for k, v in dict(cfg["bandwidth_bytes_per_s"]).items()},
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> HwProfile:
        import yaml

        return cls.from_cfg(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
