"""The wire format of a word lattice: what the device sends the cloud instead of audio.

Byte layout (version 1); ``uv`` is an unsigned LEB128 varint, ``sv`` a zigzag-encoded signed one::

    u8 version (1) | u8 step_log2 (weights are integers in units of 2**-step_log2 nats)
    uv W, then W words: uv n, n x uv BPE id        (word k+1 is spelled by these pieces)
    uv S (states, topological order, 0 = start), then per state:
        uv (n_arcs << 1 | is_final) | if final: sv graph, sv acoustic
        n_arcs x (uv label - 1 | uv next - state - 1 | sv graph | sv acoustic)

Words travel as BPE ids of the model's token list (``tokens.txt`` / the exported file's header),
which the receiver needs to spell them; no symbol table, no per-state padding. Pushed weights are
mostly 0 (one byte each). Decoding validates everything and raises :class:`LatticeFormatError`
naming what is wrong.

A set of lattices (one split) is stored as gzipped JSON lines ``{"id": ..., "lattice": base64}``
(:func:`write_lattices` / :func:`read_lattices`): what a rescoring step reads.
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Iterable, Sequence

from .fst import WordLattice
from .nbest import SPACE

VERSION = 1


class LatticeFormatError(ValueError):
    """Bytes that are not a version-1 serialized word lattice."""


def _uv(out: bytearray, n: int) -> None:
    if n < 0:
        raise ValueError(f"cannot write {n} as an unsigned varint")
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)


def _sv(out: bytearray, n: int) -> None:
    _uv(out, 2 * n if n >= 0 else -2 * n - 1)


def serialize(lat: WordLattice) -> bytes:
    """The lattice as bytes (module docstring); ``deserialize`` returns an equal lattice."""
    out = bytearray([VERSION, lat.step_log2])
    _uv(out, len(lat.pieces))
    for p in lat.pieces:
        _uv(out, len(p))
        for t in p:
            _uv(out, t)
    _uv(out, lat.num_states)
    for s, arcs in enumerate(lat.arcs):
        _uv(out, len(arcs) << 1 | (s in lat.finals))
        if s in lat.finals:
            for x in lat.finals[s]:
                _sv(out, x)
        for lab, nxt, g, a in arcs:
            _uv(out, lab - 1)
            _uv(out, nxt - s - 1)
            _sv(out, g)
            _sv(out, a)
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def uv(self, what: str) -> int:
        n, shift = 0, 0
        while True:
            if self.pos >= len(self.data):
                raise LatticeFormatError(f"lattice bytes end inside {what} (byte {self.pos} of {len(self.data)})")
            b = self.data[self.pos]
            self.pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                return n
            shift += 7
            if shift > 63:
                raise LatticeFormatError(f"{what} at byte {self.pos} is not a varint of at most 64 bits")

    def sv(self, what: str) -> int:
        n = self.uv(what)
        return n >> 1 if n % 2 == 0 else -(n >> 1) - 1


def deserialize(data: bytes, tokens: Sequence[str]) -> WordLattice:
    """Bytes from :func:`serialize` -> the :class:`WordLattice`; ``tokens``: the BPE pieces by id
    that spell the words (the same token list the sender's model has)."""
    if len(data) < 2 or data[0] != VERSION:
        raise LatticeFormatError(f"not a version-{VERSION} word lattice (first byte {data[:1].hex() or 'missing'})")
    r = _Reader(data)
    r.pos, step_log2 = 2, data[1]
    pieces = []
    for k in range(r.uv("the word count")):
        ids = tuple(r.uv(f"word {k + 1}") for _ in range(r.uv(f"word {k + 1}'s length")))
        bad = [t for t in ids if t >= len(tokens)]
        if bad or not ids:
            raise LatticeFormatError(f"word {k + 1} is spelled {list(ids)}: not 1+ ids below the {len(tokens)} tokens")
        pieces.append(ids)
    words = ["".join(tokens[t] for t in p).replace(SPACE, "") for p in pieces]
    n_states = r.uv("the state count")
    if n_states < 1:
        raise LatticeFormatError("a lattice needs at least its start state; this one has 0 states")
    arcs: list[list[tuple[int, int, int, int]]] = []
    finals: dict[int, tuple[int, int]] = {}
    for s in range(n_states):
        head = r.uv(f"state {s}")
        if head & 1:
            finals[s] = (r.sv(f"state {s}'s final weight"), r.sv(f"state {s}'s final weight"))
        row = []
        for _ in range(head >> 1):
            lab, nxt = r.uv(f"an arc of state {s}") + 1, s + 1 + r.uv(f"an arc of state {s}")
            if lab > len(words) or nxt >= n_states:
                raise LatticeFormatError(f"state {s} has an arc with word {lab} to state {nxt}: "
                                         f"only {len(words)} words and {n_states} states exist")
            row.append((lab, nxt, r.sv(f"an arc of state {s}"), r.sv(f"an arc of state {s}")))
        arcs.append(row)
    if r.pos != len(data):
        raise LatticeFormatError(f"{len(data) - r.pos} bytes left over after the lattice's last state")
    return WordLattice(words, pieces, arcs, finals, step_log2)


def write_lattices(path: str | Path, lattices: Iterable[tuple[str, WordLattice]]) -> int:
    """``(utterance id, lattice)`` pairs as gzipped JSON lines; returns how many."""
    n = 0
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for utt_id, lat in lattices:
            f.write(json.dumps({"id": utt_id, "lattice": base64.b64encode(serialize(lat)).decode()}) + "\n")
            n += 1
    return n


def read_lattices(path: str | Path, tokens: Sequence[str]) -> dict[str, WordLattice]:
    """A file from :func:`write_lattices` -> utterance id -> lattice (``tokens`` spell the words)."""
    out = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                out[row["id"]] = deserialize(base64.b64decode(row["lattice"]), tokens)
            except (ValueError, KeyError, TypeError) as e:
                raise LatticeFormatError(f"{path}, line {i}: not a serialized lattice ({e})") from e
    return out
