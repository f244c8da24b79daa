"""Masks and fake quantization on a model's weight matrices, through forward pre-hooks.

Like ``torch.nn.utils.prune``: each compressed weight ``W`` becomes a parameter ``W_orig`` (the
float master weights the optimizer updates) and a buffer ``W_mask``; before every forward the hook
sets ``W = fake_quant(W_orig * W_mask)``. LSTM weights work too (``nn.LSTM`` keeps its flat-weight
list in sync on attribute assignment). Masked weights are exactly zero in every forward pass and
get zero gradient, so pruned weights stay pruned through any later training.

``materialize()`` removes the hooks and writes the effective weights back as plain parameters
(pruned entries 0, the rest on the quantization grid), the form saved between stages: the masks
are recovered from the exact zeros by :meth:`Compression.attach` with ``masks_from_zeros``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from edgeasr.quantspec import SKIP, is_compressed

from .quant import fake_quant


@dataclass
class Target:
    name: str  # dotted name in the model, e.g. "encoder.lstms.0.weight_ih_l0"
    module: nn.Module
    attr: str

    @property
    def orig(self) -> nn.Parameter:
        return getattr(self.module, self.attr + "_orig")

    @property
    def mask(self) -> torch.Tensor:
        return getattr(self.module, self.attr + "_mask")

    def effective(self) -> torch.Tensor:
        return self.orig * self.mask


def weight_targets(model: nn.Module, skip: tuple[str, ...] = SKIP) -> Iterator[tuple[str, nn.Module, str]]:
    """Every compressed weight (:func:`edgeasr.quantspec.is_compressed`): what ships and is compressed."""
    for mod_name, module in model.named_modules():
        for attr, p in list(module.named_parameters(recurse=False)):
            name = f"{mod_name}.{attr}" if mod_name else attr
            if is_compressed(name, p.dim(), skip):
                yield name, module, attr


class Compression:
    """Pruning masks + fake quantization over ``model``'s weight matrices.

    Args:
        bits: weight bits of the fake quantizer (``None``: masks only, float weights).
        masks_from_zeros: start from masks that keep exactly the non-zero weights (a model saved by
            an earlier compression stage); otherwise all-ones masks.
    """

    def __init__(self, model: nn.Module, bits: int | None = 8, masks_from_zeros: bool = False,
                 skip: tuple[str, ...] = SKIP):
        self.model = model
        self.bits = bits
        self.targets: list[Target] = []
        self._by_module: dict[int, list[Target]] = {}  # id(module that runs) -> the weights it reads
        modules: dict[int, nn.Module] = {}
        # nn.MultiheadAttention reads its out_proj's weight without calling out_proj: hook the MHA
        runner = {id(m.out_proj): m for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
        for name, module, attr in weight_targets(model, skip):
            p = module._parameters.pop(attr)
            module.register_parameter(attr + "_orig", p)
            mask = (p.detach() != 0) if masks_from_zeros else torch.ones_like(p, dtype=torch.bool)
            module.register_buffer(attr + "_mask", mask)
            setattr(module, attr, p.detach().clone())
            t = Target(name, module, attr)
            self.targets.append(t)
            owner = runner.get(id(module), module)
            self._by_module.setdefault(id(owner), []).append(t)
            modules[id(owner)] = owner
        self._hooks = [m.register_forward_pre_hook(self._hook) for m in modules.values()]
        self.refresh()

    def _weight(self, t: Target) -> torch.Tensor:
        w = t.effective()
        return fake_quant(w, self.bits) if self.bits else w

    def _hook(self, module: nn.Module, args) -> None:
        for t in self._by_module[id(module)]:
            setattr(t.module, t.attr, self._weight(t))

    def refresh(self) -> None:
        """Recompute every effective weight now (callers that read weights outside a forward)."""
        for t in self.targets:
            setattr(t.module, t.attr, self._weight(t))

    # ---- masks ---------------------------------------------------------------------------
    @torch.no_grad()
    def set_masks(self, masks: list[torch.Tensor]) -> None:
        for t, m in zip(self.targets, masks, strict=True):
            t.mask.copy_(m)
        self.refresh()

    def sparsity(self) -> float:
        """Fraction of masked-out weights over all compressed weights."""
        zeros = sum(int((~t.mask).sum()) for t in self.targets)
        return zeros / max(1, sum(t.mask.numel() for t in self.targets))

    def layer_table(self) -> list[dict]:
        return [{"layer": t.name, "shape": list(t.mask.shape), "params": t.mask.numel(),
                 "sparsity": round(1 - float(t.mask.float().mean()), 4)} for t in self.targets]

    # ---- back to a plain model -------------------------------------------------------------
    @torch.no_grad()
    def materialize(self) -> nn.Module:
        """Remove hooks, masks and master weights; the model keeps plain parameters holding the
        effective (masked, fake-quantized) weights. Returns the model."""
        for h in self._hooks:
            h.remove()
        for t in self.targets:
            w = self._weight(t).detach().clone()
            delattr(t.module, t.attr + "_orig")
            delattr(t.module, t.attr + "_mask")
            setattr(t.module, t.attr, nn.Parameter(w))  # nn.LSTM's __setattr__ re-syncs its flat weights
        self.targets, self._hooks = [], []
        return self.model
