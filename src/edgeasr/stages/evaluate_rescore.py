"""The evaluate stage's rescoring part (``evaluate.rescore``): the cloud side of issue 16.

The lattices the device sent (``results/lattices/<split>.jsonl.gz``, written by the lattice part
just before) are read back as the cloud would, every path scored with the ``train_lm`` stage's LM
(``data/train_lm/lm.pt``), and the rescoring weights (:mod:`edgeasr.lm.rescore`) tuned on
``tune_split`` (dev) are applied to every other split.

Metrics: ``rescore/wer/<split>`` beside ``rescore/wer_1best/<split>`` (each lattice's cheapest path:
the beam search's best, but for near-ties that the lattice's 2^-7-nat weight grid reorders)
and ``rescore/gain/<split>`` (1-best minus rescored, WER points), slot and carrier WER after
rescoring, the chosen ``rescore/lm_weight``, ``rescore/ilm_weight``, ``rescore/length_bonus``, the
LM's ``rescore/lm_params`` and ``rescore/lm_bytes``, ``rescore/decode_s``. Files under
``results/rescore/``: ``grid.csv`` (dev errors at every grid point), ``weights.json``,
``recogs-<split>.txt`` / ``errs-<split>.txt``.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from edgeasr.data.tokenizer import Tokenizer
from edgeasr.data.word_classes import check_word_classes
from edgeasr.lattice import read_lattices
from edgeasr.lm import Rescorer, RescoreWeights, load_lm, tune_weights
from edgeasr.lm.rescore import Utterance
from edgeasr.metrics import WerAccumulator

log = logging.getLogger(__name__)


def references(cuts) -> dict[str, tuple[str, str | None]]:
    """Cut id -> (transcript, word classes or None)."""
    out = {}
    for c in cuts:
        sup = c.supervisions[0] if c.supervisions else None
        text = sup.text if sup is not None and sup.text else ""
        classes = check_word_classes(text, (sup.custom or {}).get("word_classes")) if sup is not None else None
        out[c.id] = (text, classes)
    return out


def split_utterances(rescorer: Rescorer, path: Path, tokens, refs: dict[str, tuple[str, str | None]]) -> list[Utterance]:
    """The lattices of one split as :class:`Utterance` s (ids sorted); every lattice must have a reference."""
    lats = read_lattices(path, tokens)
    missing = sorted(set(lats) - set(refs))
    if missing:
        raise ValueError(f"{path}: {len(missing)} lattices have no utterance in the split's manifest (e.g. {missing[0]})")
    return rescorer.utterances([(i, refs[i][0], lats[i].paths()) for i in sorted(lats)])


def score(utts: list[Utterance], w: RescoreWeights, refs: dict[str, tuple[str, str | None]]) -> WerAccumulator:
    acc = WerAccumulator()
    for u in utts:
        acc.update([u.ref], [" ".join(u.paths[u.pick(w)].words)], ids=[u.id], classes=[refs[u.id][1]])
    return acc


def rescore_metrics(rc: DictConfig, lm_path: Path, bpe_model: Path, tokens, dm, results: Path) -> dict[str, float]:
    """Rescore every ``results/lattices/<split>.jsonl.gz`` with the LM at ``lm_path``; weights tuned
    on ``rc.tune_split``. ``tokens``: the exported student's BPE pieces (they spell the lattices'
    words); ``bpe_model``: the tokenizer the LM was trained with."""
    lat_dir = results / "lattices"
    tune = str(rc.tune_split)
    if not (lat_dir / f"{tune}.jsonl.gz").is_file():
        raise FileNotFoundError(f"evaluate.rescore tunes on {tune!r} but {lat_dir / (tune + '.jsonl.gz')} was not "
                                f"written: add {tune} to evaluate.lattice.splits (or set evaluate.rescore.enabled=false)")
    if not lm_path.is_file():
        raise FileNotFoundError(f"{lm_path} not found: run the train_lm stage (`dvc repro train_lm`) or set "
                                "evaluate.rescore.enabled=false")
    t0 = time.perf_counter()
    lm, _ = load_lm(lm_path)
    rescorer = Rescorer(lm, Tokenizer(bpe_model).encode)
    splits = [tune] + sorted(p.name.removesuffix(".jsonl.gz") for p in lat_dir.glob("*.jsonl.gz")
                             if p.name != f"{tune}.jsonl.gz")
    out = results / "rescore"
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {"rescore/lm_params": sum(p.numel() for p in lm.parameters()),
                                 "rescore/lm_bytes": lm_path.stat().st_size}
    weights = None
    for split in splits:
        refs = references(dm.cuts(split))
        utts = split_utterances(rescorer, lat_dir / f"{split}.jsonl.gz", tokens, refs)
        if weights is None:  # the tuning split comes first
            weights, errors, grid = tune_weights(utts, list(rc.lm_weights), list(rc.ilm_weights), list(rc.length_bonuses))
            with open(out / "grid.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(grid[0]))
                writer.writeheader()
                writer.writerows(grid)
            (out / "weights.json").write_text(json.dumps({**weights.as_dict(), "tune_split": tune,
                                                          "dev_errors": errors}, indent=1) + "\n")
            metrics.update({f"rescore/{k}": v for k, v in weights.as_dict().items()})
            log.info("rescore: weights %s chosen on %s (%d errors)", weights.as_dict(), tune, errors)
        first, best = score(utts, RescoreWeights(), refs), score(utts, weights, refs)
        best.write_recogs(out / f"recogs-{split}.txt")
        best.write_errs(out / f"errs-{split}.txt")
        metrics.update({f"rescore/wer_1best/{split}": round(first.wer, 4), f"rescore/wer/{split}": round(best.wer, 4),
                        f"rescore/gain/{split}": round(first.wer - best.wer, 4)})
        for name in ("slot_wer", "carrier_wer"):
            value = getattr(best, name)
            if value is not None:
                metrics[f"rescore/{name}/{split}"] = round(value, 4)
    metrics["rescore/decode_s"] = round(time.perf_counter() - t0, 3)
    return metrics
