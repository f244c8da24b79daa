"""What every model stage reports: WER per split (with recogs/errs files; slot and carrier WER where
the corpus knows its word classes), sparsity, size and emulated latency on the configured NPU profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from edgeasr.decoding import greedy_search, modified_beam_search
from edgeasr.emulator import HwProfile, model_size_bytes, model_sparsity
from edgeasr.emulator.transducer import transducer_latency
from edgeasr.metrics import WerAccumulator


BIASER_LIST_SIZES = (10, 100)  # list sizes whose emulated latency a biased model reports


def deployable(model: nn.Module) -> nn.Module:
    """The parts that ship to a device (the CTC head only shapes training)."""
    parts = {"encoder": model.encoder, "predictor": model.predictor, "joiner": model.joiner}
    if getattr(model, "biaser", None) is not None:
        parts["biaser"] = model.biaser
    return nn.ModuleDict(parts)


@torch.inference_mode()
def decode_loader(model: nn.Module, loader: Iterable[Mapping[str, Any]], decode_text, method: str = "greedy",
                  beam: int = 4, max_sym_per_frame: int = 1) -> WerAccumulator:
    """Decode every batch; WER accumulates summed errors over summed reference words, per word
    class too when the batches carry ``word_classes`` (see :class:`edgeasr.metrics.WerAccumulator`).
    ``max_sym_per_frame`` bounds emissions per encoder frame (greedy and modified beam search)."""
    model.eval()
    acc = WerAccumulator()
    for batch in loader:
        enc, enc_lens = model.encode(batch["features"], batch["feature_lens"])
        if method == "greedy":
            hyps = greedy_search(model, enc, enc_lens, max_sym_per_frame=max_sym_per_frame)
        elif method == "beam":
            hyps = [nbest[0].tokens for nbest in modified_beam_search(model, enc, enc_lens, beam=beam,
                                                                            max_sym_per_frame=max_sym_per_frame)]
        else:
            raise ValueError(f"unknown decoding method {method!r}; use greedy or beam")
        acc.update(batch["texts"], [decode_text(h) for h in hyps], ids=batch["cut_ids"],
                   classes=batch.get("word_classes"))
    return acc


def wer_metrics(acc: WerAccumulator, split: str) -> dict[str, float]:
    """``wer/<split>``, plus ``slot_wer/<split>`` and ``carrier_wer/<split>`` when every utterance
    had word classes (the synthetic corpus; absent, not zero, for other corpora)."""
    metrics = {f"wer/{split}": round(acc.wer, 4)}
    if acc.has_classes:
        metrics[f"slot_wer/{split}"] = round(acc.slot_wer, 4)
        metrics[f"carrier_wer/{split}"] = round(acc.carrier_wer, 4)
    return metrics


def add_test_totals(metrics: dict[str, float], split: str = "test") -> dict[str, float]:
    """``wer``, ``slot_wer``, ``carrier_wer`` (those present) = their ``<key>/<split>`` values, in place."""
    for key in ("wer", "slot_wer", "carrier_wer"):
        if f"{key}/{split}" in metrics:
            metrics[key] = metrics[f"{key}/{split}"]
    return metrics


def evaluate_splits(model: nn.Module, datamodule, splits: Iterable[str], out_dir: Path, method: str = "greedy",
                    beam: int = 4, max_sym_per_frame: int = 1) -> dict[str, float]:
    """``wer/<split>`` for each split present, plus ``wer`` (= test), and likewise ``slot_wer`` and
    ``carrier_wer`` where the corpus has word classes (:func:`wer_metrics`); writes
    ``<out_dir>/recogs-<split>.txt`` and ``errs-<split>.txt`` (icefall's formats)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    for split in splits:
        if not (datamodule.manifest_dir / f"cuts_{split}.jsonl.gz").is_file():
            continue
        acc = decode_loader(model, datamodule.split_dataloader(split), datamodule.tokenizer.decode, method, beam,
                            max_sym_per_frame)
        acc.write_recogs(out_dir / f"recogs-{split}.txt")
        acc.write_errs(out_dir / f"errs-{split}.txt")
        metrics.update(wer_metrics(acc, split))
    return add_test_totals(metrics)


def median_utterance(cuts, tokenizer) -> tuple[float, int, int]:
    """(duration s, feature frames, tokens) of the median-duration utterance of a split."""
    items = sorted(((c.duration, c.num_frames or round(c.duration * 100), c.supervisions[0].text or "") for c in cuts))
    if not items:
        raise ValueError("cannot emulate latency on an empty split")
    dur, frames, text = items[len(items) // 2]
    return dur, int(frames), len(tokenizer.encode(text))


def model_metrics(model: nn.Module, hw_cfg: Mapping[str, Any], cuts, tokenizer, bits: int = 32,
                  chunk_frames: int | None = None) -> tuple[dict[str, float], Any]:
    """``sparsity``, ``size_bytes`` (at ``bits``), ``emulated_latency_ms`` and ``emulated_rtf`` for the
    median-length utterance of ``cuts``, and the parameter count; plus the full cost report. A model
    with an attention biaser also gets ``emulated_latency_ms/list<N>`` for lists of N phrases (the
    main figure is without a list) and ``biaser_params``."""
    dev = deployable(model)
    dur, frames, tokens = median_utterance(cuts, tokenizer)
    was_training = model.training
    hw = HwProfile.from_cfg(hw_cfg)
    report = transducer_latency(model, hw, frames, tokens, bits=bits, chunk_frames=chunk_frames)
    model.train(was_training)
    metrics = {
        "sparsity": round(model_sparsity(dev), 6),
        "size_bytes": int(model_size_bytes(dev, bits)),
        "emulated_latency_ms": round(report.total_s * 1000.0, 4),
        "emulated_rtf": round(report.total_s / dur, 6),
        "params": int(sum(p.numel() for p in dev.parameters())),
    }
    if getattr(model, "biaser", None) is not None:
        metrics["biaser_params"] = int(sum(p.numel() for p in model.biaser.parameters()))
        for n in BIASER_LIST_SIZES:
            with_list = transducer_latency(model, hw, frames, tokens, bits=bits, chunk_frames=chunk_frames,
                                           context_phrases=n)
            metrics[f"emulated_latency_ms/list{n}"] = round(with_list.total_s * 1000.0, 4)
        model.train(was_training)
    return metrics, report
