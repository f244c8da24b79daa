"""Word error rate that sums errors and reference words over the whole set.

Averaging per-batch (or per-utterance) WERs weights short utterances as heavily as long ones and
is wrong; :class:`WerAccumulator` keeps raw counts, so batches, shards and processes merge exactly.
Output files follow icefall's ``recogs-*.txt`` / ``errs-*.txt`` layout.

Per word class (slot values vs carrier words, known for the synthetic corpus only: see
:mod:`edgeasr.data.word_classes`), the same alignment splits the errors: ``slot_wer`` and
``carrier_wer`` (see :class:`WerAccumulator`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import kaldialign

from edgeasr.data.word_classes import CARRIER, SLOT

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


def _error_classes(ali: list[tuple[str | None, str | None]], classes: str) -> list[str]:
    """The class each error of ``ali`` counts for (see :class:`WerAccumulator`), in order."""
    out, j = [], 0  # j: reference words consumed so far
    for rw, hw in ali:
        if rw is None:  # insertion between reference words j - 1 and j
            near = classes[max(0, j - 1) : j + 1]
            out.append(SLOT if SLOT in near else CARRIER)
            continue
        if hw is None or rw != hw:
            out.append(classes[j])
        j += 1
    return out


class WerAccumulator:
    """``update(refs, hyps, ids, classes)`` per batch; ``wer`` (percent), ``summary()``, icefall-style files.

    Per word class: with ``classes`` (per utterance one ``"s"`` slot / ``"c"`` carrier per
    reference word), every error of the alignment counts for one class. A substituted or deleted
    reference word counts for its own class. An insertion counts as a slot error if either of its
    neighbouring reference words (the nearest one before it and the nearest one after it in the
    alignment, deleted ones included) is a slot word, otherwise as a carrier error: errors at the
    edge of a slot value (a name split in two, a number spelled with an extra word) are slot
    errors. An insertion into an empty reference is a carrier error. Slot plus carrier errors are
    all the errors; ``slot_wer`` = 100 * slot errors / slot reference words, ``carrier_wer``
    likewise. Both are ``None`` unless every utterance came with classes (:attr:`has_classes`).
    """

    def __init__(self) -> None:
        self.results: list[tuple[str, list[str], list[str]]] = []
        self.ins = self.dels = self.subs = self.words = 0
        self.class_errors = {SLOT: 0, CARRIER: 0}
        self.class_words = {SLOT: 0, CARRIER: 0}
        self.unclassified = 0  # utterances that came without word classes

    def update(self, refs: Sequence[str], hyps: Sequence[str], ids: Sequence[str] | None = None,
               classes: Sequence[str | Sequence[str] | None] | None = None) -> None:
        """``classes``: per utterance its reference words' classes (a string or list of ``"s"`` /
        ``"c"``, one per word) or ``None``; ``None`` for the whole batch when none are known."""
        if len(refs) != len(hyps) or (ids is not None and len(ids) != len(refs)) or (
                classes is not None and len(classes) != len(refs)):
            raise ValueError(f"got {len(refs)} refs, {len(hyps)} hyps, {None if ids is None else len(ids)} ids, "
                             f"{None if classes is None else len(classes)} word classes")
        if ids is None:
            ids = [f"utt{len(self.results) + i}" for i in range(len(refs))]
        for k, (cut_id, ref, hyp) in enumerate(zip(ids, refs, hyps)):
            r, h = ref.split(), hyp.split()
            ali = _align(r, h)
            for rw, hw in ali:
                if rw is None:
                    self.ins += 1
                elif hw is None:
                    self.dels += 1
                elif rw != hw:
                    self.subs += 1
            self.words += len(r)
            self.results.append((str(cut_id), r, h))
            cls = None if classes is None or classes[k] is None else "".join(classes[k])
            if cls is None:
                self.unclassified += 1
                continue
            if len(cls) != len(r) or set(cls) - {SLOT, CARRIER}:
                raise ValueError(f"{cut_id}: word classes {cls!r} do not give one of {SLOT!r}/{CARRIER!r} "
                                 f"per word of {ref!r}")
            for c in cls:
                self.class_words[c] += 1
            for c in _error_classes(ali, cls):
                self.class_errors[c] += 1

    def merge(self, other: "WerAccumulator") -> "WerAccumulator":
        self.results += other.results
        self.ins += other.ins
        self.dels += other.dels
        self.subs += other.subs
        self.words += other.words
        for c in (SLOT, CARRIER):
            self.class_errors[c] += other.class_errors[c]
            self.class_words[c] += other.class_words[c]
        self.unclassified += other.unclassified
        return self

    @property
    def has_classes(self) -> bool:
        """Whether every utterance (at least one) came with word classes."""
        return bool(self.results) and self.unclassified == 0

    def class_wer(self, cls: str) -> float | None:
        """100 * errors / reference words of class ``cls`` (``"s"`` or ``"c"``), ``None`` without classes."""
        if not self.has_classes:
            return None
        errors, words = self.class_errors[cls], self.class_words[cls]
        if words == 0:
            return 0.0 if errors == 0 else float("inf")
        return 100.0 * errors / words

    @property
    def slot_wer(self) -> float | None:
        return self.class_wer(SLOT)

    @property
    def carrier_wer(self) -> float | None:
        return self.class_wer(CARRIER)

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
        """Counts and WER; with word classes also ``slot_``/``carrier_`` ``wer``, ``errors``, ``words``."""
        out: dict[str, float | int] = {
            "wer": self.wer, "errors": self.errors, "words": self.words,
            "ins": self.ins, "del": self.dels, "sub": self.subs, "utts": len(self.results),
        }
        if self.has_classes:
            for name, c in (("slot", SLOT), ("carrier", CARRIER)):
                out.update({f"{name}_wer": self.class_wer(c), f"{name}_errors": self.class_errors[c],
                            f"{name}_words": self.class_words[c]})
        return out

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
            if self.has_classes:
                s, c = self.class_errors, self.class_words
                print(f"Slot words: %WER = {self.slot_wer:.2f} ({s[SLOT]} errors / {c[SLOT]} words); carrier words: "
                      f"%WER = {self.carrier_wer:.2f} ({s[CARRIER]} / {c[CARRIER]}); an insertion next to a slot "
                      "word is a slot error", file=f)
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
