"""Attention biasing: the encoder frames attend over the user's list of phrases (a context-aware
transducer, Chang et al. 2021; the phrase encoder of CLAS, Pundak et al. 2018).

Each phrase (its BPE pieces) becomes one vector (a BLSTM over the pieces' embeddings, both final
states); a learned "no-bias" entry is always in the list, so an irrelevant or empty list can be
ignored. Multi-head attention from each encoder frame over the entries gives a context vector,
projected to the joiner's width and added to the encoder output: ``enc' = enc + out(attn(q(enc),
phrases))``. The list is known before the utterance starts and each frame attends on its own, so
a streaming encoder stays streaming. ``out`` starts at zero: attached to a trained model the
biaser changes nothing until it has learned something.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


@dataclass
class PhraseBatch:
    """Per utterance its phrases' token ids: ``ids`` (N, P, L) int64 padded with 0, ``lens`` (N, P)
    (0 for a padding phrase; an utterance may have none)."""

    ids: torch.Tensor
    lens: torch.Tensor

    @classmethod
    def collate(cls, lists: Sequence[Sequence[Sequence[int]]], device=None) -> "PhraseBatch":
        p = max([len(x) for x in lists] + [1])
        length = max([len(ph) for x in lists for ph in x] + [1])
        ids = torch.zeros(len(lists), p, length, dtype=torch.int64)
        lens = torch.zeros(len(lists), p, dtype=torch.int64)
        for i, phrases in enumerate(lists):
            for j, ph in enumerate(phrases):
                ids[i, j, : len(ph)] = torch.as_tensor(list(ph), dtype=torch.int64)
                lens[i, j] = len(ph)
        return cls(ids.to(device), lens.to(device))

    @classmethod
    def empty(cls, n: int, device=None) -> "PhraseBatch":
        """``n`` utterances without a list (only the "no bias" entry is attended)."""
        return cls.collate([[] for _ in range(n)], device)


class ContextBiaser(nn.Module):
    """``forward(enc (N, T, J), phrases) -> enc' (N, T, J)``; ``attention(...)`` also gives the
    weights (N, T, P + 1), entry 0 being "no bias"."""

    def __init__(self, vocab_size: int, joiner_dim: int, dim: int = 64, heads: int = 2):
        super().__init__()
        if dim % 2 or dim % heads:
            raise ValueError(f"biaser dim {dim} must be even and divisible by heads {heads}")
        self.embed = nn.Embedding(vocab_size, dim)
        self.phrase_rnn = nn.LSTM(dim, dim // 2, batch_first=True, bidirectional=True)
        self.no_bias = nn.Parameter(torch.randn(dim) * 0.1)
        self.query = nn.Linear(joiner_dim, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Linear(dim, joiner_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def encode_phrases(self, phrases: PhraseBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """-> entries (N, P + 1, D) with "no bias" first, and a mask (N, P + 1), True = padding."""
        n, p, length = phrases.ids.shape
        flat_ids, flat_lens = phrases.ids.reshape(n * p, length), phrases.lens.reshape(n * p)
        emb = self.embed(flat_ids)
        packed = pack_padded_sequence(emb, flat_lens.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.phrase_rnn(packed)                      # h: (2, N*P, D/2), final state of each direction
        vec = torch.cat([h[0], h[1]], dim=-1).reshape(n, p, -1)
        entries = torch.cat([self.no_bias.expand(n, 1, -1), vec], dim=1)
        mask = torch.cat([torch.zeros(n, 1, dtype=torch.bool, device=vec.device), phrases.lens == 0], dim=1)
        return entries, mask

    def attention(self, enc: torch.Tensor, phrases: PhraseBatch) -> tuple[torch.Tensor, torch.Tensor]:
        entries, mask = self.encode_phrases(phrases)
        ctx, weights = self.attn(self.query(enc), entries, entries, key_padding_mask=mask, need_weights=True)
        return enc + self.out(ctx), weights

    def forward(self, enc: torch.Tensor, phrases: PhraseBatch) -> torch.Tensor:
        return self.attention(enc, phrases)[0]
