"""Callbacks: training throughput (audio seconds per wall second), the learning curve
(validation WER against wall-clock minutes), and what an exact resume needs beyond Lightning's
checkpoint: the random generators' states and ``last.ckpt`` after a step's validation."""

from __future__ import annotations

import random
import time

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing global
from pytorch_lightning.callbacks import ModelCheckpoint


class Throughput(pl.Callback):
    """Audio seconds trained per wall-clock second, over training steps only (validation excluded)."""

    def __init__(self, frame_shift: float = 0.01):
        self.frame_shift = frame_shift
        self.audio_s = 0.0
        self.wall_s = 0.0
        self._t = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.wall_s += time.perf_counter() - self._t
        self.audio_s += float(batch["feature_lens"].sum()) * self.frame_shift * trainer.world_size

    @property
    def audio_s_per_s(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s else 0.0


class LearningCurve(pl.Callback):
    """Records ``(minutes since fit start, step, audio hours trained on, val/wer)`` at every
    validation and logs ``val/minutes`` so the MLflow UI can plot WER against time.

    Minutes count training and validation alike (what a user waits for); ``audio_h`` is the audio
    the optimizer has seen, the axis on which runs on machines of different speed compare."""

    def __init__(self, frame_shift: float = 0.01):
        self.points: list[dict[str, float]] = []
        self.frame_shift = frame_shift
        self._t0 = None
        self._audio_s = 0.0
        self._offset_min = 0.0  # minutes spent before a resume

    def on_fit_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._audio_s += float(batch["feature_lens"].sum()) * self.frame_shift * trainer.world_size

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or "val/wer" not in trainer.callback_metrics:
            return
        minutes = self._elapsed_min()
        point = {"minutes": round(minutes, 3), "step": trainer.global_step,
                 "audio_h": round(self._audio_s / 3600.0, 4), "val_wer": float(trainer.callback_metrics["val/wer"])}
        self.points.append(point)
        if trainer.is_global_zero and trainer.logger is not None:
            trainer.logger.log_metrics({"val/minutes": minutes}, step=trainer.global_step)

    def _elapsed_min(self) -> float:
        return self._offset_min + (time.perf_counter() - self._t0) / 60.0 if self._t0 else self._offset_min

    def state_dict(self) -> dict:
        # A resumed run continues its curve where the checkpoint left it.
        return {"points": self.points, "audio_s": self._audio_s, "minutes": self._elapsed_min()}

    def load_state_dict(self, state: dict) -> None:
        self.points = list(state.get("points", []))
        self._audio_s = float(state.get("audio_s", 0.0))
        self._offset_min = float(state.get("minutes", 0.0))

    def figure(self, title: str):
        fig = Figure(figsize=(5, 3.2))
        ax = fig.subplots()
        ax.plot([p["minutes"] for p in self.points], [p["val_wer"] for p in self.points], marker="o")
        ax.set_xlabel("training wall-clock minutes")
        ax.set_ylabel("dev WER (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return fig


class RngState(pl.Callback):
    """The global random generators (torch, numpy, python) in checkpoints, restored on resume.

    Without it a resumed run draws dropout masks (and SpecAugment) from the seed's start, not
    where the uninterrupted run was. Restored at train start, not on load: building the resumed
    run's DataLoader iterator draws a seed from torch's generator, which the uninterrupted run
    drew before the checkpoint. Plain tensors and ints only: Lightning loads ``weights_only``."""

    def __init__(self):
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {"torch": torch.get_rng_state(), "python": random.getstate(),
                "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}

    def load_state_dict(self, state: dict) -> None:
        self._pending = state

    def on_train_start(self, trainer, pl_module):
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps``; at a step that also validates, after the validation.

    Lightning's own saves before it, and a run resumed from there skips that validation (it
    fast-forwards its progress): the learning curve loses the point and the best checkpoint may
    be another. After the validation, the checkpoint holds its result and the best so far."""

    def __init__(self, dirpath, every_n_train_steps: int, val_every_n_steps: int):
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=every_n_train_steps,
                         enable_version_counter=False)
        self.val_every = int(val_every_n_steps)

    @property
    def state_key(self) -> str:
        # the key of the ModelCheckpoint it replaced: checkpoints written before still resume with its state
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def _validates(self, trainer) -> bool:
        # Lightning validates after the batch whose global step is a multiple of val_check_interval
        return self.val_every > 0 and trainer.global_step % self.val_every == 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self._validates(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module):
        step = trainer.global_step
        if (not trainer.sanity_checking and step % self._every_n_train_steps == 0
                and step != self._last_global_step_saved):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
