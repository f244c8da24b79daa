"""Context lists for training an attention biaser with the recognizer (issue 17, part 2).

Each training utterance gets a list like a user's: its own slot values (contacts, devices, songs,
...) plus a random number of distractors from the training split's other slot values, and with
probability ``empty_prob`` no true entity at all, so the biaser learns to ignore a list that does
not apply (Chang et al. 2021; CLAS, Pundak et al. 2018). A list is a function of (seed, step, cut
id) only: a resumed run draws the lists an uninterrupted one would.
"""

from __future__ import annotations

import zlib
from typing import Callable, Mapping, Sequence

import numpy as np

from edgeasr.data.word_classes import slot_runs
from edgeasr.models.biasing import PhraseBatch


class TrainingContexts:
    """``phrases(batch, step) -> PhraseBatch`` for a DataModule batch (needs ``texts``,
    ``word_classes`` and ``cut_ids``).

    Args:
        pool: distractor phrases (the training split's slot values).
        encode: text -> token ids (the tokenizer's ``encode``).
        max_distractors: each list draws 0..max_distractors of them, uniformly.
        empty_prob: probability that a list leaves out the utterance's own slot values.
    """

    def __init__(self, pool: Sequence[str], encode: Callable[[str], list[int]], max_distractors: int = 30,
                 empty_prob: float = 0.2, seed: int = 1234):
        if not 0.0 <= empty_prob <= 1.0:
            raise ValueError(f"context_lists.empty_prob {empty_prob} must lie in [0, 1]")
        if max_distractors < 0:
            raise ValueError(f"context_lists.max_distractors {max_distractors} must be >= 0")
        self.pool = sorted(set(pool))
        self.encode = encode
        self.max_distractors = min(int(max_distractors), len(self.pool))
        self.empty_prob = float(empty_prob)
        self.seed = int(seed)

    @classmethod
    def from_config(cls, section: Mapping, pool: Sequence[str], encode, seed: int) -> "TrainingContexts":
        return cls(pool, encode, int(section["max_distractors"]), float(section["empty_prob"]), seed)

    def lists(self, texts: Sequence[str | None], classes: Sequence[str | None], cut_ids: Sequence[str],
              step: int) -> list[list[str]]:
        """One sorted list of phrases per utterance; never a distractor that occurs in the transcript."""
        out = []
        for text, cls, cut_id in zip(texts, classes, cut_ids):
            rng = np.random.default_rng([self.seed, int(step), zlib.crc32(cut_id.encode())])
            own = [] if (text is None or rng.random() < self.empty_prob) else slot_runs(text, cls)
            k = int(rng.integers(0, self.max_distractors + 1))
            picks = [self.pool[i] for i in rng.choice(len(self.pool), size=k, replace=False)] if k else []
            padded = f" {text} " if text else ""
            out.append(sorted(set(own) | {p for p in picks if f" {p} " not in padded}))
        return out

    def phrases(self, batch: Mapping, step: int, device=None) -> PhraseBatch:
        lists = self.lists(batch["texts"], batch["word_classes"], batch["cut_ids"], step)
        return PhraseBatch.collate([[self.encode(p) for p in x] for x in lists], device)
