"""Minimum word error rate loss over N-best lists (Guo et al., Interspeech 2020, for RNN-T).

Each hypothesis y_i of an utterance's N-best list is scored by its full-sum RNN-T log-probability
``log P(y_i | x)`` (all alignments), renormalised over the list:

    P̂_i = exp(log P(y_i | x)) / Σ_j exp(log P(y_j | x))        (softmax over the N-best)
    L_mwer = Σ_i P̂_i (W_i - W̄)                                 W̄ = mean of W over the list

with W_i the word errors of y_i against the reference. Subtracting W̄ does not change the gradient
(Σ_i P̂_i = 1, so it only shifts the loss by a constant) but centres the loss at 0: the value is the
expected number of errors relative to the list's average, negative when the model already prefers
its better hypotheses. The gradient with respect to the score of hypothesis i is
``P̂_i (W_i - E_P̂[W])``: it lowers hypotheses worse than the expected error and raises better ones.
"""

from __future__ import annotations

import math

import torch


def mwer_loss(nbest_log_probs: torch.Tensor, word_errors: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-utterance MWER loss.

    Args:
        nbest_log_probs: ``(N, B)`` log P(y_i | x) of up to B hypotheses per utterance (float; the
            differentiable full-sum scores, i.e. ``-Transducer.rnnt_loss(..., reduction="none")``).
            Missing hypotheses may hold anything (``-inf`` by convention) when ``mask`` is given.
        word_errors: ``(N, B)`` word errors (edit distance in words) of each hypothesis against
            its reference; entries outside ``mask`` are ignored.
        mask: ``(N, B)`` bool, True for real hypotheses. Default: the finite entries of
            ``nbest_log_probs``.

    Returns:
        ``(N,)`` loss per utterance, ``Σ_i P̂_i (W_i - W̄)`` over the valid hypotheses; 0 (with a
        zero gradient) for an utterance with fewer than two valid hypotheses, where there is
        nothing to discriminate.
    """
    if nbest_log_probs.dim() != 2 or word_errors.shape != nbest_log_probs.shape:
        raise ValueError(f"need (N, B) scores and errors of one shape, got {tuple(nbest_log_probs.shape)} "
                         f"and {tuple(word_errors.shape)}")
    if mask is None:
        mask = torch.isfinite(nbest_log_probs)
    elif mask.shape != nbest_log_probs.shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match scores {tuple(nbest_log_probs.shape)}")
    mask = mask.to(torch.bool)
    if bool((mask & ~torch.isfinite(nbest_log_probs)).any()):
        raise ValueError("a hypothesis inside the mask has a non-finite score")
    scores = nbest_log_probs.float().masked_fill(~mask, -math.inf)
    n_valid = mask.sum(dim=1)
    active = n_valid >= 2
    # rows with no valid hypothesis would softmax to NaN: give them a dummy 0 score (masked out below)
    scores = torch.where(active.unsqueeze(1), scores, torch.zeros_like(scores))
    p_hat = scores.softmax(dim=1)
    w = word_errors.to(p_hat.dtype).masked_fill(~mask, 0.0)
    w_bar = w.sum(dim=1, keepdim=True) / n_valid.clamp(min=1).unsqueeze(1)
    loss = (p_hat * (w - w_bar)).masked_fill(~mask, 0.0).sum(dim=1)
    return torch.where(active, loss, torch.zeros_like(loss))


def nbest_posteriors(nbest_log_probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, B)`` P̂ (the scores renormalised over each N-best list; 0 outside ``mask``)."""
    if mask is None:
        mask = torch.isfinite(nbest_log_probs)
    scores = nbest_log_probs.float().masked_fill(~mask.to(torch.bool), -math.inf)
    any_valid = mask.any(dim=1, keepdim=True)
    return torch.where(any_valid, scores, torch.zeros_like(scores)).softmax(dim=1) * mask
