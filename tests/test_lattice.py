"""N-best word lattices (edgeasr.lattice): construction, wire format, oracle, and the integer
runtime against the PyTorch student."""

from __future__ import annotations

import gzip
import json
import os
import random

import kaldifst
import pytest
import torch

from conftest import TINY_STUDENT_CFG, quantized_tiny_student, random_batch
from edgeasr.lattice import (LatticeFormatError, ScoredHyp, build_lattice, deserialize, nbest_lattices, oracle_path,
                             predictor_log_probs, read_lattices, same_up_to_ties, score_nbest, serialize, words_of,
                             write_lattices)
from edgeasr.runtime import tokens_to_text

VOCAB = ["tu", "rn", "on", "off", "the", "a", "light", "lights", "kit", "chen"]
# a BPE-like token list: id 0 blank, then word-initial pieces "▁w" and continuations
TOKENS = ["<blk>"] + [f"\u2581{w}" for w in VOCAB] + VOCAB


def hyp(text: str, graph: float, acoustic: float) -> ScoredHyp:
    """A hypothesis whose words are spelled by their word-initial pieces."""
    words = tuple(text.split())
    return ScoredHyp(words, tuple((1 + VOCAB.index(w),) for w in words), graph, acoustic)


def grid(x: float, step_log2: int = 7) -> float:
    return round(x * 2**step_log2) / 2**step_log2


def random_nbest(rng: random.Random, n: int) -> list[ScoredHyp]:
    """Hypotheses that share prefixes and suffixes (and some whole strings), random costs."""
    base = [rng.choice(VOCAB) for _ in range(rng.randint(2, 5))]
    out = []
    for _ in range(n):
        words = list(base)
        for _ in range(rng.randint(0, 2)):
            op, i = rng.randrange(3), rng.randrange(len(words) + 1)
            if op == 0:
                words.insert(i, rng.choice(VOCAB))
            elif op == 1 and i < len(words):
                words[i] = rng.choice(VOCAB)
            elif words:
                del words[min(i, len(words) - 1)]
        out.append(hyp(" ".join(words), rng.uniform(0, 20), rng.uniform(-15, 5)))
    return out


def expected_paths(hyps, step_log2=7):
    """word string -> (graph, acoustic) on the grid; equal strings keep the lower total (ties: graph)."""
    best = {}
    for h in hyps:
        w = (grid(h.graph_cost, step_log2), grid(h.acoustic_cost, step_log2))
        if h.words not in best or (sum(w), w[0]) < (sum(best[h.words]), best[h.words][0]):
            best[h.words] = w
    return best


def tropical_minimal(hyps, step_log2=7) -> kaldifst.StdVectorFst:
    """OpenFst's own determinize + minimize of the union of the strings, total cost on the final state."""
    fst = kaldifst.StdVectorFst()
    start = fst.add_state()
    fst.start = start
    label = {w: k + 1 for k, w in enumerate(VOCAB)}
    for words, (g, a) in expected_paths(hyps, step_log2).items():
        s = start
        for w in words:
            nxt = fst.add_state()
            fst.add_arc(s, kaldifst.StdArc(label[w], label[w], 0.0, nxt))
            s = nxt
        fst.set_final(s, g + a)
    det = kaldifst.determinize(fst)
    kaldifst.minimize(det)
    return det


def test_words_of_spells_what_the_runtime_spells():
    pieces = ["\u2581tu", "rn", "\u2581on", "\u2581", "kit", "chen", "<unk>", "\u2581a"]
    assert [w for w, _ in words_of(pieces)] == tokens_to_text(pieces, range(len(pieces)), blank_id=-1).split()
    assert words_of(pieces) == [("turn", (0, 1)), ("on", (2,)), ("kitchen<unk>", (3, 4, 5, 6)), ("a", (7,))]
    assert words_of(["rn", "\u2581on"]) == [("rn", (0,)), ("on", (1,))]  # a continuation first is a word too
    assert words_of([]) == []
    with pytest.raises(ValueError, match="boundary inside"):
        words_of(["a\u2581b"])


