"""4x convolutional frame-rate reduction and input feature normalisation."""

from __future__ import annotations

import torch
from torch import nn


class InputNorm(nn.Module):
    """Per-frame normalisation of log-mel features, ``(N, T, F) -> (N, T, F)``.

    Raw Kaldi fbank sits around +5..+20 with a large per-bin offset; an unnormalised input kept
    the LSTM student from learning at all (NOTES.md §7). Every mode is per frame, so it is
    streaming-safe and lives inside the exported encoder.

    * ``"layer"``: LayerNorm over the feature bins (no statistics needed; default).
    * ``"global"``: ``(x - mean) / std`` with buffers set from training data by :meth:`set_stats`,
      then a learnable per-bin affine.
    * ``"none"``: identity.
    """

    def __init__(self, dim: int, kind: str = "layer"):
        super().__init__()
        if kind not in ("layer", "global", "none"):
            raise ValueError(f"input_norm must be 'layer', 'global' or 'none', got {kind!r}")
        self.kind = kind
        if kind == "layer":
            self.norm = nn.LayerNorm(dim)
        elif kind == "global":
            self.register_buffer("mean", torch.zeros(dim))
            self.register_buffer("std", torch.ones(dim))
            self.weight = nn.Parameter(torch.ones(dim))
            self.bias = nn.Parameter(torch.zeros(dim))

    @torch.no_grad()
    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Global per-bin statistics of the training features (``kind="global"`` only)."""
        if self.kind != "global":
            raise RuntimeError(f"set_stats needs input_norm='global', this one is {self.kind!r}")
        self.mean.copy_(torch.as_tensor(mean, dtype=self.mean.dtype))
        self.std.copy_(torch.as_tensor(std, dtype=self.std.dtype).clamp(min=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layer":
            return self.norm(x)
        if self.kind == "global":
            return (x - self.mean) / self.std * self.weight + self.bias
        return x


class Conv2dSubsampling(nn.Module):
    """Two unpadded 3x3 stride-2 Conv2d + ReLU over (time, freq), then a Linear to ``out_dim``.

    ``(N, T, F) -> (N, T', out_dim)`` with ``T' = frames_after_subsampling(T)`` (the formula the
    prepare stage filters with). Receptive field 7 input frames, stride 4: output frame ``j`` sees
    input frames ``4j .. 4j+6`` only, which is what lets the LSTM encoder stream it exactly.
    """

    factor = 4
    receptive_field = 7

    def __init__(self, in_features: int = 80, out_dim: int = 256, channels: int = 64):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, stride=2),
            nn.ReLU(),
        )
        f = ((in_features - 3) // 2 + 1 - 3) // 2 + 1
        self.out = nn.Linear(channels * f, out_dim)

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, T, F), T >= 7; x_lens: (N,). Returns (N, T', out_dim) and lengths (N,)."""
        y = self.conv(x.unsqueeze(1))  # (N, C, T', F')
        n, c, t, f = y.shape
        y = self.out(y.transpose(1, 2).reshape(n, t, c * f))
        return y, frames_after_subsampling(x_lens).clamp(min=0)


def frames_after_subsampling(num_frames, factor: int = 4):
    """Encoder frames left after ``factor``x subsampling by stacked 3x3 stride-2 convolutions.

    Each conv without padding maps ``T -> (T - 3) // 2 + 1``; the encoders use the same formula,
    so the prepare stage filters exactly the utterances the models could not align.
    """
    t = num_frames
    f = factor
    while f > 1:
        t = (t - 3) // 2 + 1
        f //= 2
    return t


def min_input_frames(frame_stack: int = 1, ceil: bool = False, receptive_field: int = Conv2dSubsampling.receptive_field,
                     factor: int = Conv2dSubsampling.factor) -> int:
    """Fewest input frames that give an encoder at least one output frame.

    The convolutions need ``receptive_field`` frames for their first output and ``factor`` more
    for each next one; frame stacking by ``frame_stack`` that drops a trailing partial group
    (``ceil=False``, the streaming student) needs ``frame_stack`` of them, one that zero-pads it
    (``ceil=True``, the teacher) only one. Shared by the PyTorch encoders and the integer runtime,
    so the CLI's too-short check is the model's own arithmetic.
    """
    need = 1 if ceil else max(1, int(frame_stack))
    return receptive_field + factor * (need - 1)
