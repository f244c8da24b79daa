"""Magnitude pruning with the gradual (cubic) schedule of Zhu & Gupta (2017).

``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3`` inside the window ``[t0, t1]``; masks are
recomputed every ``update_every`` steps from the magnitudes of the currently *masked* weights, so a
pruned weight never comes back and sparsity only grows. :func:`prune_masks` is the mask rule (scope,
block, N:M) both the gradual schedule and the one-shot PTQ baseline apply.
"""

from __future__ import annotations

from typing import Sequence

import torch


def cubic_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Target sparsity at ``step`` (``initial`` before ``start``, ``final`` from ``end`` on)."""
    if step <= start:
        return initial
    if step >= end:
        return final
    frac = (step - start) / max(1, end - start)
    return final + (initial - final) * (1.0 - frac) ** 3


def _score(w: torch.Tensor, block: int) -> torch.Tensor:
    """Per-weight importance; blocks of ``block`` consecutive input weights share their L1 norm."""
    a = w.detach().abs().reshape(w.size(0), -1)
    if block > 1:
        if a.size(1) % block:
            raise ValueError(f"block size {block} does not divide the {a.size(1)} inputs of a {tuple(w.shape)} weight")
        a = a.reshape(a.size(0), -1, block).sum(-1, keepdim=True).expand(-1, -1, block).reshape(a.size(0), -1)
    return a


def layer_mask(w: torch.Tensor, sparsity: float, block: int = 1, n_m: tuple[int, int] | None = None) -> torch.Tensor:
    """Boolean keep-mask of ``w``'s shape with ``round(sparsity * numel)`` zeros (the smallest |w|).

    ``n_m=(n, m)``: keep the n largest of every m consecutive input weights (N:M structure,
    sparsity fixed at 1 - n/m). ``block``: prune whole blocks of ``block`` consecutive weights.
    """
    if n_m is not None:
        n, m = n_m
        a = w.detach().abs().reshape(w.size(0), -1)
        if a.size(1) % m:
            raise ValueError(f"N:M group size {m} does not divide the {a.size(1)} inputs of a {tuple(w.shape)} weight")
        g = a.reshape(a.size(0), -1, m)
        keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, g.topk(n, dim=-1).indices, True)
        return keep.reshape(w.shape)
    score = _score(w, block).flatten()
    k = int(round(sparsity * score.numel()))
    keep = torch.ones(score.numel(), dtype=torch.bool, device=w.device)
    if k > 0:
        # stable sort: ties (e.g. already-pruned zeros) are resolved by position, deterministically
        keep[torch.sort(score, stable=True).indices[:k]] = False
    return keep.reshape(w.shape)


def global_masks(weights: Sequence[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """One magnitude threshold over all ``weights`` together (layers keep different sparsities)."""
    scores = torch.cat([w.detach().abs().flatten() for w in weights])
    k = int(round(sparsity * scores.numel()))
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.sort(scores, stable=True).indices[:k]] = False
    out, i = [], 0
    for w in weights:
        out.append(keep[i : i + w.numel()].reshape(w.shape))
        i += w.numel()
    return out


SCOPES = ("layer", "global")


def check_scope(scope: str, block: int = 1, n_m: tuple[int, int] | None = None) -> None:
    """Reject a scope :func:`prune_masks` does not know, and structure (block / N:M) without ``layer``."""
    if scope not in SCOPES:
        raise ValueError(f"pruning scope must be 'layer' or 'global', got {scope!r}")
    if scope == "global" and (block > 1 or n_m):
        raise ValueError("block / N:M structure needs scope='layer'")


def prune_masks(weights: Sequence[torch.Tensor], sparsity: float, scope: str = "layer", block: int = 1,
                n_m: tuple[int, int] | None = None) -> list[torch.Tensor]:
    """Keep-masks of ``weights`` at ``sparsity``: ``scope="global"``: one threshold over all of them
    (:func:`global_masks`); ``"layer"``: each at the target, with the ``block`` / ``n_m`` structure of
    :func:`layer_mask`."""
    check_scope(scope, block, n_m)
    if scope == "global":
        return global_masks(weights, sparsity)
    return [layer_mask(w, sparsity, block, n_m) for w in weights]
