"""Acoustic activity from the fbank the device computes anyway: is anyone speaking?

A frame is speech when its energy (log of the summed mel power, in dB) is ``margin_db`` above the
noise floor, the quietest frame of the stream so far. The end-pointers wait for silence in the
audio as well as in the decoder: a student that hears nothing for a while (it deletes words, or
its best hypothesis switches to an older one) must not end a request the speaker is still saying.
An energy detector is the simplest device VAD and right for clean audio; in noise a neural one
(e.g. Silero VAD, sherpa-onnx's choice) would take its place behind the same two numbers.
"""

from __future__ import annotations

import math

import torch

DB = 10.0 / math.log(10.0)  # natural-log power -> dB


class EnergyVad:
    """Streaming: :meth:`push` each chunk of log-mel frames (T, F); ``speech_frames`` counts the
    frames found to be speech so far, ``trailing`` the non-speech frames since the last speech one."""

    def __init__(self, margin_db: float = 15.0):
        self.margin_db = float(margin_db)
        self.floor = math.inf
        self.frames = self.speech_frames = self.trailing = 0

    def push(self, feats: torch.Tensor) -> None:
        if feats.numel() == 0:
            return
        energy = (torch.logsumexp(feats.double(), dim=1) * DB).tolist()
        for e in energy:
            self.floor = min(self.floor, e)
            if e > self.floor + self.margin_db:
                self.speech_frames += 1
                self.trailing = 0
            else:
                self.trailing += 1
            self.frames += 1
