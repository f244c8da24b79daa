"""The text the cloud's LM trains on (the ``train_lm`` stage): the training transcripts, text the
corpus generator draws with its own seed (the embedded corpus only; it stands in for the cloud's
far larger text collection), and optional text files, one sentence per line. Every sentence that
occurs in a held-out split (dev, the test splits) is removed and counted.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .cleaning import normalize_transcript


@dataclass
class LmText:
    """Sentences to train on, dev sentences for perplexity, and what was removed on the way."""

    train: list[str]
    dev: list[str]
    sources: Counter = field(default_factory=Counter)    # sentences kept, per source
    removed: Counter = field(default_factory=Counter)    # sentences dropped for held-out overlap, per source
    overlap: Counter = field(default_factory=Counter)    # distinct held-out sentences met, per held-out split
    empty: int = 0                                        # empty after normalization

    def stats(self) -> dict[str, int]:
        out = {"sentences": len(self.train), "dev_sentences": len(self.dev), "empty_dropped": self.empty,
               "overlap_removed": sum(self.removed.values())}
        out.update({f"sentences/{k}": v for k, v in sorted(self.sources.items())})
        out.update({f"overlap_removed/{k}": v for k, v in sorted(self.removed.items())})
        out.update({f"overlap_distinct/{k}": v for k, v in sorted(self.overlap.items())})
        return out


def split_texts(manifest_dir: Path, split: str) -> list[str]:
    """The supervision texts of ``cuts_<split>.jsonl.gz`` (read as JSON lines: no audio, no lhotse
    objects needed), in file order; [] when the split has no manifest."""
    path = Path(manifest_dir) / f"cuts_{split}.jsonl.gz"
    if not path.is_file():
        return []
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                cut = json.loads(line)
                out.extend(str(s.get("text") or "") for s in cut.get("supervisions", []))
            except (ValueError, AttributeError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a cut ({type(e).__name__}: {e})") from None
    return out


def generated_sentences(data_cfg: Mapping, corpus_seed: int, text_seed: int, n: int, mode: str) -> list[str]:
    """``n`` requests from the embedded corpus's generator: the corpus's own inventory (its
    ``corpus_seed``: the same names, songs, cities) drawn with a stream of ``text_seed``."""
    from .synthetic.corpus import common_generator, derive_rng

    gen = common_generator(data_cfg, corpus_seed)
    rng = derive_rng(text_seed, "lm_text")
    return [normalize_transcript(gen.sample(rng).text, mode) for _ in range(int(n))]


def file_sentences(paths: Iterable[str | Path], mode: str) -> list[str]:
    out = []
    for p in paths:
        p = Path(p)
        try:
            text = p.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"train_lm.text.files: {p}: {type(e).__name__}: {e}") from None
        out.extend(normalize_transcript(line, mode) for line in text.splitlines())
    return out


def build_lm_text(manifest_dir: Path, sources: Mapping[str, Sequence[str]], held_out: Sequence[str],
                  dev_split: str = "dev") -> LmText:
    """``sources``: name -> sentences (normalized); ``held_out``: splits whose sentences are removed
    from every source. Order is kept (the caller shuffles with its seed)."""
    held: dict[str, set[str]] = {s: set(split_texts(manifest_dir, s)) for s in held_out}
    every = set().union(*held.values()) if held else set()
    lm = LmText(train=[], dev=[t for t in split_texts(manifest_dir, dev_split) if t])
    met: dict[str, set[str]] = {s: set() for s in held}
    for name, sentences in sources.items():
        for s in sentences:
            if not s:
                lm.empty += 1
            elif s in every:
                lm.removed[name] += 1
                for split, texts in held.items():
                    if s in texts:
                        met[split].add(s)
            else:
                lm.train.append(s)
                lm.sources[name] += 1
    lm.overlap.update({split: len(v) for split, v in met.items()})
    return lm
