"""What the ``edgeasr`` command shares with its recognizer and input readers, light enough for
``edgeasr --help``: the default tokenizer, the two kinds of error (one line on stderr, never a
traceback) and informational notes.

Used by the command (:mod:`edgeasr.cli`), the :class:`~edgeasr.recognizer.Recognizer` and the
readers of audio files and test sets (:mod:`edgeasr.audio_input`).
"""

from __future__ import annotations

from typing import TextIO

from tqdm import tqdm

DEFAULT_TOKENIZER = "data/prepare/tokenizer/bpe.model"
DEFAULT_END_OF_QUERY = "data/prepare/endpoint/end_of_query.json"
DEFAULT_ENDPOINT_CONFIG = "data/evaluate/results/endpoint/rule.json"
# Shallow-fusion weights (log domain): per BPE piece of a matching phrase / per completed phrase.
# The evaluate stage's choice on dev_rare (README "Context biasing"; reports/evaluate.json biasing/boost).
DEFAULT_CONTEXT_BOOST = 2.5
DEFAULT_CONTEXT_END_BONUS = 0.0
DEFAULT_CONTEXT_RESERVE = 0  # beam slots kept for hypotheses ranked without unfinished boosts


class CliError(Exception):
    """The model, tokenizer, set or options cannot be used: one line on stderr, exit code 2."""


class AudioError(Exception):
    """One input cannot be used; reported naming it, the others go on (exit code 1 at the end)."""


class Notes:
    """Informational lines on stderr; ``collapse``: each kind printed once, repeats counted."""

    def __init__(self, err: TextIO, collapse: bool = False):
        self.err, self.collapse = err, collapse
        self.counts: dict[str, int] = {}

    def __call__(self, kind: str, msg: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if not self.collapse or self.counts[kind] == 1:
            write_line(f"edgeasr: {msg}", self.err)

    def summary(self) -> None:
        for kind, n in self.counts.items():
            if self.collapse and n > 1:
                write_line(f"edgeasr: ... {n - 1} more like that ({kind})", self.err)


def write_line(msg: str, err: TextIO) -> None:
    tqdm.write(msg, file=err)  # keeps an active progress bar intact
