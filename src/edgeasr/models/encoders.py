"""Transducer encoders: a Conformer teacher and a streaming LSTM student.

Both map log-mel features ``(N, T, 80)`` to ``(N, T', output_dim)`` with ``T'`` from
``frames_after_subsampling`` and end in a Linear to the joiner dimension, because sherpa-onnx
expects the projections inside the encoder (NOTES.md §8).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .residual import residual_lstm
from .subsampling import Conv2dSubsampling, InputNorm, frames_after_subsampling, min_input_frames


def _trim(x: torch.Tensor, x_lens: torch.Tensor) -> torch.Tensor:
    # Drop padding beyond the longest utterance so T' == max(out_lens): torchaudio's Conformer
    # mask and rnnt_loss both require it.
    return x[:, : int(x_lens.max())]


def stack_frames(h: torch.Tensor, h_lens: torch.Tensor, k: int, proj: nn.Module, ceil: bool):
    """Frame-rate reduction: k consecutive frames ``(N, T, D)`` -> one ``(N, T/k, D)`` frame via ``proj``
    (Linear(kD, D)). ``ceil`` zero-pads a trailing partial group (offline teacher); otherwise it is
    dropped (streaming student: a chunk never has to wait for frames that may not come)."""
    if ceil:
        h = nn.functional.pad(h, (0, 0, 0, (-h.size(1)) % k))
        h_lens = torch.div(h_lens + k - 1, k, rounding_mode="floor")
    else:
        h = h[:, : (h.size(1) // k) * k]
        h_lens = torch.div(h_lens, k, rounding_mode="floor")
    return proj(h.reshape(h.size(0), h.size(1) // k, k * h.size(2))), h_lens


class ConformerEncoder(nn.Module):
    """Input norm -> Conv2dSubsampling (4x) -> torchaudio Conformer -> Linear(d_model, output_dim).

    Full-context (offline) teacher. ``forward(x (N, T, F), x_lens (N,)) -> (N, T', output_dim), (N,)``.
    """

    subsampling_factor = 4

    def __init__(
        self,
        input_dim: int = 80,
        d_model: int = 256,
        num_layers: int = 8,
        num_heads: int = 4,
        ffn_dim: int = 1024,
        conv_kernel: int = 31,
        dropout: float = 0.1,
        output_dim: int = 256,
        subsampling_channels: int = 64,
        input_norm: str = "layer",
        frame_stack: int = 1,
    ):
        super().__init__()
        from torchaudio.models import Conformer

        self.input_dim = input_dim
        self.output_dim = output_dim
        self.input_norm = InputNorm(input_dim, input_norm)
        self.subsampling = Conv2dSubsampling(input_dim, d_model, subsampling_channels)
        # Frame-rate reduction after the convs: k stacked 40 ms frames -> one (40k ms) frame. The
        # Conformer's cost is ~linear in frames (quadratic for attention), so k=2 halves it; speech
        # at ~7 BPE tokens/s still has more frames than tokens at 80 ms.
        self.frame_stack = int(frame_stack)
        self.subsampling_factor = 4 * self.frame_stack
        self.stack = nn.Linear(d_model * self.frame_stack, d_model) if self.frame_stack > 1 else None
        self.conformer = Conformer(
            input_dim=d_model,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            num_layers=num_layers,
            depthwise_conv_kernel_size=conv_kernel,
            dropout=dropout,
        )
        self.output = nn.Linear(d_model, output_dim)

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _trim(x, x_lens)
        h, h_lens = self.subsampling(self.input_norm(x), x_lens)
        if self.stack is not None:
            h, h_lens = stack_frames(h, h_lens, self.frame_stack, self.stack, ceil=True)
        h, h_lens = self.conformer(h, h_lens)
        return self.output(h), h_lens

    @property
    def min_input_frames(self) -> int:
        """Fewest input frames with an output frame (a partial stacked group is zero-padded)."""
        sub = self.subsampling
        return min_input_frames(self.frame_stack, ceil=True, receptive_field=sub.receptive_field, factor=sub.factor)


class LstmState(NamedTuple):
    """Streaming state of :class:`LstmEncoder`.

    h, c: (num_layers, N, hidden) LSTM states (sherpa-onnx's ``state0``/``state1``).
    frames: (N, 6 + 4(k-1), F) raw input frames received but not yet consumed (the convolutions'
    receptive field - 1, plus an incomplete group of k stacked frames); frame_lens: (N,) how many
    of them are valid.
    """

    h: torch.Tensor
    c: torch.Tensor
    frames: torch.Tensor
    frame_lens: torch.Tensor


class LstmEncoder(nn.Module):
    """Streaming unidirectional student encoder.

    Input norm -> Conv2dSubsampling (4x, to ``hidden``) -> optional stacking of ``frame_stack``
    frames (Linear(k hidden, hidden); a trailing partial group is dropped) -> ``num_layers`` x
    [x + Dropout(LSTM(LayerNorm(x)))] -> LayerNorm -> Linear(hidden, output_dim). A plain stack of LSTMs never learned from audio in
    our budget; pre-norm residual blocks did (NOTES.md §7).

    * ``forward(x, x_lens)``: whole utterances, for training.
    * ``infer(x, x_lens, state)``: chunk by chunk; any chunking gives the same output as ``forward``.
    * ``streaming_forward(x, h, c)``: one fixed chunk with no frame cache (the caller overlaps
      chunks by 3 frames: ``T = 4 s m + 3`` input frames -> ``m`` output frames, s = frame_stack), the shape
      sherpa-onnx's LSTM ``OnlineRecognizer`` drives (x, state0, state1) -> (out, state0, state1).
    """

    subsampling_factor = 4

    def __init__(
        self,
        input_dim: int = 80,
        hidden: int = 320,
        num_layers: int = 3,
        output_dim: int = 320,
        subsampling_channels: int = 64,
        dropout: float = 0.1,
        input_norm: str = "layer",
        frame_stack: int = 1,
    ):
        super().__init__()
        self.input_dim = input_dim
        self.hidden = hidden
        self.num_layers = num_layers
        self.output_dim = output_dim
        self.input_norm = InputNorm(input_dim, input_norm)
        self.subsampling = Conv2dSubsampling(input_dim, hidden, subsampling_channels)
        self.frame_stack = int(frame_stack)
        self.subsampling_factor = 4 * self.frame_stack
        self.stack = nn.Linear(hidden * self.frame_stack, hidden) if self.frame_stack > 1 else None
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(num_layers))
        # One nn.LSTM per layer (not num_layers=L) so norm + residual can sit between layers.
        self.lstms = nn.ModuleList(nn.LSTM(hidden, hidden, batch_first=True) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.final_norm = nn.LayerNorm(hidden)
        self.output = nn.Linear(hidden, output_dim)

    # ---- training -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, T, F), x_lens: (N,) -> (N, T', output_dim), (N,).

        Padding is left in: a unidirectional LSTM's valid outputs never see the frames after them.
        """
        x = _trim(x, x_lens)
        h, h_lens = self._subsample(x, x_lens)
        h, _ = residual_lstm(h, self._norm, lambda i, y, _: (self.lstms[i](y)[0], None), self._add_dropout,
                             [None] * self.num_layers)
        return self.output(self.final_norm(h)), h_lens

    @property
    def min_input_frames(self) -> int:
        """Fewest input frames with an output frame: ``4 s + 3`` (a partial stacked group is dropped)."""
        sub = self.subsampling
        return min_input_frames(self.frame_stack, receptive_field=sub.receptive_field, factor=sub.factor)

    # the residual LSTM block (edgeasr.models.residual); the cells differ per entry point
    def _norm(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.norms[i](x)

    def _add_dropout(self, i: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(y)

    @staticmethod
    def _add(i: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y

    def _subsample(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, h_lens = self.subsampling(self.input_norm(x), x_lens)
        if self.stack is not None:
            h, h_lens = stack_frames(h, h_lens, self.frame_stack, self.stack, ceil=False)
        return h, h_lens

    # ---- streaming ------------------------------------------------------------------------
    def init_state(self, batch_size: int = 1, device=None, dtype: torch.dtype = torch.float32) -> LstmState:
        """Zero LSTM states and an empty frame cache."""
        z = torch.zeros(self.num_layers, batch_size, self.hidden, device=device, dtype=dtype)
        rf = self.subsampling.receptive_field
        return LstmState(
            z,
            z.clone(),
            torch.zeros(batch_size, rf - 1 + 4 * (self.frame_stack - 1), self.input_dim, device=device, dtype=dtype),
            torch.zeros(batch_size, dtype=torch.int64, device=device),
        )

    def streaming_forward(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One full chunk, every row valid. x: (N, T, F), T >= 4 s + 3; h, c: (num_layers, N, hidden).

        Returns out (N, T', output_dim), new h, new c. Export-friendly (no Python control flow on values).
        """
        y, _ = self._subsample(x, torch.full((x.size(0),), x.size(1), device=x.device))
        states = [(h[i : i + 1], c[i : i + 1]) for i in range(self.num_layers)]
        y, states = residual_lstm(y, self._norm, lambda i, z, hc: self.lstms[i](z, hc), self._add, states)
        return self.output(self.final_norm(y)), torch.cat([s[0] for s in states], 0), torch.cat([s[1] for s in states], 0)

    def infer(
        self, x: torch.Tensor, x_lens: torch.Tensor, state: LstmState | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, LstmState]:
        """Next chunk of each stream. x: (N, T, F) with x_lens (N,) valid frames (0 allowed).

        Returns out (N, K, output_dim), out_lens (N,) new encoder frames per stream, and the new
        state. Frames the convolutions cannot use yet are kept in the state, so concatenating the
        outputs of any chunking equals ``forward`` on the whole utterance. Use in eval mode.
        """
        n = x.size(0)
        if state is None:
            state = self.init_state(n, x.device, x.dtype)
        cache, cache_lens = state.frames, state.frame_lens
        x_lens = x_lens.to(cache_lens.device)
        total = cache_lens + x_lens
        width = max(int(total.max()), 1)
        # buf[i] = cache[i, :cache_lens[i]] ++ x[i, :x_lens[i]], gathered without a Python loop.
        both = torch.cat([cache, x], dim=1)
        pos = torch.arange(width, device=x.device).unsqueeze(0)
        src = torch.where(pos < cache_lens[:, None], pos, pos - cache_lens[:, None] + cache.size(1))
        src = src.clamp(max=both.size(1) - 1)
        buf = torch.gather(both, 1, src.unsqueeze(-1).expand(n, width, x.size(2)))
        buf = buf * (pos < total[:, None]).unsqueeze(-1).to(buf.dtype)

        k = self.frame_stack
        out_lens = torch.div(frames_after_subsampling(total).clamp(min=0), k, rounding_mode="floor")
        h, c = state.h, state.c
        kmax = int(out_lens.max())
        if kmax > 0:
            y, _ = self.subsampling(self.input_norm(buf), total)
            y = y[:, : kmax * k]
            if self.stack is not None:
                y = self.stack(y.reshape(n, kmax, k * y.size(2)))
            rows = (out_lens > 0).nonzero().squeeze(1)
            lens_r = out_lens[rows].cpu()

            def packed_cell(i: int, z: torch.Tensor, hc):
                # Packing stops each stream's LSTM state at its own last valid frame.
                packed = pack_padded_sequence(z, lens_r, batch_first=True, enforce_sorted=False)
                o, hc = self.lstms[i](packed, hc)
                return pad_packed_sequence(o, batch_first=True, total_length=kmax)[0], hc

            states = [(h[i : i + 1, rows].contiguous(), c[i : i + 1, rows].contiguous()) for i in range(self.num_layers)]
            yr, states = residual_lstm(y[rows], self._norm, packed_cell, self._add, states)
            h, c = h.clone(), c.clone()
            for i, (hi, ci) in enumerate(states):
                h[i, rows] = hi[0]
                c[i, rows] = ci[0]
            out = torch.zeros(n, kmax, self.output_dim, device=x.device, dtype=yr.dtype)
            out[rows] = self.output(self.final_norm(yr))
        else:
            out = x.new_zeros(n, 0, self.output_dim)

        # Keep the frames from the next output's first input frame (4 k out_len) on: at most 6 + 4(k-1).
        keep = cache.size(1)
        start = self.subsampling_factor * out_lens
        idx = (start[:, None] + torch.arange(keep, device=x.device)[None]).clamp(max=width - 1)
        new_cache = torch.gather(buf, 1, idx.unsqueeze(-1).expand(n, keep, x.size(2)))
        new_lens = total - start
        new_cache = new_cache * (torch.arange(keep, device=x.device)[None] < new_lens[:, None]).unsqueeze(-1)
        return out, out_lens, LstmState(h, c, new_cache, new_lens)
