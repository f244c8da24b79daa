"""Callbacks: training throughput (audio seconds per wall second) and the learning curve
(validation WER against wall-clock minutes)."""

from __future__ import annotations

import time

import pytorch_lightning as pl
from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing global


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
