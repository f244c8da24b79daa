"""Kaldi fbank on samples scaled to the int16 range, as Kaldi and sherpa-onnx compute it when they
are given int16-range samples (NOTES.md §8).

lhotse's own ``Fbank`` works on samples in [-1, 1]; scaling to the int16 range shifts every log-mel
bin by ~20.8 (log 32768²) and changes where the energy floor clamps. edgeasr registers this
extractor with lhotse and uses it everywhere (prepare, on-the-fly features, the transcribe CLI).

Measured with sherpa-onnx 2.0.1: its default (``normalize_samples=True``) does NOT scale, so a
device app must either pass ``normalize_samples=False`` (streaming Python API) or multiply samples
by 32768 itself; otherwise transcripts silently differ (docs/deploy.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi
from lhotse.features.base import FeatureExtractor, register_extractor


@dataclass
class KaldiFbankConfig:
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    low_freq: float = 20.0
    high_freq: float = -400.0
    window_type: str = "povey"
    snip_edges: bool = False
    dither: float = 0.0

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> "KaldiFbankConfig":
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})


@register_extractor
class KaldiFbank(FeatureExtractor):
    """``torchaudio.compliance.kaldi.fbank`` on int16-scaled samples; output ``(T, num_mel_bins)``."""

    name = "edgeasr-kaldi-fbank"
    config_type = KaldiFbankConfig

    def extract(self, samples: np.ndarray | torch.Tensor, sampling_rate: int) -> np.ndarray:
        # One thread per worker: lhotse runs num_jobs processes; intra-op threads only contend (10x slower).
        torch.set_num_threads(1)
        x = torch.as_tensor(samples, dtype=torch.float32)
        if x.ndim == 1:
            x = x.unsqueeze(0)
        c = self.config
        feats = kaldi.fbank(
            x[:1] * 32768.0,
            sample_frequency=float(sampling_rate),
            num_mel_bins=c.num_mel_bins,
            frame_length=c.frame_length_ms,
            frame_shift=c.frame_shift_ms,
            low_freq=c.low_freq,
            high_freq=c.high_freq,
            window_type=c.window_type,
            snip_edges=c.snip_edges,
            dither=c.dither,
            energy_floor=0.0,
        )
        return feats.numpy()

    @property
    def frame_shift(self) -> float:
        return self.config.frame_shift_ms / 1000.0

    def feature_dim(self, sampling_rate: int) -> int:
        return self.config.num_mel_bins
