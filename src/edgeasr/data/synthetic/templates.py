"""The request templates of the synthetic corpus: resources/request_templates.txt, parsed strictly.

The file's header describes the format. Parsing refuses anything it would otherwise have to guess
(a stray space, a repeated phrasing, a missing section), naming the file and line, because a
silently different template list is a silently different corpus.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Iterable

RESOURCES = files("edgeasr.data") / "resources"  # package data (pyproject.toml)
_HEADER = re.compile(r"\[(family|rare) (\w+)(?: (\S+))?\]")
_TOKEN = re.compile(r"\{\w+\}|[a-z]+(?:'[a-z]+)*")  # a slot or a normalized word
_SLOT = re.compile(r"\{(\w+)\}")
RARE_SECTIONS = ("call", "device", "dimmable")


@dataclass(frozen=True)
class TemplateBook:
    """Phrasings per family in file order (most common first), family weights, rare phrasings."""

    families: dict[str, tuple[str, ...]]
    weights: dict[str, float]
    rare: dict[str, tuple[str, ...]]
    where: dict[tuple[str, str], str]  # ("family x" or "rare x", template) -> "file:line"

    def check_slots(self, kind: str, slots: Iterable[str]) -> None:
        """Refuses a template of a `kind` ("family" or "rare") section naming a slot not in `slots`
        (caught here, not at the first draw of that template, perhaps thousands of draws later)."""
        known = set(slots)
        for (section, template), at in self.where.items():
            unknown = set(_SLOT.findall(template)) - known
            if section.startswith(f"{kind} ") and unknown:
                raise ValueError(
                    f"{at}: template {template!r} names unknown slot(s) {sorted(unknown)}; "
                    f"[{section}] templates may name {sorted(known)}"
                )


def _weight(text: str, at: str) -> float:
    try:
        w = float(text)
    except ValueError:
        w = math.nan
    if not 0 < w < math.inf:
        raise ValueError(f"{at}: family weight {text!r} is not a positive number")
    return w


def parse_templates(text: str, source: str) -> TemplateBook:
    """The sections of a template file; anything malformed raises ValueError naming source:line."""
    sections: dict[tuple[str, str], list[str]] = {}  # (kind, name) -> templates
    header_at: dict[tuple[str, str], str] = {}
    weights: dict[str, float] = {}
    where: dict[tuple[str, str], str] = {}
    section = None
    for lineno, line in enumerate(text.splitlines(), 1):
        at = f"{source}:{lineno}"
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            m = _HEADER.fullmatch(line)
            if not m or (m[1] == "family") != (m[3] is not None):
                want = "'[family NAME WEIGHT]' or '[rare NAME]'"
                raise ValueError(f"{at}: bad header {line!r}; want {want}")
            section = (m[1], m[2])
            if section in sections:
                raise ValueError(f"{at}: {line!r} repeats the section of {header_at[section]}")
            if m[1] == "rare" and m[2] not in RARE_SECTIONS:
                raise ValueError(f"{at}: unknown section {line!r}; rare ones: {RARE_SECTIONS}")
            if m[1] == "family":
                weights[m[2]] = _weight(m[3], at)
            sections[section], header_at[section] = [], at
            continue
        if section is None:
            raise ValueError(f"{at}: template {line!r} before the first [family ...] header")
        bad = [t for t in line.split(" ") if not _TOKEN.fullmatch(t)]
        if bad:
            raise ValueError(
                f"{at}: {bad[0]!r} in {line!r} is neither a lowercase word nor a {{slot}} "
                "(words and slots are separated by single spaces)"
            )
        key = (" ".join(section), line)
        if key in where:
            raise ValueError(f"{at}: {line!r} repeats {where[key]} (it would weigh double)")
        sections[section].append(line)
        where[key] = at
    for section, at in header_at.items():
        if not sections[section]:
            raise ValueError(f"{at}: section [{' '.join(section)}] has no template")
    missing = ["[family ...]"] * (not weights)
    missing += [f"[rare {r}]" for r in RARE_SECTIONS if ("rare", r) not in sections]
    if missing:
        raise ValueError(f"{source}: no {', '.join(missing)} section")
    if not math.isclose(sum(weights.values()), 1.0, abs_tol=1e-6):
        raise ValueError(f"{source}: the family weights sum to {sum(weights.values()):.6g}, not 1")
    families = {name: tuple(t) for (kind, name), t in sections.items() if kind == "family"}
    rare = {name: tuple(t) for (kind, name), t in sections.items() if kind == "rare"}
    return TemplateBook(families, weights, rare, where)


@lru_cache(maxsize=None)
def load_templates(name: str = "request_templates") -> TemplateBook:
    """resources/<name>.txt parsed by :func:`parse_templates`."""
    path = RESOURCES / f"{name}.txt"
    return parse_templates(path.read_text(encoding="utf-8"), str(path))

