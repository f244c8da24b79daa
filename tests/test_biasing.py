"""Shallow-fusion context biasing: the automaton's scores, and the beam search that applies them."""

from __future__ import annotations

import pytest
import torch

from edgeasr.decoding import ContextGraph, init_beam_state, modified_beam_search, modified_beam_search_streaming
from test_decoding import LENS, V, make_model


def test_graph_scores_boost_backoff_bonus_and_finalize():
    g = ContextGraph([[5, 6, 7], [6, 8], [9]], vocab_size=12, boost=1.0, end_bonus=0.5)
    assert g.phrases == 3 and g.num_states == 7

    def full(seq):
        total, state = g.score(seq)
        return total + g.finalize(state)

    assert full([5, 6, 7]) == pytest.approx(3.5)        # 3 tokens + the end bonus
    assert full([5, 6]) == pytest.approx(0.0)           # incomplete: given back at the end
    assert g.score([5, 6])[0] == pytest.approx(2.0)     # ... but held while the match may go on
    assert full([5, 6, 8]) == pytest.approx(2.5)        # "5 6" broken, its suffix "6" goes on to "6 8"
    assert full([5, 6, 3]) == pytest.approx(0.0)        # broken: the boost is taken back at once
    assert g.score([5, 6, 3])[0] == pytest.approx(0.0)
    assert full([1, 5, 6, 7, 2, 9]) == pytest.approx(5.0)   # two phrases, anywhere in the utterance
    assert full([5, 5, 6, 7]) == pytest.approx(3.5)     # a restart at the second 5
    assert full([1, 2, 3]) == 0.0


def test_graph_rejects_bad_input_and_ignores_empty_phrases():
    with pytest.raises(ValueError, match="outside the 12-token vocabulary"):
        ContextGraph([[3, 12]], vocab_size=12)
    with pytest.raises(ValueError, match="must be >= 0"):
        ContextGraph([[3]], vocab_size=12, boost=-1.0)
    with pytest.raises(ValueError, match="reserve"):
        ContextGraph([[3]], vocab_size=12, reserve=-1)
    g = ContextGraph.from_phrases(["", "  ", "a b"], lambda s: [ord(c) % 12 for c in s.replace(" ", "")], 12)
    assert g.phrases == 1 and g.num_states == 3


@pytest.fixture(scope="module")
def tiny():
    return make_model("stateless")


def _triples(nbest):
    return [[(h.tokens, h.log_prob, h.timestamps) for h in n] for n in nbest]


def test_no_graph_and_empty_graph_decode_exactly_as_unbiased(tiny):
    model, _, enc, enc_lens = tiny
    plain = modified_beam_search(model, enc, enc_lens, beam=4)
    assert _triples(modified_beam_search(model, enc, enc_lens, beam=4, contexts=[None] * len(LENS))) == _triples(plain)
    empty = [ContextGraph([], V)] * len(LENS)
    assert _triples(modified_beam_search(model, enc, enc_lens, beam=4, contexts=empty)) == _triples(plain)


def _contains(toks, phrase):
    return any(toks[i:i + len(phrase)] == phrase for i in range(len(toks)))


def test_boost_pulls_a_losing_phrase_into_the_best_hypothesis(tiny):
    model, _, enc, enc_lens = tiny
    plain = modified_beam_search(model, enc, enc_lens, beam=4)
    # A phrase only a losing hypothesis holds: the shortest piece of a runner-up the best lacks.
    u, phrase = next((u, n[k].tokens[i:i + ln]) for ln in (2, 3, 4) for u, n in enumerate(plain)
                     for k in range(1, len(n)) for i in range(len(n[k].tokens) - ln + 1)
                     if not _contains(n[0].tokens, n[k].tokens[i:i + ln]))
    g = ContextGraph([phrase], V, boost=4.0, end_bonus=2.0)
    contexts = [g if i == u else None for i in range(len(LENS))]
    biased = modified_beam_search(model, enc, enc_lens, beam=4, contexts=contexts)
    assert _contains(biased[u][0].tokens, phrase)
    # The other utterances decode exactly as without a list.
    assert all(_triples([biased[i]]) == _triples([plain[i]]) for i in range(len(LENS)) if i != u)


