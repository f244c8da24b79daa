"""The voice-assistant request generator: slot inventory, common requests, rare-entity requests.

Slot values and phrasings are drawn Zipf-like (rank r has weight 1 / r**s): real assistant traffic
is dominated by a few commands, names and places, and the skew is what keeps the test split's
out-of-vocabulary rate against a few hours of training text near 1 %. The phrasings are data:
resources/request_templates.txt (edgeasr.data.synthetic.templates).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping, Sequence

import names
import numpy as np
from num2words import num2words

from ..word_classes import CARRIER, Segments, fill_segments, normalize_segments
from .normalize import normalize_text
from .templates import RESOURCES, load_templates

# ---------------------------------------------------------------------------------------------
# Word lists


@lru_cache(maxsize=None)
def load_list(name: str) -> tuple[str, ...]:
    """Entries of resources/<name>.txt: one per line, '#' comments skipped, order kept, unique."""
    seen: dict[str, None] = {}
    for line in (RESOURCES / f"{name}.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            seen.setdefault(normalize_text(line), None)
    return tuple(seen)


@lru_cache(maxsize=None)
def census_names(kind: str, min_rank: int = 0) -> tuple[str, ...]:
    """Census names from the PyPI `names` package, most frequent first (lowercase, letters only).

    kind: "first" (male and female lists merged by frequency) or "last"; `min_rank` keeps only
    names whose census rank (as listed in the package's files) is above it.
    """
    root = Path(names.__file__).resolve().parent
    lists = ["dist.male.first", "dist.female.first"] if kind == "first" else ["dist.all.last"]
    rows: list[tuple[float, int, str]] = []
    for fname in lists:
        for line in (root / fname).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and int(parts[3]) > min_rank:
                rows.append((float(parts[1]), int(parts[3]), parts[0].lower()))
    # Frequencies are per-sex percentages: a merged ranking by frequency is close enough.
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    out: dict[str, None] = {}
    for _, _, name in rows:
        if name.isalpha() and name.isascii() and len(name) >= 2:
            out.setdefault(name, None)
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Sampling helpers


class Zipf:
    """Draws items with weight 1 / rank**s (rank 1 = first item)."""

    def __init__(self, items: Sequence, s: float = 1.0, weights: Sequence[float] | None = None):
        if len(items) == 0:
            raise ValueError("Zipf over an empty list")
        self.items = list(items)
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
        else:
            w = 1.0 / np.arange(1, len(self.items) + 1, dtype=np.float64) ** s
        self.cdf = np.cumsum(w) / w.sum()

    def __call__(self, rng: np.random.Generator):
        i = int(np.searchsorted(self.cdf, rng.random(), side="right"))
        return self.items[min(i, len(self.items) - 1)]

    def __len__(self) -> int:
        return len(self.items)


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DIMMABLE = ("lights", "light", "lamp", "lamps", "bulb", "strip", "chandelier", "sconce", "lantern")
RELATIONS = (
    "mom",
    "dad",
    "home",
    "grandma",
    "my wife",
    "my husband",
    "grandpa",
    "my sister",
    "my brother",
    "the office",
)

# ---------------------------------------------------------------------------------------------
# Inventory


@dataclass
class Inventory:
    """Slot values shared by the main splits, each list in popularity order (commonest first)."""

    contacts: list[tuple[str, str]]
    appliances: list[str]
    songs: list[str]
    artists: list[str]
    cities: list[str]
    shopping_items: list[str]
    messages: list[str] = field(default_factory=lambda: list(load_list("messages")))
    rooms: list[str] = field(default_factory=lambda: list(load_list("appliance_rooms")))

    def words(self) -> set[str]:
        """Every word any slot value can contribute."""
        out: set[str] = set()
        for seq in (
            self.appliances,
            self.songs,
            self.artists,
            self.cities,
            self.shopping_items,
            self.messages,
            self.rooms,
            RELATIONS,
            WEEKDAYS,
        ):
            for entry in seq:
                out.update(entry.split())
        for first, last in self.contacts:
            out.update((first, last))
        return out


def _take(name: str, n: int) -> list[str]:
    items = load_list(name)
    return list(items[: max(1, min(int(n), len(items)))])


def build_inventory(inv: Mapping, rng: np.random.Generator) -> Inventory:
    """The common slot inventory from the `inventory` config node.

    Contacts pair a first and a last name, each drawn Zipf-like from the top census names, so the
    most common names recur across contacts (as in real address books) and the word vocabulary
    grows much more slowly than the number of contacts.
    """
    n_contacts = int(inv.get("contacts", 250))
    pool = max(20, n_contacts // 2)
    firsts = Zipf(census_names("first")[:pool], 0.9)
    lasts = Zipf(census_names("last")[:pool], 0.9)
    contacts: dict[tuple[str, str], None] = {}
    for _ in range(n_contacts * 50):
        if len(contacts) >= n_contacts:
            break
        contacts.setdefault((firsts(rng), lasts(rng)), None)

    n_app = int(inv.get("appliances", 40))
    rooms = Zipf(load_list("appliance_rooms"), 1.0)
    devices = Zipf(load_list("appliance_devices"), 1.0)
    appliances: dict[str, None] = {}
    for _ in range(n_app * 50):
        if len(appliances) >= n_app:
            break
        dev = devices(rng)
        appliances.setdefault(dev if rng.random() < 0.2 else f"{rooms(rng)} {dev}", None)

    return Inventory(
        contacts=list(contacts),
        appliances=list(appliances),
        songs=_take("songs", inv.get("songs", 120)),
        artists=_take("artists", inv.get("artists", 80)),
        cities=_take("cities", inv.get("cities", 120)),
        shopping_items=_take("shopping_items", inv.get("shopping_items", 80)),
    )


# ---------------------------------------------------------------------------------------------
# Requests


@dataclass
class Request:
    """One generated utterance. `spoken` is what eSpeak reads (words plus prosody punctuation);
    `word_classes` has one "s" (slot value) or "c" (carrier) per word of `text`
    (edgeasr.data.word_classes)."""

    text: str
    spoken: str
    family: str
    entity: str | None = None
    context: list[str] | None = None
    word_classes: str | None = None


_QUESTION_START = {"what", "what's", "how", "will", "is", "do", "who", "are", "when", "whats"}

Slots = Mapping[str, Callable[[np.random.Generator], str]]


def _fill(template: str, slots: Slots, rng: np.random.Generator) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: slots[m.group(1)](rng), template)


# Phrasings per family, most common first (drawn Zipf-like), and the families' weights.
_BOOK = load_templates()
TEMPLATES = _BOOK.families
FAMILY_WEIGHTS = _BOOK.weights
RARE_TEMPLATES = {f: _BOOK.rare[f] for f in ("call", "device")}
RARE_DIMMABLE_TEMPLATES = _BOOK.rare["dimmable"]  # only for a rare device that dims
# Phrasings vary more than slot values: their words are few and shared, so they cost little OOV.
TEMPLATE_ZIPF = 0.7

MINUTES = (5, 10, 1, 2, 3, 15, 20, 30, 25, 4, 45, 8, 12, 6, 7, 40, 90, 35, 50, 9, 18, 11)
SECONDS = (30, 10, 20, 45, 15, 90, 40)
PERCENTS = (50, 20, 30, 100, 10, 75, 40, 60, 25, 80, 70, 90, 15, 5, 35, 45, 65, 85, 95, 55)
HOURS = (7, 6, 8, 5, 9, 10, 11, 12, 1, 2, 3, 4)
MINUTE_WORDS = (
    "",
    "thirty",
    "o'clock",
    "fifteen",
    "forty five",
    "forty",
    "twenty",
    "ten",
    "fifty",
    "oh five",
    "forty five",
    "twenty five",
    "thirty five",
    "fifty five",
)
DAYPARTS = ("", "", "in the morning", "tonight", "in the evening", "in the afternoon")
WHEN = (
    "today",
    "tomorrow",
    "tonight",
    "this weekend",
    "this afternoon",
    "on {weekday}",
    "this evening",
    "tomorrow morning",
    "next week",
    "this morning",
)
_EXTRA_WORDS = "minute minutes second seconds hour hours half past quarter to noon midnight percent"
FOODS = ("pasta", "eggs", "rice", "pizza", "cookies", "potatoes", "chicken", "bread", "oven")


class RequestGenerator:
    """Draws voice-assistant requests over the common inventory (the main splits).

    Every draw consumes the caller's generator only, so a split's texts depend on its own stream.
    """

    def __init__(
        self, inventory: Inventory, wake_word: str | None = "alexa", wake_word_prob: float = 0.3
    ):
        self.inv = inventory
        self.wake_word = normalize_text(wake_word) if wake_word else ""
        self.wake_word_prob = float(wake_word_prob) if self.wake_word else 0.0
        inv = inventory
        contacts = Zipf(inv.contacts, 1.0)
        firsts = Zipf(_unique(c[0] for c in inv.contacts), 1.0)
        apps = Zipf(inv.appliances, 1.0)
        lights = [a for a in inv.appliances if a.split()[-1] in DIMMABLE] or ["lights"]
        lights_z = Zipf(lights, 1.0)
        hours = Zipf(HOURS, 1.0)
        minute_words = Zipf(MINUTE_WORDS, 1.0)
        dayparts = Zipf(DAYPARTS, 1.0)
        weekday = Zipf(WEEKDAYS, 0.3)
        minutes = Zipf(MINUTES, 1.1)
        seconds = Zipf(SECONDS, 1.0)
        n_hours = Zipf((1, 2, 3), 1.5)

        def time_of_day(rng):
            h = num2words(hours(rng))
            r = rng.random()
            if r < 0.1:
                return f"half past {h}"
            if r < 0.15:
                return f"quarter to {h}"
            if r < 0.2:
                return "noon" if rng.random() < 0.5 else "midnight"
            mw = minute_words(rng)
            part = dayparts(rng)
            return " ".join(x for x in (h, mw, part) if x)

        def clock(rng):
            return " ".join(x for x in (num2words(hours(rng)), minute_words(rng)) if x)

        def when(rng):
            return _fill(self._when(rng), {"weekday": weekday}, rng)

        self._when = Zipf(WHEN, 1.0)
        self.slots: dict[str, Callable[[np.random.Generator], str]] = {
            "contact": lambda rng: " ".join(contacts(rng)),
            "first": firsts,
            "relation": Zipf(RELATIONS, 1.0),
            "message": Zipf(inv.messages, 1.1),
            "app": apps,
            "light": lights_z,
            "pct": Zipf([str(p) for p in PERCENTS], 1.0),
            "song": Zipf(inv.songs, 1.0),
            "artist": Zipf(inv.artists, 1.0),
            "city": Zipf(inv.cities, 1.0),
            "item": Zipf(inv.shopping_items, 1.0),
            "room": Zipf(inv.rooms, 1.2),
            "vol": Zipf(tuple(str(v) for v in (5, 3, 7, 4, 6, 2, 8, 10, 1, 9)), 1.0),
            "n": lambda rng: str(minutes(rng)),
            "minutes": lambda rng: _plural(minutes(rng), "minute"),
            "seconds": lambda rng: _plural(seconds(rng), "second"),
            "hours": lambda rng: _plural(n_hours(rng), "hour"),
            "time": time_of_day,
            "clock": clock,
            "when": when,
            "weekday": weekday,
            "food": Zipf(FOODS, 1.0),
        }
        _BOOK.check_slots("family", self.slots)
        self.templates = {f: Zipf(t, TEMPLATE_ZIPF) for f, t in TEMPLATES.items()}
        self.families = Zipf(list(FAMILY_WEIGHTS), weights=list(FAMILY_WEIGHTS.values()))

    def _finish(self, body: Segments, family: str, rng: np.random.Generator, **kw) -> Request:
        words, classes = normalize_segments(body, normalize_text)
        spoken = words + ("?" if words.split()[0] in _QUESTION_START else "")
        text = words
        if self.wake_word and rng.random() < self.wake_word_prob:
            spoken = f"{self.wake_word}, {spoken}"
            text = f"{self.wake_word} {words}"
            classes = CARRIER * len(self.wake_word.split()) + classes
        return Request(text=text, spoken=spoken, family=family, word_classes=classes, **kw)

    def sample(self, rng: np.random.Generator) -> Request:
        """One request over the common inventory."""
        family = self.families(rng)
        body = fill_segments(self.templates[family](rng), self.slots, rng)
        return self._finish(body, family, rng)

    def vocabulary(self) -> set[str]:
        """All words the common generator can produce (templates, slot values, numbers)."""
        words = set(self.inv.words())
        for temps in (
            list(TEMPLATES.values()) + list(RARE_TEMPLATES.values()) + [RARE_DIMMABLE_TEMPLATES]
        ):
            for t in temps:
                words.update(normalize_text(re.sub(r"\{\w+\}", " ", t)).split())
        for seq in (WHEN, MINUTE_WORDS, DAYPARTS, FOODS, RELATIONS):
            for t in seq:
                words.update(normalize_text(re.sub(r"\{\w+\}", " ", t)).split())
        for n in set(MINUTES + SECONDS + PERCENTS + HOURS) | set(range(1, 11)):
            words.update(normalize_text(str(n)).split())
        words.update(_EXTRA_WORDS.split())
        words.add(self.wake_word)
        words.discard("")
        return words


def _unique(it) -> list:
    return list(dict.fromkeys(it))


# ---------------------------------------------------------------------------------------------
# Rare entities (test_rare)


class RareRequestGenerator:
    """Requests naming rare contacts or rare device nicknames, each with a per-user context list.

    Rare contacts: uncommon census first names with surnames ranked above `min_rank`; rare device
    nicknames: unusual adjectives/rooms with device types. Words the common generator can produce
    are excluded, so the named entity always carries words unseen in training.
    """

    def __init__(self, common: RequestGenerator, min_rank: int = 20000, context_size: int = 12):
        self.common = common
        self.min_rank = int(min_rank)
        self.context_size = max(1, int(context_size))
        vocab = common.vocabulary()
        firsts = [n for n in census_names("first")[1000:] if n not in vocab]
        lasts = [n for n in census_names("last", int(min_rank)) if n not in vocab and len(n) >= 3]
        self._firsts, self._lasts = firsts, lasts
        adjs = [a for a in load_list("rare_adjectives") if not set(a.split()) <= vocab]
        rooms = [r for r in load_list("rare_rooms") if not set(r.split()) <= vocab]
        self._qualifiers = adjs + rooms
        self._devices = list(load_list("rare_devices")) + list(load_list("appliance_devices"))
        self._pct = common.slots["pct"]
        self._message = common.slots["message"]
        _BOOK.check_slots("rare", ("contact", "app", "pct", "message"))  # what sample() fills

    def _rare_contact(self, rng) -> str:
        first = self._firsts[rng.integers(len(self._firsts))]
        return f"{first} {self._lasts[rng.integers(len(self._lasts))]}"

    def _rare_device(self, rng) -> str:
        q = self._qualifiers[rng.integers(len(self._qualifiers))]
        d = self._devices[rng.integers(len(self._devices))]
        return f"{q} {d}"

    def _common_contact(self, rng) -> str:
        return self.common.slots["contact"](rng)

    def sample(self, rng: np.random.Generator) -> Request:
        """One request naming a rare entity, with a shuffled context list containing it."""
        if rng.random() < 0.6:
            family, entity = "call", self._rare_contact(rng)
            template = RARE_TEMPLATES["call"][rng.integers(len(RARE_TEMPLATES["call"]))]
        else:
            family, entity = "device", self._rare_device(rng)
            temps = RARE_TEMPLATES["device"]
            if entity.split()[-1] in DIMMABLE:
                temps = temps + RARE_DIMMABLE_TEMPLATES
            template = temps[rng.integers(len(temps))]
        slots = {
            "contact": lambda r: entity,
            "app": lambda r: entity,
            "pct": self._pct,
            "message": self._message,
        }
        body = fill_segments(template, slots, rng)
        context = [entity]
        n_devices = self.context_size // 3
        for _ in range(self.context_size * 20):
            if len(context) >= self.context_size:
                break
            want_device = (len(context) - 1) < n_devices
            rare = rng.random() < 0.7
            if want_device:
                cand = self._rare_device(rng) if rare else self.common.slots["app"](rng)
            else:
                cand = self._rare_contact(rng) if rare else self._common_contact(rng)
            if cand not in context:
                context.append(cand)
        order = rng.permutation(len(context))
        context = [context[i] for i in order]
        return self.common._finish(body, family, rng, entity=entity, context=context)


def long_tail_generator(common: RequestGenerator, rare: RareRequestGenerator, contact_prob: float) -> RequestGenerator:
    """``common`` whose contacts are, with probability ``contact_prob``, a long-tail name instead of
    one from the address-book inventory: census first names ranked 125–1,000 and surnames ranked up
    to ``rare.min_rank`` that are neither inventory nor rare-split words.

    For training splits only. A real corpus holds thousands of names said once; the inventory's
    250 recurring ones teach a model to recognise those names whole, not to spell a new one, so a
    shallow-fusion boost has nothing to boost. ``test_rare``'s names stay unseen: its surnames rank
    above ``min_rank`` and its first names below 1,000, and shared strings are dropped.
    """
    if not 0.0 <= contact_prob <= 1.0:
        raise ValueError(f"long_tail.contact_prob {contact_prob} must lie in [0, 1]")
    held_out = set(rare._firsts) | set(rare._lasts) | {w for q in rare._qualifiers for w in q.split()}
    vocab = common.vocabulary()
    firsts = [n for n in census_names("first")[:1000] if n not in vocab and n not in held_out]
    held_out |= set(census_names("last", rare.min_rank))  # test_rare's surname pool, before its filters
    lasts = [n for n in census_names("last") if n not in vocab and n not in held_out and len(n) >= 3]
    inventory_contact = common.slots["contact"]

    def contact(rng: np.random.Generator) -> str:
        if rng.random() < contact_prob:
            return f"{firsts[rng.integers(len(firsts))]} {lasts[rng.integers(len(lasts))]}"
        return inventory_contact(rng)

    gen = copy.copy(common)  # shares the templates and samplers; only the contact slot differs
    gen.slots = {**common.slots, "contact": contact}
    return gen
