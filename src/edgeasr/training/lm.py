"""Lightning training of the cloud's :class:`edgeasr.lm.PieceLM`: cross-entropy per piece, dev
perplexity (summed NLL over summed predicted tokens, ``</s>`` included) as ``val/ppl``."""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from edgeasr.lm import PieceLM

from .module import warmup_cosine


def _as_list(batch: list[list[int]]) -> list[list[int]]:
    return batch


class LmDataModule(pl.LightningDataModule):
    """Sentences as piece-id lists; ``batch_size`` sentences per step, reshuffled every epoch from
    ``seed`` (the same order on every run)."""

    def __init__(self, train: Sequence[Sequence[int]], dev: Sequence[Sequence[int]], batch_size: int, seed: int):
        super().__init__()
        if not train:
            raise ValueError("train_lm: no training sentences left (all empty or held-out)")
        if not dev:
            raise ValueError("train_lm: no dev sentences to measure perplexity on")
        self.train, self.dev = [list(s) for s in train], [list(s) for s in dev]
        self.batch_size, self.seed = int(batch_size), int(seed)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, generator=g, collate_fn=_as_list,
                          drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dev, batch_size=max(self.batch_size, 256), shuffle=False, collate_fn=_as_list)


class LmLitModule(pl.LightningModule):
    """``optimizer``: ``{lr, weight_decay}`` (AdamW); ``scheduler``: ``{warmup_steps, total_steps,
    final_ratio}``, the transducers' warmup + cosine."""

    def __init__(self, model: PieceLM, optimizer: Mapping[str, Any], scheduler: Mapping[str, Any]):
        super().__init__()
        self.model = model
        self.optim_cfg, self.sched_cfg = dict(optimizer), dict(scheduler)
        self._val_nll = 0.0
        self._val_tokens = 0
        self.curve: list[dict[str, float]] = []  # (minutes, step, val_ppl) at every validation
        self._t0: float | None = None

    def on_fit_start(self) -> None:
        self._t0 = time.perf_counter()

    def training_step(self, batch: list[list[int]], batch_idx: int) -> torch.Tensor:
        nll, tokens = self.model.nll(batch)
        loss = nll.sum() / tokens.sum()
        self.log("train/loss", loss, batch_size=len(batch))
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=len(batch))
        return loss

    def validation_step(self, batch: list[list[int]], batch_idx: int) -> None:
        nll, tokens = self.model.nll(batch)
        self._val_nll += float(nll.double().sum())
        self._val_tokens += int(tokens.sum())

    def on_validation_epoch_end(self) -> None:
        loss = self._val_nll / max(1, self._val_tokens)
        self.log("val/loss", loss)
        ppl = math.exp(min(loss, 50.0))
        self.log("val/ppl", ppl, prog_bar=True)
        if not self.trainer.sanity_checking:
            minutes = (time.perf_counter() - self._t0) / 60.0 if self._t0 else 0.0
            self.curve.append({"minutes": round(minutes, 3), "step": self.global_step, "val_ppl": round(ppl, 4)})
        self._val_nll, self._val_tokens = 0.0, 0

    def configure_optimizers(self):
        c, s = self.optim_cfg, self.sched_cfg
        opt = torch.optim.AdamW(self.model.parameters(), lr=c["lr"], weight_decay=c.get("weight_decay", 0.0))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(s["warmup_steps"], s["total_steps"], s.get("final_ratio", 0.05)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def perplexity(model: PieceLM, sentences: Sequence[Sequence[int]], batch_size: int = 256) -> float:
    """exp(summed NLL / summed predicted tokens) over ``sentences``, eval mode."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(sentences), batch_size):
            nll, tokens = model.nll(sentences[i:i + batch_size])
            total, count = total + float(nll.double().sum()), count + int(tokens.sum())
    model.train(was)
    return math.exp(total / max(1, count))
