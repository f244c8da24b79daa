"""Prediction networks (the transducer "decoder") behind one decoding interface.

Training: ``forward(y (N, U), y_lens (N,)) -> (N, U+1, output_dim)``; labels come without a start
symbol and row ``u`` is the output conditioned on labels ``y[:, :u]``.

Decoding (used by :mod:`edgeasr.decoding`, the same for every predictor):

* ``init_decoder(N, device) -> (out (N, J), state)``: output and state for the empty history.
* ``step_tokens(tokens (N,), state) -> (out (N, J), state)``: append one emitted token per row.
* ``select_state(state, index) -> state``: rows ``index`` (repeats allowed: beam expansion).
* ``scatter_state(state, index, sub) -> state``: a copy of ``state`` with rows ``index`` replaced.

``state`` is opaque to callers: a (N, context_size) int64 token window for the stateless
predictor, an ``(h, c)`` pair of (num_layers, N, hidden) for the LSTM.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class StatelessPredictor(nn.Module):
    """Embedding + depthwise Conv1d over the last ``context_size`` tokens + ReLU + Linear.

    The sherpa-onnx decoder contract (NOTES.md §8): ``step(context (N, context_size)) -> (N, J)``,
    start context ``[-1] * (context_size - 1) + [blank_id]`` and -1 embeds to zeros.
    """

    def __init__(self, vocab_size: int, embed_dim: int, context_size: int = 2, output_dim: int = 320, blank_id: int = 0):
        super().__init__()
        if context_size < 1:
            raise ValueError("context_size must be >= 1")
        self.vocab_size = vocab_size
        self.context_size = context_size
        self.output_dim = output_dim
        self.blank_id = blank_id
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        # Depthwise: one kernel per channel mixes the context cheaply (icefall's stateless decoder).
        self.conv = (
            nn.Conv1d(embed_dim, embed_dim, kernel_size=context_size, groups=embed_dim, bias=False)
            if context_size > 1
            else None
        )
        self.output = nn.Linear(embed_dim, output_dim)

    def start_context(self, batch_size: int, device=None) -> torch.Tensor:
        ctx = torch.full((batch_size, self.context_size), -1, dtype=torch.int64, device=device)
        ctx[:, -1] = self.blank_id
        return ctx

    def _embed(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding(y.clamp(min=0)) * (y >= 0).unsqueeze(-1).to(self.embedding.weight.dtype)

    def _head(self, emb: torch.Tensor) -> torch.Tensor:
        """emb: (N, L, E) -> (N, L - context_size + 1, output_dim)."""
        if self.conv is not None:
            emb = self.conv(emb.transpose(1, 2)).transpose(1, 2)
        return self.output(F.relu(emb))

    def forward(self, y: torch.Tensor, y_lens: torch.Tensor | None = None) -> torch.Tensor:
        """y: (N, U) int64 labels (padding value irrelevant) -> (N, U+1, output_dim)."""
        ys = torch.cat([self.start_context(y.size(0), y.device), y], dim=1)
        return self._head(self._embed(ys))

    def step(self, context: torch.Tensor) -> torch.Tensor:
        """context: (N, context_size) int64, -1 = nothing -> (N, output_dim)."""
        return self._head(self._embed(context))[:, -1]

    # ---- decoding interface -----------------------------------------------------------------
    def init_decoder(self, batch_size: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = self.start_context(batch_size, device)
        return self.step(ctx), ctx

    def step_tokens(self, tokens: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = torch.cat([state[:, 1:], tokens.reshape(-1, 1).to(state.dtype)], dim=1)
        return self.step(ctx), ctx

    @staticmethod
    def select_state(state: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return state[index]

    @staticmethod
    def scatter_state(state: torch.Tensor, index: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
        out = state.clone()
        out[index] = sub
        return out


class LstmPredictor(nn.Module):
    """Embedding -> LSTM -> Linear; the blank id doubles as start-of-sequence.

    Not exportable to sherpa-onnx's offline/online transducers (they need a stateless decoder);
    kept for comparisons.
    """

    def __init__(
        self, vocab_size: int, embed_dim: int, hidden: int = 320, num_layers: int = 1, output_dim: int = 320,
        blank_id: int = 0, dropout: float = 0.1,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden = hidden
        self.num_layers = num_layers
        self.output_dim = output_dim
        self.blank_id = blank_id
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=num_layers, batch_first=True)
        self.output = nn.Linear(hidden, output_dim)

    def forward(self, y: torch.Tensor, y_lens: torch.Tensor | None = None) -> torch.Tensor:
        """y: (N, U) int64 labels -> (N, U+1, output_dim). Padding only affects rows past y_lens."""
        sos = torch.full((y.size(0), 1), self.blank_id, dtype=torch.int64, device=y.device)
        ys = torch.cat([sos, y.clamp(min=0)], dim=1)
        out, _ = self.lstm(self.dropout(self.embedding(ys)))
        return self.output(out)

    def step(
        self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """tokens: (N, 1) int64; state: (h, c) each (num_layers, N, hidden) or None -> ((N, J), state)."""
        out, state = self.lstm(self.dropout(self.embedding(tokens.clamp(min=0))), state)
        return self.output(out[:, -1]), state

    # ---- decoding interface -----------------------------------------------------------------
    def init_decoder(self, batch_size: int, device=None):
        sos = torch.full((batch_size, 1), self.blank_id, dtype=torch.int64, device=device)
        return self.step(sos, None)

    def step_tokens(self, tokens: torch.Tensor, state):
        return self.step(tokens.reshape(-1, 1), state)

    @staticmethod
    def select_state(state, index: torch.Tensor):
        return tuple(s[:, index] for s in state)

    @staticmethod
    def scatter_state(state, index: torch.Tensor, sub) -> Any:
        out = tuple(s.clone() for s in state)
        for o, s in zip(out, sub):
            o[:, index] = s
        return out
