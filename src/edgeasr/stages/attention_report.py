"""A model trained with its attention biaser, measured in its own stage's report (issue 17, part 2).

On ``context_lists.report.split`` (``test_rare``: each request names an entity the training data
never holds) with lists of the true entity plus N distractors (``evaluate.biasing``'s lists, same
seed), modified beam search decodes four ways: no biasing (the biaser sees no list), shallow
fusion alone, the attention biaser alone, and both. WER / B-WER / U-WER / entity recall go into
the report as ``attn/<split>/<condition>/<metric>``; the attention over the list is drawn for a
few utterances (``attention.png``, an MLflow artifact).

The PyTorch model decodes here: the integer runtime does not carry the biaser yet, so
``evaluate`` (which decodes the exported student) has no attention figures.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Mapping

import torch
from lhotse import CutSet
from matplotlib.figure import Figure

from edgeasr.data.word_classes import cut_entities
from edgeasr.decoding import ContextGraph, modified_beam_search
from edgeasr.models.biasing import PhraseBatch

from .evaluate_biasing import SplitLists, context_lists, feature_batches, score

log = logging.getLogger(__name__)

CONDITIONS = ("none", "sf", "attn", "attn_sf")


@torch.inference_mode()
def attention_biasing(model, tok, manifests: Path, rc: Mapping, seed: int, results: Path, utts: int | None = None
                      ) -> tuple[dict[str, float], Figure | None]:
    """``rc``: ``{split, distractors: [N, ...], boost, end_bonus, reserve, beam, max_sym_per_frame, plot_utts}``.
    Returns the metrics and the attention figure (None without utterances); writes
    ``results/attention_biasing.csv``."""
    split = str(rc["split"])
    path = manifests / f"cuts_{split}.jsonl.gz"
    if not path.is_file():
        log.warning("attention biasing: %s not found; no attention figures in this report", path)
        return {}, None
    cuts = sorted(CutSet.from_file(path), key=lambda c: c.id)[:utts]
    sl = SplitLists.from_cuts(cuts)
    was_training = model.training
    model.eval()
    ns = [int(n) for n in rc["distractors"]]
    lists = {n: context_lists(sl, n, seed, split) for n in ns}
    hyps: dict[tuple[int, str], dict[str, str]] = {}

    def decode(key, enc, enc_lens, ids, graphs=None):
        nbest = modified_beam_search(model, enc, enc_lens, beam=int(rc["beam"]), contexts=graphs,
                                     max_sym_per_frame=int(rc["max_sym_per_frame"]))
        hyps.setdefault(key, {}).update({i: tok.decode(nb[0].tokens) for i, nb in zip(ids, nbest)})

    for ids, feats, lens in feature_batches(cuts):
        frames, enc_lens = model.encoder(feats, lens)  # once per batch; the biaser runs per list
        plain = model.biaser(frames, PhraseBatch.empty(len(ids), frames.device))
        decode((ns[0], "none"), plain, enc_lens, ids)  # no list: the same for every list size
        for n in ns:
            biased = model.biaser(frames, PhraseBatch.collate([[tok.encode(p) for p in lists[n][i]] for i in ids]))
            graphs = [ContextGraph.from_phrases(lists[n][i], tok.encode, tok.vocab_size, float(rc["boost"]),
                                                float(rc["end_bonus"]), int(rc.get("reserve", 0))) for i in ids]
            decode((n, "sf"), plain, enc_lens, ids, graphs)
            decode((n, "attn"), biased, enc_lens, ids)
            decode((n, "attn_sf"), biased, enc_lens, ids, graphs)
    for n in ns[1:]:
        hyps[(n, "none")] = hyps[(ns[0], "none")]
    metrics, rows = {}, []
    for (n, cond), h in sorted(hyps.items()):
        m, _ = score(sl, h)
        rows.append({"split": split, "distractors": n, "condition": cond, **m})
        metrics.update({f"attn/{split}/list{n}/{cond}/{k}": v for k, v in m.items()})
    results.mkdir(parents=True, exist_ok=True)
    with open(results / "attention_biasing.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fig = attention_figure(model, tok, cuts[: int(rc["plot_utts"])], lists[ns[0]])
    model.train(was_training)
    return metrics, fig


def attention_figure(model, tok, cuts: list, lists: Mapping[str, list[str]]) -> Figure | None:
    """Per utterance a heat map: encoder frames x ("no bias" + its list), the attention weights
    averaged over heads; the true entity's row is starred."""
    if not cuts:
        return None
    fig = Figure(figsize=(8, 2.6 * len(cuts)))
    axes = fig.subplots(len(cuts), 1, squeeze=False)[:, 0]
    for ax, cut in zip(axes, cuts):
        _, feats, lens = next(feature_batches([cut]))
        phrases, ents = lists[cut.id], set(cut_entities(cut))
        enc, enc_lens = model.encoder(feats, lens)
        _, weights = model.biaser.attention(enc, PhraseBatch.collate([[tok.encode(p) for p in phrases]]))
        ax.imshow(weights[0, : int(enc_lens[0])].T.float().numpy(), aspect="auto", origin="lower", vmin=0, vmax=1)
        ax.set_yticks(range(len(phrases) + 1))
        ax.set_yticklabels(["(no bias)"] + [f"* {p}" if p in ents else p for p in phrases], fontsize=6)
        ax.set_title(f"{cut.id}: {cut.supervisions[0].text}", fontsize=7)
        ax.set_xlabel("encoder frame")
    fig.tight_layout()
    return fig
