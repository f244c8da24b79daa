"""Transducer joiner: ``Linear(tanh(enc + pred))``.

Encoder and predictor already project to ``joiner_dim``, so the joiner is only the output layer
(the sherpa-onnx joiner contract: (encoder_out (N, J), decoder_out (N, J)) -> raw logits (N, V)).
"""

from __future__ import annotations

import torch
from torch import nn


class Joiner(nn.Module):
    def __init__(self, joiner_dim: int, vocab_size: int):
        super().__init__()
        self.joiner_dim = joiner_dim
        self.vocab_size = vocab_size
        self.output = nn.Linear(joiner_dim, vocab_size)

    def forward(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """enc: (N, T, J), pred: (N, U+1, J) -> raw logits (N, T, U+1, V)."""
        return self.output(torch.tanh(enc.unsqueeze(2) + pred.unsqueeze(1)))

    def forward_frame(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """enc: (N, J), pred: (N, J) -> raw logits (N, V)."""
        return self.output(torch.tanh(enc + pred))