def test_biased_score_is_the_unbiased_score_plus_the_phrase_bonus(tiny):
    """With a beam that prunes nothing, a hypothesis's biased score = its exact score + its bias."""
    model, _, enc, _ = tiny
    enc, lens = enc[:1, :3], torch.tensor([3])
    plain = {tuple(h.tokens): h.log_prob for h in modified_beam_search(model, enc, lens, beam=V ** 3)[0]}
    g = ContextGraph([[3, 4], [4]], V, boost=0.7, end_bonus=0.3)
    biased = modified_beam_search(model, enc, lens, beam=V ** 3, contexts=[g])[0]
    assert len(biased) == len(plain)
    for h in biased:
        total, state = g.score(h.tokens)
        assert h.log_prob == pytest.approx(plain[tuple(h.tokens)] + total + g.finalize(state), abs=1e-4)


def test_reserved_slots_keep_honest_hypotheses_through_false_starts(tiny):
    """A phrase that can never be completed in the utterance, boosted hard: every hypothesis that
    starts it outranks the honest ones until the boost is given back at the end. Without a reserve
    the beam fills with false starts and the transcript changes; with every slot reserved (ranked
    without unfinished boosts) the search is the unbiased one."""
    model, _, enc, enc_lens = tiny
    plain = modified_beam_search(model, enc, enc_lens, beam=4)
    never = [[t] + [1] * 200 for t in range(2, V)]   # 200 pieces: more than any utterance can emit

    def best(reserve):
        graphs = [ContextGraph(never, V, boost=6.0, reserve=reserve) for _ in LENS]
        return modified_beam_search(model, enc, enc_lens, beam=4, contexts=graphs)

    crowded = best(0)
    assert any(c[0].tokens != p[0].tokens for c, p in zip(crowded, plain))
    reserved = best(4)
    assert [r[0].tokens for r in reserved] == [p[0].tokens for p in plain]
    assert [r[0].log_prob for r in reserved] == pytest.approx([p[0].log_prob for p in plain], abs=1e-4)


@pytest.mark.parametrize("chunk,reserve", [(1, 0), (5, 0), (5, 2)])
def test_biased_streaming_equals_offline(tiny, chunk, reserve):
    model, _, enc, enc_lens = tiny
    best = modified_beam_search(model, enc, enc_lens, beam=4)
    graphs = [ContextGraph([n[-1].tokens[:3], n[0].tokens[1:3]], V, boost=2.0, reserve=reserve) for n in best]
    offline = modified_beam_search(model, enc, enc_lens, beam=4, contexts=graphs)
    state = init_beam_state(model, len(LENS), contexts=graphs)
    for s in range(0, enc.size(1), chunk):
        _, state = modified_beam_search_streaming(model, enc[:, s:s + chunk], (enc_lens - s).clamp(0, chunk), state, 4)
    assert _triples(state.nbest(final=True)) == _triples(offline)


def test_graph_for_another_vocabulary_is_an_error(tiny):
    model, _, enc, enc_lens = tiny
    with pytest.raises(ValueError, match="built for 20 tokens; the model has 12"):
        modified_beam_search(model, enc[:1], enc_lens[:1], beam=2, contexts=[ContextGraph([[1]], 20)])


# --------------------------------------------------------------------------- the evaluation's lists


def _cut(cid: str, text: str, classes: str | None = None, entity: str | None = None, context=None):
    from lhotse import MonoCut, SupervisionSegment

    custom = {k: v for k, v in (("word_classes", classes), ("entity", entity), ("context", context)) if v is not None}
    return MonoCut(cid, 0.0, 1.0, 0, supervisions=[SupervisionSegment(cid, cid, 0.0, 1.0, text=text, custom=custom)])


