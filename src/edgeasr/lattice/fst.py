"""The N-best word lattice: a determinized, weight-pushed, minimized acceptor over words.

Weights are Kaldi's lattice weights, a pair (graph cost, acoustic cost) (:mod:`.nbest`), compared
by their sum (ties: the lower graph cost), combined by adding both parts; so the pair summed
along a path is that hypothesis's (graph, acoustic) cost, and a rescorer can weigh them apart.

Construction (:func:`build_lattice`), exact for a union of N word strings:

1. costs go onto a grid of ``2**-step_log2`` nats and are kept as integers from then on, so every
   later step is exact and the wire format (:mod:`.codec`) round-trips bit for bit;
2. hypotheses spelling the same words (other BPE splits) merge: the semiring's ⊕ keeps the better;
3. determinize: the union of distinct strings becomes their prefix tree;
4. push weights toward the start (each state's potential = its best completion), so that states
   with the same futures carry the same weights;
5. minimize with OpenFst (``kaldifst.minimize``) on the acceptor whose labels encode (word, weight
   pair), as Kaldi's ``fstminimizeencoded`` does, then read it back with states in topological order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import kaldifst

from .nbest import ScoredHyp

Pair = tuple[int, int]  # (graph, acoustic) in grid units


@dataclass(frozen=True)
class LatticePath:
    """One path: its words and the (graph, acoustic) costs summed along it, in nats."""

    words: tuple[str, ...]
    graph_cost: float
    acoustic_cost: float

    @property
    def cost(self) -> float:
        return self.graph_cost + self.acoustic_cost


@dataclass
class WordLattice:
    """An acyclic word acceptor; state 0 is the start, every arc goes to a higher state.

    words / pieces: label ``k`` (1-based, 0 is epsilon in OpenFst) is ``words[k - 1]``, spelled
    with BPE ids ``pieces[k - 1]``; arcs: per state ``(label, next state, graph, acoustic)``;
    finals: state -> (graph, acoustic) final weight; weights in units of ``2**-step_log2`` nats."""

    words: list[str]
    pieces: list[tuple[int, ...]]
    arcs: list[list[tuple[int, int, int, int]]]
    finals: dict[int, Pair]
    step_log2: int

    @property
    def step(self) -> float:
        return 2.0 ** -self.step_log2

    @property
    def num_states(self) -> int:
        return len(self.arcs)

    @property
    def num_arcs(self) -> int:
        return sum(len(a) for a in self.arcs)

    def paths(self) -> list[LatticePath]:
        """Every path, cheapest first (ties: lower graph cost, then the words)."""
        out: list[tuple[tuple[str, ...], int, int]] = []
        todo = [(0, (), 0, 0)]
        while todo:
            s, words, g, a = todo.pop()
            if s in self.finals:
                fg, fa = self.finals[s]
                out.append((words, g + fg, a + fa))
            todo.extend((nxt, words + (self.words[lab - 1],), g + wg, a + wa) for lab, nxt, wg, wa in self.arcs[s])
        out.sort(key=lambda p: (p[1] + p[2], p[1], p[0]))
        return [LatticePath(w, g * self.step, a * self.step) for w, g, a in out]

    def best(self) -> LatticePath:
        return self.paths()[0]

    def to_fst(self) -> kaldifst.Lattice:
        """The lattice as an OpenFst ``Lattice`` (kaldifst), weights ``LatticeWeight(graph, acoustic)``."""
        fst = kaldifst.Lattice()
        for _ in self.arcs:
            fst.add_state()
        fst.start = 0
        for s, arcs in enumerate(self.arcs):
            for lab, nxt, g, a in arcs:
                fst.add_arc(s, kaldifst.LatticeArc(lab, lab, kaldifst.LatticeWeight(g * self.step, a * self.step), nxt))
        for s, (g, a) in self.finals.items():
            fst.set_final(s, kaldifst.LatticeWeight(g * self.step, a * self.step))
        return fst

    def symbols(self) -> kaldifst.SymbolTable:
        table = kaldifst.SymbolTable()
        table.add_symbol("<eps>", 0)
        for k, w in enumerate(self.words, 1):
            table.add_symbol(w, k)
        return table

    def draw(self, title: str = "") -> str:
        """Graphviz dot text (OpenFst's fstdraw): words on arcs, ``graph,acoustic`` costs."""
        table = self.symbols()
        return kaldifst.draw(self.to_fst(), acceptor=True, isymbols=table, osymbols=table, title=title,
                             portrait=True, precision=4)


def same_up_to_ties(a: WordLattice, b: WordLattice, tol: float) -> bool:
    """Whether two lattices of one utterance (e.g. the integer runtime's and the PyTorch student's)
    agree but for near-ties: the paths both have cost the same within ``tol`` nats, and a path only
    one of them has costs within ``tol`` of the other's worst path, i.e. it sat on the N-best
    boundary, where a rounding difference decides what survives. Total costs only: when two BPE
    spellings of the same words both reach the N-best, either side may keep the other one, with
    another (graph, acoustic) split of a nearly equal total."""
    pa, pb = {p.words: p for p in a.paths()}, {p.words: p for p in b.paths()}
    if any(abs(pa[w].cost - pb[w].cost) > tol for w in pa.keys() & pb.keys()):
        return False
    for mine, theirs in ((pa, pb), (pb, pa)):
        worst = max(p.cost for p in theirs.values())
        if any(p.cost < worst - tol for w, p in mine.items() if w not in theirs):
            return False
    return True


def _grid(cost: float, step_log2: int) -> int:
    if not math.isfinite(cost):
        raise ValueError(f"cannot put a non-finite cost ({cost}) into a lattice")
    return math.floor(cost * 2.0 ** step_log2 + 0.5)


def _better(p: Pair, q: Pair) -> bool:
    """The lattice semiring's order: lower total cost, ties broken by the lower graph cost (Kaldi's)."""
    return (p[0] + p[1], p[0]) < (q[0] + q[1], q[0])


def _sub(p: Pair, q: Pair) -> Pair:
    return p[0] - q[0], p[1] - q[1]


def build_lattice(hyps: Sequence[ScoredHyp], step_log2: int = 7) -> WordLattice:
    """The minimal deterministic word lattice of ``hyps`` (one utterance's N-best, any order)."""
    if not hyps:
        raise ValueError("cannot build a lattice from an empty N-best list")
    best: dict[tuple[str, ...], tuple[Pair, tuple[tuple[int, ...], ...]]] = {}
    for h in hyps:
        w = (_grid(h.graph_cost, step_log2), _grid(h.acoustic_cost, step_log2))
        if h.words not in best or _better(w, best[h.words][0]):
            best[h.words] = (w, h.pieces)
    order = sorted(best.items(), key=lambda kv: (kv[1][0][0] + kv[1][0][1], kv[1][0][0], kv[0]))
    label: dict[str, int] = {}
    pieces: list[tuple[int, ...]] = []
    # prefix tree: node 0 the root
    children: list[dict[int, int]] = [{}]
    final: dict[int, Pair] = {}
    for words, (w, spelled) in order:
        node = 0
        for word, p in zip(words, spelled):
            lab = label.setdefault(word, len(label) + 1)
            if lab > len(pieces):
                pieces.append(p)
            if lab not in children[node]:
                children[node][lab] = len(children)
                children.append({})
            node = children[node][lab]
        final[node] = w
    # push: a node's potential is its best completion; the root's is 0 (an FST has no initial weight)
    pot: list[Pair] = [(0, 0)] * len(children)
    for node in reversed(range(len(children))):  # children are numbered after their parents
        cands = [pot[c] for c in children[node].values()] + ([final[node]] if node in final else [])
        pot[node] = min(cands, key=lambda p: (p[0] + p[1], p[0]))
    pot[0] = (0, 0)
    arcs = [[(lab, c, *_sub(pot[c], pot[n])) for lab, c in kids.items()] for n, kids in enumerate(children)]
    finals = {n: _sub(w, pot[n]) for n, w in final.items()}
    words = list(label)
    return _minimize(WordLattice(words, pieces, arcs, finals, step_log2))


def _minimize(lat: WordLattice) -> WordLattice:
    """OpenFst minimization of the deterministic ``lat`` with (label, weights) encoded as one label
    and each final weight as an arc to one super-final state; decoded back, states renumbered."""
    codes: dict[tuple, int] = {}
    fst = kaldifst.StdVectorFst()
    for _ in range(lat.num_states + 1):
        fst.add_state()
    fst.start = 0
    sink = lat.num_states
    fst.set_final(sink, 0.0)
    for s, arcs in enumerate(lat.arcs):
        for lab, nxt, g, a in arcs:
            code = codes.setdefault(("arc", lab, g, a), len(codes) + 1)
            fst.add_arc(s, kaldifst.StdArc(code, code, 0.0, nxt))
    for s, (g, a) in lat.finals.items():
        code = codes.setdefault(("final", g, a), len(codes) + 1)
        fst.add_arc(s, kaldifst.StdArc(code, code, 0.0, sink))
    kaldifst.minimize(fst)
    decode = {code: key for key, code in codes.items()}
    arcs: dict[int, list[tuple[int, int, int, int]]] = {}
    finals: dict[int, Pair] = {}
    for s in kaldifst.StateIterator(fst):
        arcs[s] = []
        for arc in kaldifst.ArcIterator(fst, s):
            key = decode[arc.ilabel]
            if key[0] == "final":
                finals[s] = key[1:]
            else:
                arcs[s].append((key[1], arc.nextstate, key[2], key[3]))
    return _renumber(lat, fst.start, arcs, finals)


def _renumber(lat: WordLattice, start: int, arcs: dict, finals: dict) -> WordLattice:
    """States in topological order (reverse DFS postorder, arcs by label), the start first; drops
    the super-final state, which now has no arcs and no final weight of its own."""
    post, seen = [], set()
    stack = [(start, iter(sorted(arcs[start])))]
    seen.add(start)
    while stack:
        s, it = stack[-1]
        nxt = next((a for a in it if a[1] not in seen), None)
        if nxt is None:
            post.append(s)
            stack.pop()
        else:
            seen.add(nxt[1])
            stack.append((nxt[1], iter(sorted(arcs[nxt[1]]))))
    keep = [s for s in reversed(post) if arcs[s] or s in finals]
    new = {s: i for i, s in enumerate(keep)}
    out_arcs = [sorted((lab, new[n], g, a) for lab, n, g, a in arcs[s]) for s in keep]
    out_finals = {new[s]: tuple(finals[s]) for s in keep if s in finals}
    return WordLattice(lat.words, lat.pieces, out_arcs, out_finals, lat.step_log2)