def test_suffixes_merge_into_the_minimal_lattice():
    hyps = [hyp("tu on the light", 1, 1), hyp("tu off the light", 2, 1.5), hyp("tu on a light", 3, 0.25)]
    lat = build_lattice(hyps)
    # start -tu-> . -on-> . -{the,a}-> . -light-> final, and -off-> . -the-> (the same state)
    assert (lat.num_states, lat.num_arcs) == (6, 7)
    assert {p.words: (p.graph_cost, p.acoustic_cost) for p in lat.paths()} == expected_paths(hyps)
    assert lat.best().words == ("tu", "on", "the", "light")
    # pushed: the best path's costs sit on its first arc, the others' extra costs where they branch off
    assert lat.arcs[0] == [(1, 1, 128, 128)]


@pytest.mark.parametrize("seed", range(6))
def test_determinize_and_minimize_keep_the_path_set(seed):
    rng = random.Random(seed)
    hyps = random_nbest(rng, 8)
    hyps.append(ScoredHyp(hyps[1].words, hyps[1].pieces, hyps[1].graph_cost + 1, hyps[1].acoustic_cost - 3))
    lat = build_lattice(hyps)
    want = expected_paths(hyps)
    got = lat.paths()
    assert {p.words: (p.graph_cost, p.acoustic_cost) for p in got} == want and len(got) == len(want)
    assert [p.cost for p in got] == sorted(p.cost for p in got)
    for s, arcs in enumerate(lat.arcs):  # deterministic, topologically numbered
        assert len({lab for lab, *_ in arcs}) == len(arcs)
        assert all(nxt > s for _, nxt, *_ in arcs)
    # as small as OpenFst's determinize + minimize of the same strings with their total costs
    ref = tropical_minimal(hyps)
    assert lat.num_states == ref.num_states
    assert lat.num_arcs == sum(ref.num_arcs(s) for s in range(ref.num_states))
    assert lat.num_states < 1 + sum(len(w) for w in want)  # a prefix tree would have more


def test_serialization_round_trips_bit_for_bit_and_rejects_damage(tmp_path):
    hyps = random_nbest(random.Random(0), 8)
    lat = build_lattice(hyps)
    blob = serialize(lat)
    back = deserialize(blob, TOKENS)
    assert serialize(back) == blob
    assert back.paths() == lat.paths() and back.words == lat.words and back.arcs == lat.arcs
    lat.to_fst().write(str(tmp_path / "lat.fst"))  # OpenFst's own binary format, no symbol table
    assert len(blob) * 4 < (tmp_path / "lat.fst").stat().st_size  # measured: 126 vs 654 bytes
    empty = build_lattice([hyp("", 0.5, -0.25)])  # a hypothesis with no words: the start state is final
    assert deserialize(serialize(empty), TOKENS).paths()[0].words == ()
    with pytest.raises(LatticeFormatError, match="end inside"):
        deserialize(blob[:-1], TOKENS)
    with pytest.raises(LatticeFormatError, match="left over"):
        deserialize(blob + b"\x00", TOKENS)
    with pytest.raises(LatticeFormatError, match="version-1"):
        deserialize(b"\x02" + blob[1:], TOKENS)
    with pytest.raises(LatticeFormatError, match="tokens"):
        deserialize(blob, TOKENS[:3])  # the words' pieces are not in this token list


