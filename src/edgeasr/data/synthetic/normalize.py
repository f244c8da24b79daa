"""Transcript normalisation: lowercase words, numbers and clock times spelled out.

The synthetic corpus writes its transcripts, slot values and word lists in this form, so the
tokenizer sees one spelling per word.
"""

from __future__ import annotations

import re
import unicodedata

from num2words import num2words

_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b")
_CLOCK = re.compile(r"\b(\d{1,2}):(\d\d)\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_NOT_ALLOWED = re.compile(r"[^a-z' ]+")
_APOS_EDGE = re.compile(r"(?<![a-z])'|'(?![a-z])")


def _spell_clock(m: re.Match) -> str:
    hour, minute = num2words(int(m.group(1))), int(m.group(2))
    if minute == 0:
        return f" {hour} o'clock "
    return f" {hour} {'oh ' if minute < 10 else ''}{num2words(minute)} "


def _spell_number(m: re.Match) -> str:
    s = m.group(0)
    return " " + num2words(float(s) if "." in s else int(s)) + " "


def normalize_text(s: str) -> str:
    """Lowercase a-z words, apostrophes inside words, single spaces; numbers spelled out.

    >>> normalize_text("Set a timer for 25 minutes!")
    'set a timer for twenty five minutes'
    """
    s = unicodedata.normalize("NFKD", s)
    s = "".join(c for c in s if not unicodedata.combining(c))
    s = s.lower().replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    s = s.replace("%", " percent ").replace("&", " and ").replace("+", " plus ")
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)  # 1,200 -> 1200
    s = _CLOCK.sub(_spell_clock, s)  # 7:05 -> seven oh five
    s = _ORDINAL.sub(lambda m: " " + num2words(int(m.group(1)), to="ordinal") + " ", s)
    s = _NUMBER.sub(_spell_number, s)
    s = _NOT_ALLOWED.sub(" ", s)  # hyphens, commas and other punctuation become spaces
    s = _APOS_EDGE.sub(" ", s)  # quotes, not contractions
    return " ".join(s.split())