def test_entities_lists_and_biased_word_classes():
    from edgeasr.stages.evaluate_biasing import SplitLists, biased_classes, context_lists, entities

    a = _cut("a", "call zelda abernathy now", entity="zelda abernathy", context=["zelda abernathy", "ann lee", "x y"])
    b = _cut("b", "play jazz by miles davis in the kitchen", "cscssccc")
    assert entities(a) == ["zelda abernathy"] and entities(b) == ["jazz", "miles davis"]
    assert biased_classes("call zelda abernathy now", ["zelda abernathy"]) == "cssc"
    enc = SplitLists.from_cuts([a, b])
    enc.user_phrases.append("now")
    for n in (0, 2, 100):
        lists = context_lists(enc, n, seed=7, split="t")
        assert lists == context_lists(enc, n, seed=7, split="t")      # deterministic from the seed
        for cid, ents in enc.entities.items():
            extra = set(lists[cid]) - set(ents)
            assert set(ents) <= set(lists[cid]) and len(extra) == min(n, 4)   # 4 candidates each
        assert "now" not in lists["a"]                                   # never a phrase of the reference
    assert "now" in context_lists(enc, 100, seed=7, split="t")["b"]
    draws = {tuple(context_lists(enc, 1, seed=s, split="t")["a"]) for s in range(20)}
    assert len(draws) > 1                                                # the seed picks the distractors


# --------------------------------------------------------------------------- the attention biaser


