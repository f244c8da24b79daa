"""WER from summed counts, icefall-style recogs/errs files."""

from __future__ import annotations

import pytest

from edgeasr.metrics import WerAccumulator


def test_hand_computed_counts():
    acc = WerAccumulator()
    # u1: "b"->"x" substitution, "d" deleted; u2: "z" inserted; u3 exact.
    acc.update(["a b c d", "x y"], ["a x c", "x y z"], ids=["u1", "u2"])
    acc.update(["turn on the light"], ["turn on the light"], ids=["u3"])
    assert acc.summary() == {"wer": pytest.approx(300 / 10), "errors": 3, "words": 10,
                             "ins": 1, "del": 1, "sub": 1, "utts": 3}


def test_summed_wer_is_not_the_mean_of_batch_wers():
    """Batch 1: 1 of 1 word wrong (100 %); batch 2: 0 of 9 wrong (0 %).

    The mean of batch WERs says 50 %; the corpus WER is 1 error / 10 words = 10 %.
    """
    acc = WerAccumulator()
    batch_wers = []
    for refs, hyps in ([["play"], ["pay"]], [["set a timer for ten minutes please ok now"], ["set a timer for ten minutes please ok now"]]):
        b = WerAccumulator()
        b.update(refs, hyps)
        batch_wers.append(b.wer)
        acc.update(refs, hyps)
    assert sum(batch_wers) / len(batch_wers) == 50.0
    assert acc.wer == pytest.approx(10.0)
    merged = WerAccumulator()
    for refs, hyps in ([["play"], ["pay"]], [["a b c d e f g h i"], ["a b c d e f g h i"]]):
        part = WerAccumulator()
        part.update(refs, hyps)
        merged.merge(part)
    assert merged.wer == pytest.approx(10.0)


def test_empty_and_edge_cases():
    acc = WerAccumulator()
    assert acc.wer == 0.0
    acc.update([""], ["hello"])
    assert acc.summary()["ins"] == 1 and acc.wer == float("inf")
    acc = WerAccumulator()
    acc.update(["* a"], ["a *"])  # "*" as a real word must not be mistaken for the alignment gap
    assert acc.errors == 2
    with pytest.raises(ValueError):
        acc.update(["a"], ["a", "b"])


def test_recogs_and_errs_files(tmp_path):
    acc = WerAccumulator()
    acc.update(["a b c d", "x y"], ["a x c", "x y z"], ids=["u2", "u1"])
    acc.write_recogs(tmp_path / "recogs.txt")
    acc.write_errs(tmp_path / "errs.txt")
    assert (tmp_path / "recogs.txt").read_text().splitlines() == [
        "u1:\tref=['x', 'y']",
        "u1:\thyp=['x', 'y', 'z']",
        "u2:\tref=['a', 'b', 'c', 'd']",
        "u2:\thyp=['a', 'x', 'c']",
    ]
    errs = (tmp_path / "errs.txt").read_text().splitlines()
    assert errs[0] == "%WER = 50.00"
    assert errs[1] == "Errors: 1 insertions, 1 deletions, 1 substitutions, over 6 reference words (4 correct)"
    assert "u1:\tx y (*->z)" in errs
    assert "u2:\ta (b->x) c (d->*)" in errs
    assert errs[errs.index("SUBSTITUTIONS: count ref -> hyp") + 1] == "1   b -> x"
    assert errs[errs.index("DELETIONS: count ref") + 1] == "1   d"
    assert errs[errs.index("INSERTIONS: count hyp") + 1] == "1   z"
    assert "x   1 1 1 2" in errs  # PER-WORD STATS: corr tot_errs count_in_ref count_in_hyp


def test_successive_errors_are_grouped():
    acc = WerAccumulator()
    acc.update(["call mom now"], ["all men now"], ids=["u"])
    assert acc.summary()["sub"] == 2
    from edgeasr.metrics import _align, _combine

    assert " ".join(_combine(_align("call mom now".split(), "all men now".split()))) == "(call mom->all men) now"
