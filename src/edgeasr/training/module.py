"""``TransducerLitModule``: RNN-T (+ optional CTC) training of any ``edgeasr.models.Transducer``.

Free of I/O: the model, the text decoder (token ids -> text) and all hyper-parameters come in
through the constructor; data comes from the DataModule; checkpoints and logs from the Trainer.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import pytorch_lightning as pl
import torch
import torchaudio.transforms as T
from torch import nn
from torchmetrics.aggregation import MeanMetric
from torchmetrics.text import WordErrorRate

from edgeasr.decoding import greedy_search


class SpecAugment(nn.Module):
    """Frequency and time masking (torchaudio transforms), independent per utterance.
    ``(N, T, F) -> (N, T, F)``; identity in eval mode."""

    def __init__(self, freq_masks: int = 2, freq_width: int = 15, time_masks: int = 2, time_width: int = 40,
                 time_max_ratio: float = 0.1):
        super().__init__()
        self.freq = nn.ModuleList(T.FrequencyMasking(freq_width, iid_masks=True) for _ in range(freq_masks))
        self.time = nn.ModuleList(T.TimeMasking(time_width, iid_masks=True, p=time_max_ratio) for _ in range(time_masks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or (not self.freq and not self.time):
            return x
        y = x.transpose(1, 2).unsqueeze(1)  # (N, 1, F, T)
        for m in [*self.freq, *self.time]:
            y = m(y)
        return y.squeeze(1).transpose(1, 2)


def warmup_cosine(warmup_steps: int, total_steps: int, final_ratio: float = 0.05) -> Callable[[int], float]:
    """LR multiplier: linear warmup, then cosine decay to ``final_ratio`` at ``total_steps``."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


class TransducerLitModule(pl.LightningModule):
    """Trains ``model`` with the RNN-T loss (summed over the batch, normalised per utterance).

    Args:
        model: a ``Transducer``.
        decode_text: token ids -> text (the tokenizer's ``decode``), for ``val/wer``.
        optimizer: ``{lr, weight_decay, betas}`` for AdamW.
        scheduler: ``{warmup_steps, total_steps, final_ratio}``.
        specaug: kwargs of :class:`SpecAugment` or ``None``.
        best_after_step: validations before this step never count as the best checkpoint.
        contexts: for a model with an attention biaser, the training context lists
            (:class:`~edgeasr.training.contexts.TrainingContexts`); validation decodes without a list.
    """

    def __init__(self, model: nn.Module, decode_text: Callable[[Sequence[int]], str],
                 optimizer: Mapping[str, Any], scheduler: Mapping[str, Any],
                 specaug: Mapping[str, Any] | None = None, best_after_step: int = 0, contexts=None):
        super().__init__()
        if contexts is not None and getattr(model, "biaser", None) is None:
            raise ValueError("training context lists were given for a model without an attention biaser")
        self.contexts = contexts
        # Checkpoint selection ("val/wer_select", which ModelCheckpoint monitors) ignores
        # validations before this step, e.g. while pruning is still removing weights.
        self.best_after_step = int(best_after_step)
        self.model = model
        self.decode_text = decode_text
        self.optim_cfg, self.sched_cfg = dict(optimizer), dict(scheduler)
        self.specaug = SpecAugment(**specaug) if specaug else None
        # torchmetrics sums errors and reference words (and syncs them across DDP ranks):
        # the corpus WER, never a mean of per-batch WERs; the loss likewise per utterance (Lightning's
        # sync_dist would average the ranks' means, unweighted).
        self.val_wer = WordErrorRate()
        self.val_loss = MeanMetric()

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor):
        return self.model.encode(x, x_lens)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        x, x_lens = batch["features"], batch["feature_lens"]
        if self.specaug is not None:
            x = self.specaug(x)
        if self.contexts is not None:  # the step's lists, also for subclasses' extra losses
            batch = {**batch, "phrases": self.contexts.phrases(batch, self.global_step, x.device)}
        out = self.model(x, x_lens, batch["tokens"], return_logits=self.needs_logits, phrases=batch.get("phrases"))
        n = out["num_utts"]
        extra = self.extra_losses(batch, out)  # summed over the batch, like out["loss"]
        loss = (out["loss"] + sum(extra.values(), out["loss"].new_zeros(()))) / n
        self.log_dict({"train/loss": loss, "train/rnnt_loss": out["rnnt_loss"] / n, "train/ctc_loss": out["ctc_loss"] / n,
                       **{f"train/{k}": v / n for k, v in extra.items()}}, batch_size=n, prog_bar=False)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        return loss

    #: subclasses that add losses on the lattice logits set this
    needs_logits = False

    def extra_losses(self, batch: Mapping[str, Any], out: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Weighted, batch-summed losses added to the transducer's (none here); logged as ``train/<name>``."""
        return {}

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        x, x_lens = batch["features"], batch["feature_lens"]
        enc, enc_lens = self.model.encode(x, x_lens)
        hyps = [self.decode_text(h) for h in greedy_search(self.model, enc, enc_lens)]
        n = len(hyps)
        self.val_loss.update(self.model.rnnt_loss(enc, enc_lens, batch["tokens"]) / n, weight=n)
        self.val_wer.update(hyps, batch["texts"])

    def on_validation_epoch_end(self) -> None:
        wer = 100.0 * self.val_wer.compute()  # the same on every rank: sync_dist averages equal values
        self.log("val/rnnt_loss", self.val_loss.compute(), sync_dist=True)
        self.log("val/wer", wer, prog_bar=True, sync_dist=True)
        self.log("val/wer_select", wer if self.global_step >= self.best_after_step else torch.full_like(wer, 1e9),
                 sync_dist=True)
        self.val_wer.reset()
        self.val_loss.reset()

    def configure_optimizers(self):
        c = self.optim_cfg
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 else decay).append(p)  # no weight decay on biases and norms
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": c.get("weight_decay", 0.0)}, {"params": no_decay, "weight_decay": 0.0}],
            lr=c["lr"], betas=tuple(c.get("betas", (0.9, 0.98))),
        )
        s = self.sched_cfg
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(s["warmup_steps"], s["total_steps"], s.get("final_ratio", 0.05)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
