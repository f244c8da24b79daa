"""Lightning callbacks that drive a :class:`Compression` during training: gradual magnitude pruning
and the quantization regularizer. Any stage can attach them (``compress``, then ``mwer``, which keeps
the masks and the fake quantizer but no longer changes them)."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt  # already imported by pytorch_lightning: no extra cost
import pytorch_lightning as pl
import torch

from .prune import check_scope, cubic_sparsity, prune_masks
from .quant import acos_penalty, grid_distance
from .wrap import Compression


class GradualPruning(pl.Callback):
    """Cubic schedule from ``initial`` to ``final`` sparsity over steps ``[start, end]``, masks
    recomputed every ``update_every`` steps from the magnitudes of the masked weights.

    ``scope``: ``"layer"`` (every layer at the target) or ``"global"`` (one threshold). ``block``
    and ``n_m`` give structured sparsity for hardware that needs it (per layer only).
    """

    def __init__(self, comp: Compression, final: float = 0.5, initial: float = 0.0, start: int = 0, end: int = 1000,
                 update_every: int = 50, scope: str = "layer", block: int = 1, n_m: tuple[int, int] | None = None):
        check_scope(scope, block, n_m)
        if not 0.0 <= initial <= final < 1.0:
            raise ValueError(f"need 0 <= initial ({initial}) <= final ({final}) < 1")
        self.comp, self.final, self.initial = comp, final, initial
        self.start, self.end, self.update_every = start, end, max(1, update_every)
        self.scope, self.block, self.n_m = scope, block, tuple(n_m) if n_m else None
        self.history: list[tuple[int, float, float]] = []  # (step, target, measured)

    def target(self, step: int) -> float:
        return cubic_sparsity(step, self.initial, self.final, self.start, self.end)

    @torch.no_grad()
    def apply(self, sparsity: float) -> None:
        masks = prune_masks([t.effective() for t in self.comp.targets], sparsity, self.scope, self.block, self.n_m)
        # never revive a pruned weight (its effective magnitude is 0, so it sorts first anyway)
        self.comp.set_masks([m & t.mask for m, t in zip(masks, self.comp.targets)])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        due = step == self.end or (self.start <= step <= self.end and (step - self.start) % self.update_every == 0)
        if not due and not (step > self.end and self.comp.sparsity() + 1e-9 < self.final and not self.n_m):
            return
        target = self.target(step)
        self.apply(target)
        measured = self.comp.sparsity()
        self.history.append((step, target, measured))
        pl_module.log_dict({"compress/sparsity_target": target, "compress/sparsity": measured})

    def figure(self):
        matplotlib.use("Agg")  # process-wide: switched only when a figure is drawn
        fig, ax = plt.subplots(figsize=(5, 3.2))
        steps = list(range(0, max(self.end, 1) + max(1, self.end // 10)))
        ax.plot(steps, [self.target(s) for s in steps], label="cubic schedule")
        if self.history:
            ax.plot([h[0] for h in self.history], [h[2] for h in self.history], "o", ms=3, label="measured")
        ax.set_xlabel("step")
        ax.set_ylabel("sparsity")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return fig


class QuantRegularizer(pl.Callback):
    """Adds ``weight(step) * sum(1 - |cos(pi w / scale)|)`` (see :func:`acos_penalty`) to the loss
    gradient of the master weights after every backward, and logs the mean distance of the weights
    to the grid. ``weight`` ramps linearly from 0 over ``ramp_steps`` starting at ``start``.

    The penalty acts on the float master weights, which is where the straight-through estimator
    delivers the loss gradient: it pulls them onto the grid in the backward pass, so fake
    quantization changes the forward less and less as training goes on.
    """

    def __init__(self, comp: Compression, weight: float = 1e-4, start: int = 0, ramp_steps: int = 500,
                 log_every: int = 20):
        if comp.bits is None:
            raise ValueError("the quantization regularizer needs a Compression with bits")
        self.comp, self.weight, self.start, self.ramp = comp, float(weight), int(start), max(1, int(ramp_steps))
        self.log_every = log_every
        self.history: list[tuple[int, float]] = []  # (step, mean grid distance)

    def weight_at(self, step: int) -> float:
        if step < self.start:
            return 0.0
        return self.weight * min(1.0, (step - self.start + 1) / self.ramp)

    def mean_grid_distance(self) -> float:
        n = sum(t.mask.numel() for t in self.comp.targets)
        return sum(float(grid_distance(t.effective(), self.comp.bits)) * t.mask.numel() for t in self.comp.targets) / n

    def on_after_backward(self, trainer, pl_module):
        step = trainer.global_step
        lam = self.weight_at(step)
        if lam > 0:
            params = [t.orig for t in self.comp.targets]
            with torch.enable_grad():
                reg = sum(acos_penalty(t.effective(), self.comp.bits) for t in self.comp.targets)
                grads = torch.autograd.grad(lam * reg, params)
            for p, g in zip(params, grads):
                p.grad = g if p.grad is None else p.grad + g
        if step % self.log_every == 0:
            d = self.mean_grid_distance()
            self.history.append((step, d))
            pl_module.log_dict({"compress/grid_distance": d, "compress/reg_weight": lam})
