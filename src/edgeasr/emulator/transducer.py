"""Emulated latency of one utterance through an RNN-T (encoder once, greedy predictor/joiner loop)."""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeasr.models.biasing import PhraseBatch

from .cost import CostReport, estimate
from .hw import HwProfile
from .profile import profile_layers


def _vocab_limit(predictor: nn.Module, vocab: int) -> int:
    """Token ids must be valid for the predictor's embedding as well as the joiner's output."""
    for m in predictor.modules():
        if isinstance(m, nn.Embedding):
            return min(vocab, m.num_embeddings)
    return vocab


def transducer_latency(
    model: nn.Module,
    hw: HwProfile,
    num_input_frames: int,
    num_tokens: int,
    bits: int = 32,
    chunk_frames: int | None = None,
    *,
    sparse_format: str = "auto",
    placement: str = "greedy",
    feature_dim: int = 80,
    context_size: int | None = None,
    blank_id: int = 0,
    context_phrases: int = 0,
    phrase_tokens: int = 4,
) -> CostReport:
    """Roofline latency of decoding one utterance of `num_input_frames` feature frames into `num_tokens` tokens.

    Runs model.encoder(x (1,T,feature_dim), x_lens) once; then greedy decoding with at most one symbol per
    frame: the predictor once at the start and once per token, model.joiner.forward_frame once per encoder
    frame plus once per emitted token. The predictor is driven through edgeasr.models' decoding interface
    (init_decoder / step_tokens: stateless and LSTM predictors alike) when it has one, else through
    step(context (N, context_size) int64) -> (N, J). Tokens are spread evenly over the encoder frames
    (capped at one per frame); what is emitted does not change the cost, so no trained model is needed.

    Weight reads ("passes"):
      - encoder: once per utterance, or once per chunk when streaming (ceil(T / chunk_frames)); the MACs
        are those of the whole utterance (chunk edges/left context not modelled).
      - predictor and joiner: once per call. Greedy decoding is sequential (each step needs the previous
        argmax), so decoder weights cannot be fetched once and reused across steps unless they sit in SRAM,
        and even then the MAC array re-reads them from SRAM every step.
    placement 'greedy' (default here) pins the most-read layers (the decoder) in SRAM when the whole model
    does not fit, as an NPU compiler would; 'model' is estimate()'s all-or-nothing rule.
    A model with an attention biaser (``model.biaser``) runs it on the encoder output with a list of
    ``context_phrases`` phrases of ``phrase_tokens`` tokens: per frame its query/output projections
    and the attention over the list; the list's encoding (BLSTM, key/value projections) counted once
    per utterance, an upper bound (a device encodes a list once, when it changes).
    report.meta holds the frame/token/chunk counts. Callers: emulated_latency_ms = total_s * 1000,
    emulated_rtf = total_s / (num_input_frames * frame shift).
    """
    if num_input_frames < 1 or num_tokens < 0:
        raise ValueError("num_input_frames must be >= 1 and num_tokens >= 0")
    if chunk_frames is not None and chunk_frames < 1:
        raise ValueError("chunk_frames must be >= 1")
    encoder, predictor, joiner = model.encoder, model.predictor, model.joiner
    if context_size is None:
        context_size = int(getattr(predictor, "context_size", 2))
    feature_dim = int(getattr(encoder, "input_dim", feature_dim))
    p0 = next(model.parameters())
    x = torch.randn(1, num_input_frames, feature_dim, device=p0.device, dtype=p0.dtype)
    x_lens = torch.tensor([num_input_frames], device=p0.device)
    meta: dict = {"num_input_frames": int(num_input_frames), "requested_tokens": int(num_tokens)}

    biaser = getattr(model, "biaser", None)
    if biaser is not None:
        phrases = PhraseBatch.collate([[[1 + (i + j) % 7 for j in range(phrase_tokens)] for i in range(context_phrases)]],
                                      p0.device)
        meta["context_phrases"] = int(context_phrases)

    def decode() -> None:
        out, out_lens = encoder(x, x_lens)
        if biaser is not None:
            out = biaser(out, phrases)
        frames = int(out_lens[0]) if out_lens is not None else out.shape[1]
        frames = min(frames, out.shape[1])
        tokens = min(num_tokens, frames)
        emit = {(i * frames) // tokens for i in range(tokens)} if tokens else set()
        if hasattr(predictor, "init_decoder") and hasattr(predictor, "step_tokens"):
            pred, state = predictor.init_decoder(1, p0.device)

            def advance(tok: int):
                return predictor.step_tokens(torch.tensor([tok], dtype=torch.int64, device=p0.device), state)
        else:
            state = torch.full((1, context_size), blank_id, dtype=torch.int64, device=p0.device)
            pred = predictor.step(state)

            def advance(tok: int):
                tok_t = torch.full((1, 1), tok, dtype=torch.int64, device=p0.device)
                ctx = torch.cat([state[:, 1:], tok_t], dim=1)
                return predictor.step(ctx), ctx

        vocab = None
        for t in range(frames):
            enc = out[:, t]
            logits = joiner.forward_frame(enc, pred)
            if t in emit:
                if vocab is None:
                    vocab = _vocab_limit(predictor, logits.shape[-1])
                tok = 1 + (t % (vocab - 1)) if vocab > 1 else 0  # any non-blank id
                if tok == blank_id:
                    tok = (tok + 1) % vocab
                pred, state = advance(tok)
                joiner.forward_frame(enc, pred)
        meta.update(encoder_frames=frames, tokens=tokens)

    was_training = [(m, m.training) for m in model.modules()]
    model.eval()  # train-mode BatchNorm would update its running stats during profiling
    try:
        with torch.no_grad():
            records = profile_layers(decode, model)
    finally:
        for m, flag in was_training:
            m.train(flag)

    chunks = math.ceil(num_input_frames / chunk_frames) if chunk_frames else 1
    meta.update(chunks=chunks, chunk_frames=int(chunk_frames) if chunk_frames else 0)
    passes = {r.name: (chunks if r.name.startswith(("encoder.", "biaser.")) or r.name in ("encoder", "biaser")
                       else max(r.calls, 1))
              for r in records}
    report = estimate(records, model, hw, bits=bits, sparse_format=sparse_format, layer_passes=passes,
                      placement=placement)
    report.meta = meta
    return report
