"""Oracle error of a lattice: the path closest to the reference.

For an N-best lattice the paths are few (at most N), so the minimum edit distance over them is
exact; WER then sums these errors over the set, as :class:`edgeasr.metrics.WerAccumulator` does.
"""

from __future__ import annotations

from typing import Sequence

import kaldialign

from .fst import LatticePath


def oracle_path(paths: Sequence[LatticePath], ref: Sequence[str]) -> tuple[LatticePath, int]:
    """``(path, word errors)`` of the path with the fewest errors against ``ref`` (ties: the
    cheaper path, as ``paths`` come cheapest first from :meth:`WordLattice.paths`)."""
    if not paths:
        raise ValueError("a lattice with no paths has no oracle path")
    best, errors = paths[0], None
    for p in paths:
        e = kaldialign.edit_distance(list(ref), list(p.words))["total"]
        if errors is None or e < errors:
            best, errors = p, e
    return best, errors
