"""Minimum word error rate fine-tuning of a transducer on N-best lists decoded on the fly.

``MwerLitModule`` is free of I/O, like its parent: each training step

1. runs the usual forward (RNN-T + CTC loss, summed over the batch);
2. decodes the batch's N-best lists with the batched modified beam search, in eval mode and
   without gradients, from the CURRENT weights (on the fly: see ``conf/config.yaml`` ``mwer:``
   for the measured cost against semi-on-the-fly decoding);
3. counts each hypothesis' word errors against the reference text (the same alignment the
   reported WER uses, :class:`edgeasr.metrics.WerAccumulator`);
4. scores every hypothesis with the differentiable full-sum RNN-T log-probability on the
   training-mode encoder output repeated per hypothesis;
5. adds ``mwer_weight * Σ_utts mwer_loss`` to the transducer loss (the RNN-T loss stays as the
   regulariser, Guo et al. 2020).
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence

import torch

from edgeasr.decoding import modified_beam_search
from edgeasr.losses import mwer_loss, nbest_posteriors
from edgeasr.metrics import WerAccumulator

from .module import TransducerLitModule


def word_errors(ref: str, hyp: str) -> int:
    """Insertions + deletions + substitutions of ``hyp`` against ``ref`` (whitespace-split words),
    counted exactly as the reported WER counts them."""
    acc = WerAccumulator()
    acc.update([ref], [hyp])
    return acc.errors


@torch.no_grad()
def decode_nbest(model, enc_out: torch.Tensor, enc_lens: torch.Tensor, beam: int) -> list[list[list[int]]]:
    """Token ids of up to ``beam`` hypotheses per utterance, best first (``enc_out (N, T, J)``,
    ``enc_lens (N,)``)."""
    return [[h.tokens for h in nbest] for nbest in modified_beam_search(model, enc_out, enc_lens, beam=beam)]


def nbest_scores(model, enc_out: torch.Tensor, enc_lens: torch.Tensor, nbest: Sequence[Sequence[Sequence[int]]],
                 width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable full-sum log P(y | x) of every hypothesis.

    Args:
        enc_out: ``(N, T, J)`` encoder output (with gradient), ``enc_lens`` ``(N,)``.
        nbest: per utterance, a list of token-id lists (at most ``width``).

    Returns:
        ``(scores (N, width), mask (N, width))``: ``scores`` is -inf where an utterance has fewer
        hypotheses; the encoder output is repeated once per hypothesis, so the N-best of one
        utterance is scored against the same acoustics.
    """
    n = enc_out.size(0)
    rows = [(i, j) for i, hyps in enumerate(nbest) for j in range(min(len(hyps), width))]
    mask = torch.zeros(n, width, dtype=torch.bool, device=enc_out.device)
    scores = enc_out.new_full((n, width), -math.inf, dtype=torch.float32)
    if not rows:
        return scores, mask
    utt = torch.tensor([i for i, _ in rows], device=enc_out.device)
    slot = torch.tensor([j for _, j in rows], device=enc_out.device)
    labels = [list(nbest[i][j]) for i, j in rows]
    nll = model.rnnt_loss(enc_out[utt], enc_lens[utt], labels, reduction="none")  # (R,); empty hyps work too
    scores = scores.index_put((utt, slot), -nll)
    mask[utt, slot] = True
    return scores, mask


class MwerLitModule(TransducerLitModule):
    """``loss = rnnt + ctc_weight * ctc + mwer_weight * Σ mwer`` per utterance (batch-summed, then
    divided by the batch size like the parent's losses).

    Args:
        nbest: beam of the modified beam search = N-best list length.
        mwer_weight: weight of the MWER term (word errors are raw counts per utterance).

    Logged per step: ``train/mwer_loss`` (weighted), ``train/nbest_expected_errors`` (E_P̂[W]),
    ``train/nbest_oracle_errors`` (best hypothesis in the list) and ``train/nbest_top_errors``
    (the beam's first hypothesis), all per utterance, ``train/nbest_size`` and
    ``train/nbest_decode_s`` (seconds spent decoding the batch's N-best lists).
    """

    needs_logits = True  # the forward's outputs then carry enc_out / enc_lens (reused, not recomputed)

    def __init__(self, *args, nbest: int = 4, mwer_weight: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        if nbest < 2:
            raise ValueError(f"MWER needs an N-best list of at least 2 hypotheses, got nbest={nbest}")
        self.nbest, self.mwer_weight = int(nbest), float(mwer_weight)

    def _decode(self, batch: Mapping[str, Any]) -> list[list[list[int]]]:
        """N-best token ids from the model as it would decode now: eval mode (no dropout), no grad."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                enc, enc_lens = self.model.encode(batch["features"], batch["feature_lens"], batch.get("phrases"))
                return decode_nbest(self.model, enc, enc_lens, self.nbest)
        finally:
            self.model.train(was_training)

    def extra_losses(self, batch: Mapping[str, Any], out: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        nbest = self._decode(batch)
        decode_s = time.perf_counter() - t0
        errs = torch.zeros(len(nbest), self.nbest)
        for i, (ref, hyps) in enumerate(zip(batch["texts"], nbest)):
            if ref is None:
                raise ValueError(f"MWER needs reference transcripts; cut {batch['cut_ids'][i]} has none")
            for j, tokens in enumerate(hyps[: self.nbest]):
                errs[i, j] = word_errors(ref, self.decode_text(tokens))
        scores, mask = nbest_scores(self.model, out["enc_out"], out["enc_lens"], nbest, self.nbest)
        errs = errs.to(scores.device)
        loss = mwer_loss(scores, errs, mask)
        with torch.no_grad():
            p_hat = nbest_posteriors(scores.detach(), mask)
            n = len(nbest)
            big = torch.full_like(errs, math.inf)
            self.log_dict({
                "train/nbest_expected_errors": float((p_hat * errs).sum()) / n,
                "train/nbest_oracle_errors": float(torch.where(mask, errs, big).amin(1).clamp(max=1e9).sum()) / n,
                "train/nbest_top_errors": float(errs[:, 0].sum()) / n,
                "train/nbest_size": float(mask.sum()) / n,
                "train/nbest_decode_s": decode_s,  # against the step time: the on-the-fly decision
            }, batch_size=n)
        return {"mwer_loss": self.mwer_weight * loss.sum()}