def test_attention_biaser_starts_as_identity_masks_padding_and_is_frame_local():
    from edgeasr.models.biasing import ContextBiaser, PhraseBatch

    torch.manual_seed(0)
    biaser = ContextBiaser(vocab_size=V, joiner_dim=16, dim=8, heads=2)
    enc = torch.randn(3, 20, 16)
    pb = PhraseBatch.collate([[[1, 2, 3], [4]], [], [[5, 6]]])
    assert pb.ids.shape == (3, 2, 3) and pb.lens.tolist() == [[3, 1], [0, 0], [2, 0]]
    assert torch.equal(biaser(enc, pb), enc)          # zero-initialized output: attaching changes nothing
    torch.nn.init.normal_(biaser.out.weight)
    out, w = biaser.attention(enc, pb)
    assert out.shape == enc.shape and w.shape == (3, 20, 3)
    assert torch.allclose(w.sum(-1), torch.ones(3, 20))
    assert torch.all(w[1, :, 1:] == 0) and torch.all(w[2, :, 2] == 0)   # padding phrases get no weight
    assert torch.allclose(w[1, :, 0], torch.ones(20))                   # an empty list: only "no bias"
    # each frame attends on its own: a prefix of the frames is biased as in the whole utterance
    assert torch.allclose(biaser(enc[:, :7], pb), out[:, :7], atol=1e-6)
    # a phrase padded with longer neighbours encodes as on its own
    alone, _ = biaser.encode_phrases(PhraseBatch.collate([[[4]]]))
    padded, _ = biaser.encode_phrases(pb)
    assert torch.allclose(alone[0, 1], padded[0, 2], atol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        ContextBiaser(V, 16, dim=10, heads=4)


def test_a_context_that_is_not_a_list_of_phrases_is_left_out_and_logged(caplog):
    from edgeasr.stages.evaluate_biasing import SplitLists

    good = _cut("a", "call ann lee", entity="ann lee", context=["ann lee", "bo wu"])
    bad = _cut("b", "call cy do", entity="cy do", context="cy do")     # a string, not a list
    with caplog.at_level("WARNING"):
        sl = SplitLists.from_cuts([good, bad])
    assert sl.user_phrases == ["ann lee", "bo wu"]
    assert "1 cuts' custom 'context' is not a list of phrases" in caplog.text and "b" in caplog.text


def test_transducer_with_biaser_trains_and_no_list_equals_empty_list():
    from edgeasr.models import build_transducer
    from edgeasr.models.biasing import PhraseBatch

    cfg = dict(vocab_size=V, joiner_dim=16, biaser=dict(dim=8, heads=2),
               encoder=dict(type="lstm", input_dim=20, hidden=16, num_layers=1, subsampling_channels=4, dropout=0.0),
               predictor=dict(type="stateless", embed_dim=8, context_size=2))
    torch.manual_seed(0)
    model = build_transducer(cfg)
    x, x_lens = torch.randn(2, 40, 20), torch.tensor([40, 31])
    y = [[3, 4, 5], [6]]
    pb = PhraseBatch.collate([[[3, 4, 5], [9]], []])
    torch.nn.init.normal_(model.biaser.out.weight)
    out = model(x, x_lens, y, phrases=pb)
    out["loss"].backward()
    assert model.biaser.embed.weight.grad.abs().sum() > 0           # the phrase encoder learns through the loss
    enc_none, _ = model.encode(x, x_lens)
    enc_empty, _ = model.encode(x, x_lens, PhraseBatch.empty(2))
    enc_list, _ = model.encode(x, x_lens, pb)
    assert torch.equal(enc_none, enc_empty) and not torch.allclose(enc_list[0], enc_none[0])
    assert torch.allclose(enc_list[1], enc_none[1], atol=1e-6)      # the other utterance's list is its own
    with pytest.raises(ValueError, match="no attention biaser"):
        build_transducer({**cfg, "biaser": None}).encode(x, x_lens, pb)


def test_training_context_lists_hold_own_slot_values_and_are_a_function_of_step_and_cut():
    from edgeasr.training.contexts import TrainingContexts

    pool = [f"name {i}" for i in range(50)] + ["jazz", "now"]
    ctx = TrainingContexts(pool, lambda s: [len(w) for w in s.split()], max_distractors=5, empty_prob=0.3, seed=3)
    texts, classes, ids = ["play jazz by miles davis", None, "call name 7 now"], ["cscss", None, "cssc"], ["a", "b", "c"]
    lists = ctx.lists(texts, classes, ids, step=11)
    assert lists == ctx.lists(texts, classes, ids, step=11)          # resumed runs draw the same lists
    assert lists != ctx.lists(texts, classes, ids, step=12) or lists != ctx.lists(texts, classes, ids, step=13)
    many = [ctx.lists(texts, classes, ids, step=s) for s in range(200)]
    own = sum({"jazz", "miles davis"} <= set(x[0]) for x in many) / 200
    assert 0.6 < own < 0.8                                           # empty_prob 0.3 leaves them out
    assert all(len(x[0]) <= 2 + 5 and len(x[1]) <= 5 for x in many)
    assert not any("now" in x[2] for x in many)                      # never a distractor the utterance says
    assert any("now" in x[0] for x in many)
    pb = ctx.phrases({"texts": texts, "word_classes": classes, "cut_ids": ids}, step=11)
    assert pb.ids.shape[0] == 3 and int((pb.lens > 0).sum()) == sum(len(x) for x in lists)
    with pytest.raises(ValueError, match="empty_prob"):
        TrainingContexts(pool, str.split, empty_prob=1.5)


def test_export_refuses_a_model_with_an_attention_biaser(tmp_path):
    from edgeasr.export.container import ExportFormatError
    from edgeasr.export.student import export_student
    from edgeasr.models import build_transducer

    cfg = dict(vocab_size=V, joiner_dim=16, biaser=dict(dim=8, heads=2),
               encoder=dict(type="lstm", input_dim=20, hidden=16, num_layers=1, subsampling_channels=4, dropout=0.0),
               predictor=dict(type="stateless", embed_dim=8, context_size=2))
    with pytest.raises(ExportFormatError, match="attention biaser.*model.student.biaser=null"):
        export_student(build_transducer(cfg), {"model_cfg": cfg}, ["<blk>"], tmp_path / "s.edgeasr")
    assert not (tmp_path / "s.edgeasr").exists()
