"""Which words of a transcript are slot values and which are carrier words.

The synthetic generator (``edgeasr.data.synthetic.text``) fills a template such as ``"set an alarm
for {time} on {weekday}"`` as segments: the template's own text (carrier) and each placeholder's
value (slot). The corpus stores the result per utterance as ``supervision.custom["word_classes"]``:
a string with one character per word of the final (normalized) transcript, ``"s"`` for a word of a
slot value (contact, song, artist, city, shopping item, appliance, room, message, number, time,
date, ...) and ``"c"`` for a carrier word (template words and the wake word):
``"alexa call john smith"`` -> ``"ccss"``. Other corpora have no classes.

A slot value is classed as a whole: ``{minutes}`` -> ``"five minutes"`` is ``"ss"``, ``{when}`` ->
``"on monday"`` is ``"ss"``. Numbers and clock times are spelled out by normalization, which can
change a slot's word count (``"25"`` -> ``"twenty five"``); every segment is normalized on its own
and the concatenation is checked against the normalized whole, so the classes always align with
the words of the transcript. Import-free (synthesis workers import it).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

if TYPE_CHECKING:
    import numpy as np

SLOT, CARRIER = "s", "c"
_PLACEHOLDER = re.compile(r"\{(\w+)\}")

Segments = list[tuple[str, str]]  # (text, class)


def fill_segments(
    template: str,
    slots: Mapping[str, Callable[[np.random.Generator], str]],
    rng: np.random.Generator,
) -> Segments:
    """``template`` with its ``{slot}`` placeholders filled, as ``(text, class)`` segments.

    Draws exactly what ``re.sub(r"\\{(\\w+)\\}", ...)`` over the template draws, in the same order
    (left to right), so ``"".join`` of the texts is the string the plain fill gives for the same
    generator state, and the generator ends in the same state.
    """
    segments: Segments = []
    pos = 0
    for m in _PLACEHOLDER.finditer(template):
        if m.start() > pos:
            segments.append((template[pos : m.start()], CARRIER))
        segments.append((slots[m.group(1)](rng), SLOT))
        pos = m.end()
    if pos < len(template):
        segments.append((template[pos:], CARRIER))
    return segments


def normalize_segments(
    segments: Sequence[tuple[str, str]], normalize: Callable[[str], str]
) -> tuple[str, str]:
    """``(normalize(whole text), word classes)``.

    The text is the normalization of the joined segments, exactly as without classes; the classes
    come from normalizing each segment alone. Raises ``ValueError`` if the two word sequences
    differ (a template gluing a placeholder to other characters, e.g. ``"{n}th"``).
    """
    text = normalize("".join(t for t, _ in segments))
    words: list[str] = []
    classes: list[str] = []
    for seg, cls in segments:
        w = normalize(seg).split()
        words += w
        classes.append(cls * len(w))
    if words != text.split():
        raise ValueError(
            f"slot segments {list(segments)!r} do not normalize to the words of {text!r}"
        )
    return text, "".join(classes)


def check_word_classes(text: str | None, classes: object) -> str | None:
    """``classes`` as a string of ``"s"``/``"c"`` if it is one (or a list of such) with one class
    per word of ``text``, else ``None`` (a transcript edited after generation, another corpus)."""
    if text is None or classes is None:
        return None
    if not isinstance(classes, str):
        if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
            return None
        classes = "".join(classes)
    if len(classes) != len(text.split()) or set(classes) - {SLOT, CARRIER}:
        return None
    return classes


def slot_runs(text: str, classes: str | None) -> list[str]:
    """Each maximal run of slot words of ``text`` (one class per word), in order:
    ``slot_runs("play jazz by miles davis", "cscss") == ["jazz", "miles davis"]``."""
    runs: list[str] = []
    cur: list[str] = []
    for w, c in zip(text.split(), classes or ""):
        if c == SLOT:
            cur.append(w)
        elif cur:
            runs.append(" ".join(cur))
            cur = []
    return runs + ([" ".join(cur)] if cur else [])


def cut_entities(cut) -> list[str]:
    """A cut's true context phrases: its named rare entity (``custom["entity"]``), else each run of
    slot words, first occurrence first."""
    sup = cut.supervisions[0]
    custom = sup.custom or {}
    if custom.get("entity"):
        return [str(custom["entity"])]
    return list(dict.fromkeys(slot_runs(sup.text or "", custom.get("word_classes"))))
