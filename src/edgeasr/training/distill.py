"""Teacher-student training of a transducer: RNN-T loss + weight x collapsed-distribution KL.

``DistillLitModule`` is free of I/O: teacher targets arrive in the batch (``teacher_logp``), made
by :func:`teacher_targets` once per stage (see ``edgeasr.stages.distill`` for why cached).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from edgeasr.losses import collapsed_kl, collapsed_log_probs, node_mask, node_occupancy
from edgeasr.models.transducer import pad_labels

from .module import TransducerLitModule


class DistillLitModule(TransducerLitModule):
    """``loss = rnnt + ctc_weight * ctc + kd_weight * KL`` per utterance.

    The batch may carry ``teacher_logp`` ``(N, T_t, U+1, 3)`` (float16/32, -inf where an event is
    impossible) and ``teacher_lens`` ``(N,)``; rows without teacher targets have
    ``teacher_lens == 0`` and contribute no KL. The KL runs over the nodes both models have
    (``t < min(T_student, T_teacher)``: frame counts may differ by one at the end).
    """

    def __init__(self, *args, kd_weight: float = 1.0, kd_delay: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.kd_weight = float(kd_weight)
        self.kd_delay = int(kd_delay)

    @property
    def needs_logits(self) -> bool:
        return self.kd_weight > 0

    def extra_losses(self, batch: Mapping[str, Any], out: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        kd = out["loss"].new_zeros(())
        if self.kd_weight > 0 and batch.get("teacher_logp") is not None:
            kd = distill_loss(out["logits"], out["y"], out["y_lens"], out["enc_lens"], batch["teacher_logp"],
                              batch["teacher_lens"], self.model.blank_id, self.kd_delay)
        return {"kd_loss": self.kd_weight * kd}


def distill_loss(logits: torch.Tensor, y: torch.Tensor, y_lens: torch.Tensor, enc_lens: torch.Tensor,
                 teacher_logp: torch.Tensor, teacher_lens: torch.Tensor, blank: int = 0, delay: int = 0) -> torch.Tensor:
    """Summed collapsed KL between the student's lattice ``logits (N, T_s, U+1, V)`` and teacher
    targets ``(N, T_t, U'+1, 3)`` along the same padded targets ``y (N, U)``: every valid node
    counts once. Targets with a 4th channel (log node occupancy, ``teacher_targets(...,
    occupancy=True)``) weight each node by the probability that the teacher's alignments pass it.

    ``delay`` d: the student's frame t is matched with the teacher's frame t - d (its first d frames
    get no KL). A full-context teacher emits tokens before a causal student can have heard them;
    the delay lets the student emit later than the teacher.
    """
    s_logp = collapsed_log_probs(logits, y, y_lens, blank)
    if delay > 0:
        s_logp, enc_lens = s_logp[:, delay:], (enc_lens - delay).clamp(min=0)
    t_max = min(s_logp.size(1), teacher_logp.size(1))
    u1 = s_logp.size(2)
    if teacher_logp.size(2) < u1:
        raise ValueError(f"teacher targets cover {teacher_logp.size(2) - 1} labels, the batch has {u1 - 1}")
    t_logp = teacher_logp[:, :t_max, :u1].to(s_logp.device)
    lens = torch.minimum(enc_lens.to(teacher_lens.device), teacher_lens).to(s_logp.device)
    mask = node_mask(lens, y_lens.to(s_logp.device), t_max, u1 - 1)
    if t_logp.size(-1) == 4:
        mask = mask * t_logp[..., 3].float().exp()
        t_logp = t_logp[..., :3]
    return collapsed_kl(t_logp, s_logp[:, :t_max], mask)


@torch.inference_mode()
def teacher_targets(teacher: nn.Module, batches, progress: Any = None, occupancy: bool = False) -> dict[str, torch.Tensor]:
    """Collapsed 3-way teacher log-probabilities per cut along its training target.

    ``batches`` yields dicts with ``features``, ``feature_lens``, ``tokens`` and ``cut_ids`` (the
    DataModule's); returns ``{cut_id: float16 tensor (T_n, U_n + 1, 3)}``, with a 4th channel, the
    log node occupancy of the teacher's alignments, when ``occupancy``.
    """
    teacher.eval()
    device = next(teacher.parameters()).device
    out: dict[str, torch.Tensor] = {}
    for b in batches:
        enc, enc_lens = teacher.encode(b["features"].to(device), b["feature_lens"].to(device))
        y, y_lens = pad_labels(b["tokens"], teacher.blank_id, device)
        logp = collapsed_log_probs(teacher.joint(enc, y, y_lens), y, y_lens, teacher.blank_id)
        if occupancy:
            occ = node_occupancy(logp, enc_lens, y_lens)
            logp = torch.cat([logp, occ.unsqueeze(-1)], dim=-1)
        for i, cut_id in enumerate(b["cut_ids"]):
            # host memory: the cache is every training cut's; Lightning moves each batch's share
            out[cut_id] = logp[i, : int(enc_lens[i]), : int(y_lens[i]) + 1].to("cpu", torch.float16).clone()
        if progress is not None:
            progress(float(b["feature_lens"].sum()) * 0.01)
    return out


def collate_targets(targets: Mapping[str, torch.Tensor], cut_ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad per-cut targets to ``(N, T_max, U_max + 1, 3)`` (-inf padding) and their frame counts ``(N,)``;
    cuts without targets get length 0."""
    items = [targets.get(c) for c in cut_ids]
    t_max = max([t.size(0) for t in items if t is not None], default=0)
    u_max = max([t.size(1) for t in items if t is not None], default=1)
    channels = next((t.size(-1) for t in items if t is not None), 3)
    pad = torch.full((len(items), t_max, u_max, channels), -math.inf, dtype=torch.float16)
    lens = torch.zeros(len(items), dtype=torch.int64)
    for i, t in enumerate(items):
        if t is not None:
            pad[i, : t.size(0), : t.size(1)] = t
            lens[i] = t.size(0)
    return pad, lens
