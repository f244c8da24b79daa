"""Word error rate that sums errors and reference words over the whole set.

Averaging per-batch (or per-utterance) WERs weights short utterances as heavily as long ones and
is wrong; :class:`WerAccumulator` keeps raw counts, so batches, shards and processes merge exactly.
Output files follow icefall's ``recogs-*.txt`` / ``errs-*.txt`` layout.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import kaldialign

ERR = "*"  # icefall's placeholder for a missing word in alignments


def _align(ref: list[str], hyp: list[str]) -> list[tuple[str | None, str | None]]:
    """Word alignment with None for epsilon (words are mapped to ints so no word can collide with eps)."""
    vocab: dict[str, int] = {}
    ri = [vocab.setdefault(w, len(vocab)) for w in ref]
    hi = [vocab.setdefault(w, len(vocab)) for w in hyp]
    words = list(vocab)
    return [
        (None if r == -1 else words[r], None if h == -1 else words[h])
        for r, h in kaldialign.align(ri, hi, -1)
    ]


class WerAccumulator:
    """``update(refs, hyps, ids)`` per batch; ``wer`` (percent), ``summary()``, icefall-style files."""

    def __init__(self) -> None:
        self.results: list[tuple[str, list[str], list[str]]] = []
        self.ins = self.dels = self.subs = self.words = 0

    def update(self, refs: Sequence[str], hyps: Sequence[str], ids: Sequence[str] | None = None) -> None:
        if len(refs) != len(hyps) or (ids is not None and len(ids) != len(refs)):
            raise ValueError(f"got {len(refs)} refs, {len(hyps)} hyps, {None if ids is None else len(ids)} ids")
        if ids is None:
            ids = [f"utt{len(self.results) + i}" for i in range(len(refs))]
        for cut_id, ref, hyp in zip(ids, refs, hyps):
            r, h = ref.split(), hyp.split()
            for rw, hw in _align(r, h):
                if rw is None:
                    self.ins += 1
                elif hw is None:
                    self.dels += 1
                elif rw != hw:
                    self.subs += 1
            self.words += len(r)
            self.results.append((str(cut_id), r, h))

    def merge(self, other: "WerAccumulator") -> "WerAccumulator":
        self.results += other.results
        self.ins += other.ins
        self.dels += other.dels
        self.subs += other.subs
        self.words += other.words
        return self

    @property
    def errors(self) -> int:
        return self.ins + self.dels + self.subs

    @property
    def wer(self) -> float:
        """100 * summed errors / summed reference words (0 for an empty set)."""
        if self.words == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return 100.0 * self.errors / self.words

    def summary(self) -> dict[str, float | int]:
        return {
            "wer": self.wer, "errors": self.errors, "words": self.words,
            "ins": self.ins, "del": self.dels, "sub": self.subs, "utts": len(self.results),
        }

    def write_recogs(self, path: str | Path) -> None:
        """icefall ``recogs``: ``id:\\tref=[...]`` and ``id:\\thyp=[...]`` per utterance, sorted by id."""
        with open(path, "w", encoding="utf-8") as f:
            for cut_id, ref, hyp in sorted(self.results):
                print(f"{cut_id}:\tref={ref}", file=f)
                print(f"{cut_id}:\thyp={hyp}", file=f)

    def write_errs(self, path: str | Path) -> None:
        """icefall ``errs``: %WER, error counts, per-utterance alignments, and per-word tables."""
        subs: dict[tuple[str, str], int] = defaultdict(int)
        ins: dict[str, int] = defaultdict(int)
        dels: dict[str, int] = defaultdict(int)
        words: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])  # corr, ref_sub, hyp_sub, ins, del
        lines = []
        num_corr = 0
        for cut_id, ref, hyp in sorted(self.results):
            ali = _align(ref, hyp)
            for rw, hw in ali:
                if rw is None:
                    ins[hw] += 1
                    words[hw][3] += 1
                elif hw is None:
                    dels[rw] += 1
                    words[rw][4] += 1
                elif rw != hw:
                    subs[(rw, hw)] += 1
                    words[rw][1] += 1
                    words[hw][2] += 1
                else:
                    words[rw][0] += 1
                    num_corr += 1
            lines.append(f"{cut_id}:\t" + " ".join(_combine(ali)))

        with open(path, "w", encoding="utf-8") as f:
            print(f"%WER = {self.wer:.2f}", file=f)
            print(
                f"Errors: {self.ins} insertions, {self.dels} deletions, {self.subs} substitutions, "
                f"over {self.words} reference words ({num_corr} correct)",
                file=f,
            )
            print(
                "Search below for sections starting with PER-UTT DETAILS:, SUBSTITUTIONS:, DELETIONS:, "
                "INSERTIONS:, PER-WORD STATS:",
                file=f,
            )
            print("", file=f)
            print("PER-UTT DETAILS: corr or (ref->hyp)  ", file=f)
            for line in lines:
                print(line, file=f)
            print("", file=f)
            print("SUBSTITUTIONS: count ref -> hyp", file=f)
            for count, (r, h) in sorted(((v, k) for k, v in subs.items()), reverse=True):
                print(f"{count}   {r} -> {h}", file=f)
            print("", file=f)
            print("DELETIONS: count ref", file=f)
            for count, r in sorted(((v, k) for k, v in dels.items()), reverse=True):
                print(f"{count}   {r}", file=f)
            print("", file=f)
            print("INSERTIONS: count hyp", file=f)
            for count, h in sorted(((v, k) for k, v in ins.items()), reverse=True):
                print(f"{count}   {h}", file=f)
            print("", file=f)
            print("PER-WORD STATS: word  corr tot_errs count_in_ref count_in_hyp", file=f)
            for _, word, (corr, ref_sub, hyp_sub, n_ins, n_del) in sorted(
                ((sum(v[1:]), k, v) for k, v in words.items()), reverse=True
            ):
                print(f"{word}   {corr} {ref_sub + hyp_sub + n_ins + n_del} {corr + ref_sub + n_del} {corr + hyp_sub + n_ins}", file=f)


def _combine(ali: list[tuple[str | None, str | None]]) -> list[str]:
    """Successive errors merged into one ``(ref words->hyp words)`` group, as icefall prints them."""
    out: list[str] = []
    r_run: list[str] = []
    h_run: list[str] = []

    def flush() -> None:
        if r_run or h_run:
            out.append(f"({' '.join(r_run) or ERR}->{' '.join(h_run) or ERR})")
            r_run.clear()
            h_run.clear()

    for rw, hw in ali:
        if rw is not None and rw == hw:
            flush()
            out.append(rw)
        else:
            if rw is not None:
                r_run.append(rw)
            if hw is not None:
                h_run.append(hw)
    flush()
    return out
