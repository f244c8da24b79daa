"""Batched greedy transducer search, offline and streaming (shared loop, so they agree exactly)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class GreedyState:
    """Decoder state carried across encoder chunks, one row per stream.

    hyps: tokens so far; pred_out: (N, J) predictor output for each row's history;
    pred_state: the predictor's opaque state; frames: encoder frames consumed per stream.
    """

    hyps: list[list[int]]
    pred_out: torch.Tensor
    pred_state: Any
    frames: list[int] = field(default_factory=list)


def init_greedy_state(model, batch_size: int, device=None) -> GreedyState:
    pred_out, pred_state = model.predictor.init_decoder(batch_size, device)
    return GreedyState([[] for _ in range(batch_size)], pred_out, pred_state, [0] * batch_size)


@torch.no_grad()
def _greedy_frames(model, enc_out: torch.Tensor, enc_lens: torch.Tensor, st: GreedyState, max_sym_per_frame: int) -> None:
    predictor, joiner, blank = model.predictor, model.joiner, model.blank_id
    enc_lens = enc_lens.to(enc_out.device)
    for t in range(enc_out.size(1)):
        active = (enc_lens > t).nonzero().squeeze(1)
        for _ in range(max_sym_per_frame):
            if active.numel() == 0:
                break
            logits = joiner.forward_frame(enc_out[active, t], st.pred_out[active])
            y = logits.argmax(-1)
            emit = y != blank
            if not bool(emit.any()):
                break
            rows, toks = active[emit], y[emit]
            for r, k in zip(rows.tolist(), toks.tolist()):
                st.hyps[r].append(k)
            # Only the rows that emitted advance the predictor.
            out, sub = predictor.step_tokens(toks, predictor.select_state(st.pred_state, rows))
            st.pred_out = st.pred_out.clone()
            st.pred_out[rows] = out
            st.pred_state = predictor.scatter_state(st.pred_state, rows, sub)
            active = rows
    for i, n in enumerate(enc_lens.tolist()):
        st.frames[i] += int(min(n, enc_out.size(1)))


def greedy_search(model, enc_out: torch.Tensor, enc_lens: torch.Tensor, max_sym_per_frame: int = 1) -> list[list[int]]:
    """enc_out: (N, T, J), enc_lens: (N,) -> token ids per utterance (blank removed).

    All utterances advance frame by frame together; at most ``max_sym_per_frame`` tokens per frame
    (1 matches sherpa-onnx's greedy search and ``modified_beam_search``).
    """
    st = init_greedy_state(model, enc_out.size(0), enc_out.device)
    _greedy_frames(model, enc_out, enc_lens, st, max_sym_per_frame)
    return st.hyps


def greedy_search_streaming(
    model, chunk_enc_out: torch.Tensor, enc_lens: torch.Tensor, decoder_state: GreedyState | None = None,
    max_sym_per_frame: int = 1,
) -> tuple[list[list[int]], GreedyState]:
    """Decode the next encoder chunk (N, T, J) with ``enc_lens`` valid frames per stream (0 allowed).

    Returns the cumulative hypotheses and the state to pass with the next chunk; the concatenation
    of chunks decodes exactly as :func:`greedy_search` on the whole encoder output.
    """
    st = decoder_state if decoder_state is not None else init_greedy_state(model, chunk_enc_out.size(0), chunk_enc_out.device)
    _greedy_frames(model, chunk_enc_out, enc_lens, st, max_sym_per_frame)
    return st.hyps, st
