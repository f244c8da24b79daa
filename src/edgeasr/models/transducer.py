"""RNN-T model: encoder + predictor + joiner, RNN-T loss (torchaudio) with an optional CTC head."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
import torchaudio.functional as taf
from torch import nn

from .biasing import ContextBiaser, PhraseBatch
from .encoders import ConformerEncoder, LstmEncoder
from .joiner import Joiner
from .predictor import LstmPredictor, StatelessPredictor

Labels = Sequence[Sequence[int]] | torch.Tensor


def pad_labels(y: Sequence[Sequence[int]], pad: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> padded (N, max U) int64 and lengths (N,) int64."""
    lens = torch.tensor([len(s) for s in y], dtype=torch.int64)
    out = torch.full((len(y), max(int(lens.max()), 0) if len(y) else 0), pad, dtype=torch.int64)
    for i, s in enumerate(y):
        out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.int64)
    return out.to(device), lens.to(device)


class Transducer(nn.Module):
    """``forward(x, x_lens, y, y_lens)`` returns SUMMED losses plus the counts to normalise them by.

    Labels: ``y`` is either a list of token-id lists (no blank, no SOS) or a padded (N, U) tensor
    with ``y_lens``. The CTC head (``ctc_weight > 0``) is a Linear on the encoder output; it only
    shapes the encoder during training and is not exported.

    An optional ``biaser`` (:class:`~edgeasr.models.biasing.ContextBiaser`) lets the encoder output
    attend over the user's list of phrases (``phrases``, a :class:`PhraseBatch`); without a list it
    attends to its "no bias" entry only, so no list and an empty list are the same model.
    """

    def __init__(self, encoder: nn.Module, predictor: nn.Module, joiner: Joiner, blank_id: int = 0, ctc_weight: float = 0.0,
                 biaser: ContextBiaser | None = None):
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor
        self.joiner = joiner
        self.blank_id = blank_id
        self.vocab_size = joiner.vocab_size
        self.ctc_weight = float(ctc_weight)
        self.ctc_head = nn.Linear(encoder.output_dim, joiner.vocab_size) if ctc_weight > 0 else None
        self.biaser = biaser

    def encode(self, x: torch.Tensor, x_lens: torch.Tensor,
               phrases: PhraseBatch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, T, F) features, x_lens: (N,) -> encoder_out (N, T', J), encoder_out_lens (N,).

        ``phrases``: each utterance's context list, for a model with a biaser (else refused)."""
        enc, lens = self.encoder(x, x_lens)
        if self.biaser is not None:
            enc = self.biaser(enc, phrases if phrases is not None else PhraseBatch.empty(x.size(0), enc.device))
        elif phrases is not None:
            raise ValueError("this model has no attention biaser: build it with `biaser: {dim, heads}` to pass phrase lists")
        return enc, lens

    def _labels(self, y: Labels, y_lens: torch.Tensor | None, device) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(y, torch.Tensor):
            return pad_labels(y, self.blank_id, device)
        if y_lens is None:
            raise ValueError("a padded label tensor needs y_lens")
        y_lens = y_lens.to(device=device, dtype=torch.int64)
        # rnnt_loss wants logits.size(2) == max(y_lens) + 1.
        return y[:, : int(y_lens.max())].to(device=device, dtype=torch.int64), y_lens

    def joint(self, enc_out: torch.Tensor, y: torch.Tensor, y_lens: torch.Tensor) -> torch.Tensor:
        """Full lattice of raw logits (N, T', U+1, V) for padded labels (N, U)."""
        return self.joiner(enc_out, self.predictor(y, y_lens))

    def rnnt_loss(
        self, enc_out: torch.Tensor, enc_lens: torch.Tensor, y: Labels, y_lens: torch.Tensor | None = None,
        reduction: str = "sum",
    ) -> torch.Tensor:
        """Full-sum RNN-T negative log-likelihood; ``reduction="none"`` gives -log P(y_i | x_i) per row.

        With encoder outputs repeated per hypothesis this scores an N-best list (MWER).
        """
        y, y_lens = self._labels(y, y_lens, enc_out.device)
        logits = self.joint(enc_out, y, y_lens)
        return self._rnnt(logits, enc_lens, y, y_lens, reduction)

    def _rnnt(self, logits, enc_lens, y, y_lens, reduction):
        # float32: rnnt_loss has no bf16 kernel (autocast may hand us bf16 logits).
        return taf.rnnt_loss(
            logits.float(), y.to(torch.int32), enc_lens.to(torch.int32), y_lens.to(torch.int32),
            blank=self.blank_id, reduction=reduction,
        )

    def ctc_log_probs(self, enc_out: torch.Tensor) -> torch.Tensor:
        """(N, T', J) -> CTC log-probabilities (N, T', V). Needs ``ctc_weight > 0`` at construction."""
        if self.ctc_head is None:
            raise RuntimeError("this Transducer was built with ctc_weight=0: it has no CTC head")
        return self.ctc_head(enc_out).float().log_softmax(-1)

    def forward(
        self, x: torch.Tensor, x_lens: torch.Tensor, y: Labels, y_lens: torch.Tensor | None = None,
        return_logits: bool = False, phrases: PhraseBatch | None = None,
    ) -> dict[str, Any]:
        """Returns a dict of SUMS over the batch:

        ``loss = rnnt_loss + ctc_weight * ctc_loss``, ``rnnt_loss``, ``ctc_loss`` (0 without a head),
        and ``num_utts``, ``num_frames`` (encoder frames), ``num_tokens`` as ints to normalise by.
        ``return_logits`` adds ``logits`` (N, T', U+1, V), ``enc_out``, ``enc_lens``, ``y``, ``y_lens``
        (for distillation). ``phrases``: context lists for the biaser (see :meth:`encode`).
        """
        enc_out, enc_lens = self.encode(x, x_lens, phrases)
        y, y_lens = self._labels(y, y_lens, enc_out.device)
        logits = self.joint(enc_out, y, y_lens)
        rnnt = self._rnnt(logits, enc_lens, y, y_lens, "sum")
        if self.ctc_head is not None:
            lp = self.ctc_log_probs(enc_out).transpose(0, 1)  # (T', N, V)
            # zero_infinity: an utterance with fewer frames than CTC needs contributes 0, not inf.
            ctc = F.ctc_loss(lp, y, enc_lens, y_lens, blank=self.blank_id, reduction="sum", zero_infinity=True)
            loss = rnnt + self.ctc_weight * ctc
        else:
            ctc = rnnt.new_zeros(())
            loss = rnnt
        out: dict[str, Any] = {
            "loss": loss,
            "rnnt_loss": rnnt,
            "ctc_loss": ctc,
            "num_utts": int(x.size(0)),
            "num_frames": int(enc_lens.sum()),
            "num_tokens": int(y_lens.sum()),
        }
        if return_logits:
            out.update(logits=logits, enc_out=enc_out, enc_lens=enc_lens, y=y, y_lens=y_lens)
        return out


_ENCODERS = {"conformer": ConformerEncoder, "lstm": LstmEncoder}
_PREDICTORS = {"stateless": StatelessPredictor, "lstm": LstmPredictor}


def build_transducer(cfg: Mapping[str, Any]) -> Transducer:
    """Build from a config mapping (plain dict or OmegaConf DictConfig)::

        vocab_size: 256
        joiner_dim: 320
        blank_id: 0          # optional
        ctc_weight: 0.3      # optional, 0 = no CTC head
        encoder:   {type: lstm, hidden: 320, num_layers: 3, subsampling_channels: 64, ...}
                   {type: conformer, d_model: 256, num_layers: 8, num_heads: 4, ffn_dim: 1024, ...}
        predictor: {type: stateless, embed_dim: 320, context_size: 2}
                   {type: lstm, embed_dim: 320, hidden: 320, num_layers: 1}
        biaser:    {dim: 64, heads: 2}   # optional attention biaser (null or absent: none)

    Remaining encoder/predictor keys go to the constructors; ``output_dim`` comes from ``joiner_dim``.
    """
    vocab_size = int(cfg["vocab_size"])
    joiner_dim = int(cfg["joiner_dim"])
    blank_id = int(cfg.get("blank_id", 0))
    enc_cfg = dict(cfg["encoder"])
    pred_cfg = dict(cfg["predictor"])
    enc_type, pred_type = enc_cfg.pop("type"), pred_cfg.pop("type")
    if enc_type not in _ENCODERS:
        raise ValueError(f"encoder.type must be one of {sorted(_ENCODERS)}, got {enc_type!r}")
    if pred_type not in _PREDICTORS:
        raise ValueError(f"predictor.type must be one of {sorted(_PREDICTORS)}, got {pred_type!r}")
    encoder = _ENCODERS[enc_type](**enc_cfg, output_dim=joiner_dim)
    predictor = _PREDICTORS[pred_type](vocab_size=vocab_size, **pred_cfg, output_dim=joiner_dim, blank_id=blank_id)
    bias_cfg = cfg.get("biaser")
    biaser = ContextBiaser(vocab_size, joiner_dim, **dict(bias_cfg)) if bias_cfg else None
    return Transducer(encoder, predictor, Joiner(joiner_dim, vocab_size), blank_id, float(cfg.get("ctc_weight", 0.0)), biaser)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
