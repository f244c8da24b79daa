"""A left-to-right LSTM language model over the tokenizer's BPE pieces.

Id 0 (the transducer's blank, never part of a transcript) is the sentence boundary: a sentence
``y`` is scored as ``P(y_1 | <s>) … P(y_n | y_<n) P(</s> | y)`` with ``<s>`` = ``</s>`` = 0, so the
LM shares the tokenizer's ids and a sentence's end counts (a hypothesis cut short pays for it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from edgeasr.models.io import unreadable

BOUNDARY = 0  # <s> and </s>: the blank id


class PieceLM(nn.Module):
    """Embedding -> LSTM -> linear over ``vocab_size`` pieces (id 0 the sentence boundary).

    ``forward(tokens, lens)``: tokens ``(B, U)`` int64 (each row ``<s> y_1 … y_n``, padded),
    lens ``(B,)`` -> logits ``(B, U, vocab_size)``: position ``u`` predicts the next piece."""

    def __init__(self, vocab_size: int, embed_dim: int = 128, hidden: int = 256, layers: int = 2,
                 dropout: float = 0.1, tie_weights: bool = False):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size {vocab_size}: an LM needs the boundary id and at least one piece")
        self.config = {"vocab_size": int(vocab_size), "embed_dim": int(embed_dim), "hidden": int(hidden),
                       "layers": int(layers), "dropout": float(dropout), "tie_weights": bool(tie_weights)}
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.proj = nn.Linear(hidden, embed_dim) if tie_weights else None
        self.out = nn.Linear(embed_dim if tie_weights else hidden, vocab_size)
        if tie_weights:
            self.out.weight = self.embed.weight

    @property
    def vocab_size(self) -> int:
        return self.config["vocab_size"]

    def forward(self, tokens: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.embed(tokens))
        packed = nn.utils.rnn.pack_padded_sequence(x, lens.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=tokens.size(1))
        h = self.drop(h)
        return self.out(self.proj(h) if self.proj is not None else h)

    def nll(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sentence (piece ids, no boundaries) its negative log-likelihood in nats, ``</s>``
        included, and its number of predicted tokens (pieces + 1): two ``(B,)`` tensors."""
        inputs, targets, lens = batch_sentences(seqs, device=self.out.weight.device)
        logits = self(inputs, lens)
        logp = logits.log_softmax(-1).gather(2, targets.clamp(min=0)[..., None])[..., 0]
        mask = targets >= 0
        return -(logp * mask).sum(1), lens

    @torch.no_grad()
    def log_prob(self, seqs: Sequence[Sequence[int]], batch_size: int = 256) -> list[float]:
        """log P(sentence) in nats for each piece-id sequence, in eval mode, batched."""
        was = self.training
        self.eval()
        try:
            out: list[float] = []
            for i in range(0, len(seqs), batch_size):
                nll, _ = self.nll(seqs[i:i + batch_size])
                out.extend((-nll).double().tolist())
            return out
        finally:
            self.train(was)


def batch_sentences(seqs: Sequence[Sequence[int]], device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Piece-id sentences -> inputs ``(B, U)`` (``<s> y``), targets ``(B, U)`` (``y </s>``, padding
    -1) and lengths ``(B,)`` = ``len(y) + 1``."""
    if not seqs:
        raise ValueError("no sentences to batch")
    lens = torch.tensor([len(s) + 1 for s in seqs], dtype=torch.int64)
    u = int(lens.max())
    inputs = torch.zeros(len(seqs), u, dtype=torch.int64)
    targets = torch.full((len(seqs), u), -1, dtype=torch.int64)
    for i, s in enumerate(seqs):
        ids = torch.as_tensor(list(s), dtype=torch.int64)
        inputs[i, 1:len(s) + 1] = ids
        targets[i, :len(s)] = ids
        targets[i, len(s)] = BOUNDARY
    return inputs.to(device), targets.to(device), lens.to(device)


def save_lm(path: str | Path, model: PieceLM, meta: Mapping[str, Any] | None = None) -> None:
    """``{"config", "state_dict", "meta"}`` with torch.save, written to a temp file and renamed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": "edgeasr-lm", "config": model.config, "state_dict": model.state_dict(),
                "meta": dict(meta or {})}, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_lm(path: str | Path) -> tuple[PieceLM, dict]:
    """``(model in eval mode, meta)`` from :func:`save_lm`'s file; tensors only (``weights_only``)."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001: one line naming the file, whatever torch raised
        raise ValueError(f"{unreadable(path, e, 'edgeasr LM file')}; rerun the train_lm stage (`dvc repro train_lm`)") from None
    if not isinstance(blob, dict) or blob.get("format") != "edgeasr-lm":
        raise ValueError(f"{path}: not an edgeasr LM file (format {blob.get('format') if isinstance(blob, dict) else None!r}); "
                         "rerun the train_lm stage (`dvc repro train_lm`)")
    try:
        model = PieceLM(**blob["config"])
        model.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise ValueError(f"{path}: LM weights do not match its config ({type(e).__name__}: {e}); "
                         "rerun the train_lm stage (`dvc repro train_lm`)") from None
    return model.eval(), dict(blob.get("meta", {}))