def test_a_file_of_lattices_round_trips_and_names_a_bad_line(tmp_path):
    lats = {f"utt{i}": build_lattice(random_nbest(random.Random(i), 4)) for i in range(3)}
    assert write_lattices(tmp_path / "test.jsonl.gz", lats.items()) == 3
    back = read_lattices(tmp_path / "test.jsonl.gz", TOKENS)
    assert {k: v.paths() for k, v in back.items()} == {k: v.paths() for k, v in lats.items()}
    with gzip.open(tmp_path / "bad.jsonl.gz", "wt") as f:
        f.write('{"id": "a", "lattice": "AQc="}\n')  # version and grid, then nothing
    with pytest.raises(LatticeFormatError, match="line 1"):
        read_lattices(tmp_path / "bad.jsonl.gz", TOKENS)


def test_oracle_is_at_most_the_1best_and_equal_at_n1():
    hyps = [hyp("tu on the light", 1, 1), hyp("tu off the light", 2, 1.5), hyp("tu on a light", 3, 0.25)]
    ref = "tu off the light".split()
    one = build_lattice(hyps[:1])
    path, errors = oracle_path(one.paths(), ref)
    assert path == one.best() and errors == 1
    path, errors = oracle_path(build_lattice(hyps).paths(), ref)
    assert path.words == tuple(ref) and errors == 0
    with pytest.raises(ValueError):
        oracle_path([], ref)


def test_draw_writes_dot_with_words_and_weight_pairs():
    dot = build_lattice([hyp("tu on", 1, 1), hyp("tu off", 2, 1.5)]).draw("utt")
    assert dot.startswith("digraph") and '"tu/1,1"' in dot.replace(" ", "") and "off/1,0.5" in dot.replace(" ", "")


@pytest.fixture(scope="module")
def students():
    """The tiny student: fake-quantized PyTorch and the integer runtime, with a random batch."""
    from edgeasr.compression import activation_spec, float_view
    from edgeasr.quantspec import CompressionSpec
    from edgeasr.runtime import IntTransducer

    model, gen = quantized_tiny_student()
    spec = CompressionSpec(8, 0.5, "layer", activation_spec(model))
    with float_view(model) as plain:
        rt = IntTransducer.from_model(plain, spec, TINY_STUDENT_CFG)
    tokens = ["<blk>"] + [f"\u2581w{i}" if i % 3 == 0 else f"p{i}" for i in range(1, TINY_STUDENT_CFG["vocab_size"])]
    return model, rt, tokens, random_batch(gen, 3, 240)


def test_graph_and_acoustic_costs_split_the_search_score(students):
    from edgeasr.decoding import modified_beam_search

    model, rt, tokens, batch = students
    for m in (model, rt):
        with torch.no_grad():
            enc, lens = m.encode(batch["features"], batch["feature_lens"])
        nbests = modified_beam_search(m, enc, lens, beam=4)
        scored = score_nbest(m, nbests, tokens)
        for hyps, nb in zip(scored, nbests):
            for s, h in zip(hyps, nb):
                assert s.cost == pytest.approx(-h.log_prob, abs=1e-9)
                assert (s.graph_cost > 0) == bool(h.tokens) and "".join(s.words) == tokens_to_text(tokens, h.tokens).replace(" ", "")
    # the predictor's LM by hand for one sequence: joiner on a zero frame, softmax without blank
    seq = [5, 7, 7, 2]
    with torch.no_grad():
        out, state = model.predictor.init_decoder(1)
        total = 0.0
        for t in seq:
            logits = model.joiner.forward_frame(torch.zeros_like(out), out).double()[0]
            total += float(logits[t] - torch.logsumexp(logits[1:], 0))
            out, state = model.predictor.step_tokens(torch.tensor([t]), state)
    assert predictor_log_probs(model, [seq, [3]])[0] == pytest.approx(total, abs=1e-6)
    assert predictor_log_probs(rt, [seq])[0] == pytest.approx(total, abs=0.1)  # integers vs floats


