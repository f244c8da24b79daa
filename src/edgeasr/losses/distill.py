"""Collapsed-distribution RNN-T distillation (Panchapagesan et al., 2021).

At every node (t, u) of the RNN-T lattice along a target sequence y, the V-way output
distribution is collapsed to three events: emit the next target label y_{u+1}, emit blank, or
emit anything else. The student matches the teacher's 3-way distribution by KL(teacher || student)
summed over the valid nodes. At u = U (all labels emitted) there is no next label: the event has
probability 0 for both models and the KL is over {blank, rest}.
"""

from __future__ import annotations

import torch

LABEL, BLANK, REST = 0, 1, 2


def collapsed_log_probs(logits: torch.Tensor, y: torch.Tensor, y_lens: torch.Tensor, blank: int = 0) -> torch.Tensor:
    """Raw joiner logits ``(N, T, U+1, V)`` and padded targets ``y (N, U)``, ``y_lens (N,)`` ->
    log-probabilities ``(N, T, U+1, 3)`` of [next label, blank, rest] (float32).

    ``log P(rest)`` is a logsumexp over the other V-2 symbols, so it is exact and stable.
    """
    logits = logits.float()
    n, t, u1, v = logits.shape
    if y.size(1) != u1 - 1:
        raise ValueError(f"logits have U+1={u1} label positions but y has U={y.size(1)}")
    lse = torch.logsumexp(logits, dim=-1)  # (N, T, U+1)
    # Next label at node u is y[u]; at u = U use blank as a placeholder (masked to -inf below).
    nxt = torch.cat([y, y.new_full((n, 1), blank)], dim=1).clamp(min=0)  # (N, U+1)
    has_label = torch.arange(u1, device=y.device)[None] < y_lens[:, None]  # (N, U+1)
    idx = nxt[:, None, :, None].expand(n, t, u1, 1)
    l_label = logits.gather(-1, idx).squeeze(-1)
    l_blank = logits[..., blank]
    masked = logits.scatter(-1, idx, float("-inf"))
    masked[..., blank] = float("-inf")
    l_rest = torch.logsumexp(masked, dim=-1)
    ninf = torch.tensor(float("-inf"), device=logits.device)
    l_label = torch.where(has_label[:, None, :], l_label, ninf)
    return torch.stack([l_label, l_blank, l_rest], dim=-1) - lse.unsqueeze(-1)


def node_mask(t_lens: torch.Tensor, y_lens: torch.Tensor, t_max: int, u_max: int) -> torch.Tensor:
    """``(N, t_max, u_max + 1)`` bool: node (t, u) exists for utterance n (t < T_n, u <= U_n)."""
    t_ok = torch.arange(t_max, device=t_lens.device)[None] < t_lens[:, None]
    u_ok = torch.arange(u_max + 1, device=y_lens.device)[None] <= y_lens[:, None]
    return t_ok[:, :, None] & u_ok[:, None, :]


def collapsed_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed KL(teacher || student) over the nodes, weighted by ``mask``.

    teacher_logp, student_logp: ``(N, T, U+1, 3)`` log-probabilities; mask: ``(N, T, U+1)`` bool
    (every valid node counts once) or float node weights (e.g. :func:`node_occupancy`).
    Events with teacher probability 0 contribute 0 (the u = U label slot). The teacher side is
    detached: gradients flow into the student only.
    """
    tl = teacher_logp.detach().float()
    p = tl.exp()
    present = p > 0
    diff = torch.where(present, tl - student_logp, torch.zeros_like(student_logp))
    kl = (p * diff).sum(-1)
    return (kl * mask.to(kl.dtype)).sum()


def node_occupancy(logp: torch.Tensor, t_lens: torch.Tensor, y_lens: torch.Tensor) -> torch.Tensor:
    """Log-probability that an alignment passes through each lattice node, under the model whose
    collapsed log-probabilities ``logp (N, T, U+1, 3)`` are given (forward-backward over the RNN-T
    lattice: blank moves t -> t+1, the next label moves u -> u+1; the path ends with a blank at
    (T_n - 1, U_n)). Returns ``(N, T, U+1)``, -inf outside each utterance's lattice.

    Used to weight the distillation KL by where the teacher's alignments actually go.
    """
    n, t_max, u1, _ = logp.shape
    lp = logp.double()  # the u-recursion below subtracts cumulative sums: float64 keeps it exact
    label, blank = lp[..., LABEL], lp[..., BLANK]
    ninf = float("-inf")
    u_idx = torch.arange(u1, device=lp.device)
    valid_u = u_idx[None] <= y_lens[:, None]  # (N, U+1)
    valid_label = u_idx[None] < y_lens[:, None]
    label = torch.where(valid_label[:, None], label, torch.full_like(label, ninf))

    def along_u(start: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        # x(u) = logaddexp(start(u), x(u-1) + lab(u-1)) for all u at once: with C(u) = sum_{j<u} lab(j),
        # x(u) = C(u) + logcumsumexp_k(start(k) - C(k)). -inf labels cut the chain (masked below).
        c = torch.cat([torch.zeros_like(lab[:, :1]), torch.cumsum(lab.clamp(min=-1e4), 1)[:, :-1]], 1)
        return c + torch.logcumsumexp(start - c, dim=1)

    alpha = torch.full((n, t_max, u1), ninf, device=lp.device, dtype=lp.dtype)
    start = torch.full((n, u1), ninf, device=lp.device, dtype=lp.dtype)
    start[:, 0] = 0.0
    for t in range(t_max):
        if t > 0:
            start = alpha[:, t - 1] + blank[:, t - 1]
        a = along_u(start, label[:, t])
        alpha[:, t] = torch.where(valid_u, a, torch.full_like(a, ninf))

    beta = torch.full((n, t_max, u1), ninf, device=lp.device, dtype=lp.dtype)
    rev = torch.arange(u1 - 1, -1, -1, device=lp.device)
    for t in range(t_max - 1, -1, -1):
        last = (t_lens - 1) == t  # (N,)
        nxt = beta[:, t + 1] + blank[:, t] if t + 1 < t_max else torch.full((n, u1), ninf, device=lp.device, dtype=lp.dtype)
        final = torch.where(u_idx[None] == y_lens[:, None], blank[:, t], torch.full_like(blank[:, t], ninf))
        start = torch.where(last[:, None], final, nxt)
        # beta(u) = logaddexp(start(u), beta(u+1) + label(u)): the same recursion on reversed u.
        lab_r = torch.cat([label[:, t, :-1], torch.full((n, 1), ninf, device=lp.device, dtype=lp.dtype)], 1)[:, rev]
        lab_r = torch.cat([lab_r[:, 1:], lab_r[:, :1]], 1)  # reversed position k uses label(u1-1-(k-1)-1)
        b = along_u(start[:, rev], lab_r)[:, rev]
        beta[:, t] = torch.where(valid_u & (t < t_lens)[:, None], b, torch.full_like(b, ninf))
    rows, last_t = torch.arange(n, device=lp.device), (t_lens - 1).clamp(min=0)
    total = alpha[rows, last_t, y_lens] + blank[rows, last_t, y_lens]
    occ = alpha + beta - total[:, None, None]
    t_ok = torch.arange(t_max, device=lp.device)[None] < t_lens[:, None]
    return torch.where(t_ok[:, :, None] & valid_u[:, None], occ, torch.full_like(occ, ninf)).float()
