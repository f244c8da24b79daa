"""End of query from the words so far: P(the request is complete | its last words).

A device-side table, counted on the train transcripts by the prepare stage: for every prefix of
every transcript, its last 0..``order`` words (``<s>`` before the first: "stop" alone is not
"... stop") are a context; a context's ``[ends, total]`` counts how
many such prefixes were the whole request. The probability interpolates from the empty context up
(Witten-Bell-like, one pseudo-count), so an unseen or half-spoken last word falls back to shorter
contexts. This is what lets an end-pointer wait through "set a timer for ..." but not after
"... for five minutes" (the semantic cue of Maas et al., ICASSP 2018, without a network).

The file is untrusted data: JSON only, checked field by field; :class:`EndOfQueryError` names it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

FORMAT = "edgeasr-end-of-query"
VERSION = 1
BOS = "<s>"


def read_json(path: Path, error: type[ValueError], what: str, hint: str):
    """``path``'s JSON; a missing or unreadable file is ``error`` naming it (``hint``: who writes it)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise error(f"{path}: {what} not found; {hint}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from e


class EndOfQueryError(ValueError):
    """An end-of-query file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class EndOfQuery:
    """``counts``: context (its words joined by one space; ``""`` the empty one) -> (ends, total)."""

    order: int
    counts: Mapping[str, tuple[int, int]]

    @classmethod
    def fit(cls, texts: Iterable[str], order: int = 2) -> EndOfQuery:
        if order < 0:
            raise ValueError(f"end-of-query order must be >= 0, got {order}")
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for text in texts:
            words = [BOS] + text.split()
            for i in range(2, len(words) + 1):
                for k in range(min(order, i) + 1):
                    c = counts[" ".join(words[i - k:i])]
                    c[0] += i == len(words)
                    c[1] += 1
        return cls(order, {k: (v[0], v[1]) for k, v in sorted(counts.items())})

    def prob(self, words: list[str] | tuple[str, ...]) -> float:
        """P(end | the last ``order`` of ``words``); 0 for no words (nothing was said yet)."""
        if not words:
            return 0.0
        words = [BOS, *words]
        p = 0.5
        for k in range(min(self.order, len(words)) + 1):
            c = self.counts.get(" ".join(words[len(words) - k:]))
            if c is None:
                break
            p = (c[0] + p) / (c[1] + 1)
        return p

    @property
    def entries(self) -> int:
        return len(self.counts)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"format": FORMAT, "version": VERSION, "order": self.order,
                                          "counts": {k: list(v) for k, v in self.counts.items()}},
                                         separators=(",", ":"), sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> EndOfQuery:
        path = Path(path)
        doc = read_json(path, EndOfQueryError, "end-of-query table",
                        "the prepare stage writes data/prepare/endpoint/end_of_query.json (dvc repro prepare)")
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise EndOfQueryError(f"{path}: not an end-of-query table (expected a JSON object with format {FORMAT!r})")
        if doc.get("version") != VERSION:
            raise EndOfQueryError(f"{path}: end-of-query version {doc.get('version')!r}; this edgeasr reads {VERSION}")
        order, counts = doc.get("order"), doc.get("counts")
        if type(order) is not int or order < 0 or not isinstance(counts, dict):
            raise EndOfQueryError(f"{path}: needs an integer order >= 0 and a counts object")
        out = {}
        for k, v in counts.items():
            if (not isinstance(v, list) or len(v) != 2 or any(type(x) is not int for x in v) or not 0 <= v[0] <= v[1]
                    or len(k.split()) > order):
                raise EndOfQueryError(f"{path}: counts[{k!r}] = {v!r}: expected [ends, total] with 0 <= ends <= total "
                                      f"for a context of at most {order} words")
            out[k] = (v[0], v[1])
        return cls(order, out)