def test_runtime_lattices_match_the_pytorch_student(students):
    """The tiny random student is all near-ties (its 8 best within 0.05 nats): which of them survive
    is decided by rounding, the shared paths' costs must still agree."""
    model, rt, tokens, batch = students
    args = (batch["features"], batch["feature_lens"], tokens, [1, 4, 8], 8)
    ours, theirs = nbest_lattices(rt, *args), nbest_lattices(model, *args)
    for a, b in zip(ours, theirs):
        assert same_up_to_ties(a[8], b[8], tol=0.1) and same_up_to_ties(a[4], b[4], tol=0.1)
        # the lattice for N holds the 1-best and never fewer paths than a smaller N
        assert a[1].best().words == a[8].best().words == a[4].best().words
        assert len(a[1].paths()) == 1 <= len(a[4].paths()) <= len(a[8].paths()) <= 8
    with pytest.raises(ValueError, match="1..beam"):
        nbest_lattices(rt, batch["features"], batch["feature_lens"], tokens, [4], 2)


def test_same_up_to_ties_tells_ties_from_differences():
    a = build_lattice([hyp("tu on", 1, 1), hyp("tu off", 2, 1), hyp("tu a", 3, 1)])
    near = build_lattice([hyp("tu on", 1, 1.05), hyp("tu off", 2, 1), hyp("tu the", 3, 1.02)])  # "a"/"the": boundary tie
    assert same_up_to_ties(a, near, tol=0.1)
    assert not same_up_to_ties(a, near, tol=0.01)  # the shared path's cost moved by 0.05
    resplit = build_lattice([hyp("tu on", 1.5, 0.5), hyp("tu off", 2, 1), hyp("tu a", 3, 1)])
    assert same_up_to_ties(a, resplit, tol=0.01)  # another BPE spelling: same total, another split
    lost = build_lattice([hyp("tu off", 2, 1), hyp("tu a", 3, 1), hyp("tu the", 3, 1.02)])  # the 1-best gone
    assert not same_up_to_ties(a, lost, tol=0.1)


@pytest.mark.slow
def test_tiny_pipeline_runtime_lattices_equal_the_pytorch_students(tiny_pipeline):
    """The trained tiny student of the pipeline: the integer runtime's lattices against the
    fake-quantized PyTorch model's, every test utterance, and what the evaluate stage reported."""
    from edgeasr.data.datamodule import AsrDataModule
    from edgeasr.runtime import load_student
    from edgeasr.stages.evaluate_lattice import pytorch_student

    data = tiny_pipeline.root / "data"
    report = json.loads((tiny_pipeline.root / "reports/evaluate.json").read_text())
    assert report["lattice/oracle_wer/n1/test"] == report["lattice/wer_1best/test"]
    assert report["lattice/oracle_wer/n8/test"] <= report["lattice/oracle_wer/n4/test"] <= report["lattice/wer_1best/test"]
    # The stage searches with 2 symbols per frame (evaluate.lattice.max_sym_per_frame): more near-ties
    # for the runtime's and the fake-quant floats' rounding to decide (0.83 on the tiny student);
    # the icefall search below (1 per frame) must agree on every utterance.
    assert report["lattice/pcm_ratio"] >= 20 and 0 < report["lattice/pytorch/same_up_to_ties"] <= 1.0

    rt, fq = load_student(data / "export/student.edgeasr"), pytorch_student(data / "mwer/model.pt")
    dm = AsrDataModule(data / "prepare/manifests", data / "prepare/tokenizer/bpe.model", train_splits=["train"])
    cwd = os.getcwd()
    os.chdir(tiny_pipeline.root)  # the manifests name feature files relative to the root
    try:
        batches = list(dm.split_dataloader("test"))
    finally:
        os.chdir(cwd)
    total = 0
    for batch in batches:
        args = (batch["features"], batch["feature_lens"], rt.tokens, [4, 8], 8)
        for a, b in zip(nbest_lattices(rt, *args), nbest_lattices(fq, *args)):
            assert same_up_to_ties(a[8], b[8], tol=0.5) and same_up_to_ties(a[4], b[4], tol=0.5)
            total += 1
    assert total == report["lattice/utts"] > 0
