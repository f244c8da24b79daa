"""WER from summed counts, icefall-style recogs/errs files."""

from __future__ import annotations

import pytest

from edgeasr.metrics import WerAccumulator, _align, _combine


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
    assert " ".join(_combine(_align("call mom now".split(), "all men now".split()))) == "(call mom->all men) now"


def test_word_class_counts_on_hand_built_alignments():
    acc = WerAccumulator()
    # "john" -> "jon": a substitution inside the slot value; "now" deleted: a carrier deletion.
    acc.update(["call john smith now"], ["call jon smith"], ids=["a"], classes=["cssc"])
    assert (acc.class_errors, acc.class_words) == ({"s": 1, "c": 1}, {"s": 2, "c": 2})
    assert acc.slot_wer == pytest.approx(50.0) and acc.carrier_wer == pytest.approx(50.0)
    # Insertions: "uh" between carrier "play" and slot "jazz" -> slot; "please" after the last
    # (carrier) word -> carrier; "now" between two carrier words -> carrier.
    b = WerAccumulator()
    b.update(["play jazz in the kitchen", "turn it up"], ["play uh jazz in the kitchen", "turn it now up please"],
             classes=["csccs", list("ccc")])
    assert b.ins == 3 and b.class_errors == {"s": 1, "c": 2}
    assert b.class_words == {"s": 2, "c": 6}
    # An insertion at the start counts for the first word's class; into an empty reference: carrier.
    c = WerAccumulator()
    c.update(["mom", "play music", ""], ["hi mom", "play music", "hello"], classes=["s", "cc", ""])
    assert c.class_errors == {"s": 1, "c": 1} and c.class_words == {"s": 1, "c": 2}
    assert c.carrier_wer == pytest.approx(50.0) and c.slot_wer == pytest.approx(100.0)
    # Slot + carrier errors are all the errors, whatever the mix.
    for x in (acc, b, c):
        assert sum(x.class_errors.values()) == x.errors and sum(x.class_words.values()) == x.words
    s = acc.merge(b).summary()
    assert (s["slot_errors"], s["slot_words"], s["carrier_errors"], s["carrier_words"]) == (2, 4, 3, 8)
    assert s["slot_wer"] == pytest.approx(50.0) and s["carrier_wer"] == pytest.approx(300 / 8)
    assert s["errors"] == s["slot_errors"] + s["carrier_errors"]


def test_word_classes_absent_or_wrong():
    acc = WerAccumulator()
    acc.update(["a b"], ["a c"])
    assert not acc.has_classes and acc.slot_wer is None and acc.carrier_wer is None
    assert "slot_wer" not in acc.summary()
    # one utterance without classes makes the per-class figures absent for the whole set
    acc.update(["x y"], ["x y"], classes=["cs"])
    assert acc.slot_wer is None and "carrier_wer" not in acc.summary()
    for bad in (["s"], ["sx"]):  # wrong length, unknown class
        with pytest.raises(ValueError, match="word classes"):
            WerAccumulator().update(["a b"], ["a b"], classes=bad)
    with pytest.raises(ValueError):
        WerAccumulator().update(["a", "b"], ["a", "b"], classes=["s"])


def test_errs_file_reports_classes(tmp_path):
    acc = WerAccumulator()
    acc.update(["call john smith now"], ["call jon smith"], ids=["a"], classes=["cssc"])
    acc.write_errs(tmp_path / "errs.txt")
    errs = (tmp_path / "errs.txt").read_text().splitlines()
    assert errs[0] == "%WER = 50.00" and errs[2].startswith("Slot words: %WER = 50.00 (1 errors / 2 words)")
    plain = WerAccumulator()
    plain.update(["call john smith now"], ["call jon smith"], ids=["a"])
    plain.write_errs(tmp_path / "plain.txt")
    assert "Slot words" not in (tmp_path / "plain.txt").read_text()
