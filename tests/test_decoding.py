"""Greedy (batched, streaming) and modified beam search agree with each other and with themselves."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from edgeasr.decoding import greedy_search, greedy_search_streaming, modified_beam_search, modified_beam_search_streaming
from edgeasr.models import build_transducer

F_IN, J, V = 20, 16, 12
LENS = torch.tensor([90, 61, 35, 8])


def make_model(predictor: str = "stateless", context_size: int = 2, seed: int = 0, frame_stack: int = 1):
    """A random tiny model whose greedy output mixes blanks and several tokens.

    Untrained, the predictor dominates and nearly every frame emits the same token; stronger
    encoder/joiner weights and a blank bias near the median margin give realistic-looking searches.
    """
    torch.manual_seed(seed)
    pred = (
        dict(type="stateless", embed_dim=8, context_size=context_size)
        if predictor == "stateless"
        else dict(type="lstm", embed_dim=8, hidden=12, num_layers=2, dropout=0.0)
    )
    model = build_transducer(dict(
        vocab_size=V, joiner_dim=J,
        encoder=dict(type="lstm", input_dim=F_IN, hidden=16, num_layers=2, subsampling_channels=4, dropout=0.0,
                     frame_stack=frame_stack),
        predictor=pred,
    )).eval()
    torch.manual_seed(seed + 1)
    x = torch.randn(len(LENS), int(LENS.max()), F_IN) * 3
    with torch.no_grad():
        torch.nn.init.normal_(model.encoder.output.weight, std=1.0)
        model.joiner.output.weight.mul_(3.0)
        enc, enc_lens = model.encode(x, LENS)
        start, _ = model.predictor.init_decoder(1)
        logits = model.joiner(enc, start[:, None])[:, :, 0]
        margins = (logits[..., 1:].max(-1).values - logits[..., 0]).flatten().sort().values
        k = margins.numel() // 2
        # Midway between two neighbouring margins: no frame sits on an exact blank/token tie, which
        # a 1e-6 difference between chunked and whole-utterance encoder outputs would flip.
        model.joiner.output.bias[0] += (margins[k - 1] + margins[k]) / 2
        enc, enc_lens = model.encode(x, LENS)
    return model, x, enc, enc_lens


@pytest.fixture(scope="module", params=["stateless", "stateless-ctx1", "lstm", "stateless-stack2"])
def model_and_enc(request):
    """The student's configurations: stateless (context 2 or 1) or LSTM predictor; 40 or 80 ms frames."""
    return make_model(request.param.split("-")[0], context_size=1 if request.param.endswith("ctx1") else 2,
                      frame_stack=2 if request.param.endswith("stack2") else 1)


@pytest.mark.parametrize("max_sym", [1, 3])
def test_batched_greedy_equals_one_by_one(model_and_enc, max_sym):
    model, _, enc, enc_lens = model_and_enc
    batched = greedy_search(model, enc, enc_lens, max_sym_per_frame=max_sym)
    single = [greedy_search(model, enc[i : i + 1, : enc_lens[i]], enc_lens[i : i + 1], max_sym)[0] for i in range(len(LENS))]
    assert batched == single
    # Non-trivial: something emitted, and not on every frame.
    assert any(batched) and sum(map(len, batched)) < int(enc_lens.sum()) * max_sym


def test_beam_one_equals_greedy(model_and_enc):
    model, _, enc, enc_lens = model_and_enc
    nbest = modified_beam_search(model, enc, enc_lens, beam=1)
    assert [n[0].tokens for n in nbest] == greedy_search(model, enc, enc_lens, max_sym_per_frame=1)


def test_beam_nbest_sorted_distinct_and_batch_invariant(model_and_enc):
    model, _, enc, enc_lens = model_and_enc
    nbest = modified_beam_search(model, enc, enc_lens, beam=4)
    assert len(nbest) == len(LENS)
    for i, hyps in enumerate(nbest):
        assert 1 <= len(hyps) <= 4
        scores = [h.log_prob for h in hyps]
        assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps)
        assert all(len(h.timestamps) == len(h.tokens) for h in hyps)
        assert all(0 <= ts < enc_lens[i] for h in hyps for ts in h.timestamps)
        single = modified_beam_search(model, enc[i : i + 1, : enc_lens[i]], enc_lens[i : i + 1], beam=4)[0]
        assert [h.tokens for h in single] == [h.tokens for h in hyps]
        assert [h.log_prob for h in single] == pytest.approx(scores, abs=1e-4)
    assert max(len(h) for h in nbest) > 1


@pytest.mark.parametrize("chunk", [1, 13, 37])
def test_streaming_greedy_equals_full_greedy(model_and_enc, chunk):
    model, x, enc, enc_lens = model_and_enc
    full = greedy_search(model, enc, enc_lens, max_sym_per_frame=2)
    state_enc, state_dec = None, None
    with torch.no_grad():
        for s in range(0, x.size(1), chunk):
            c_lens = (LENS - s).clamp(0, chunk)
            out, out_lens, state_enc = model.encoder.infer(x[:, s : s + chunk], c_lens, state_enc)
            hyps, state_dec = greedy_search_streaming(model, out, out_lens, state_dec, max_sym_per_frame=2)
    assert hyps == full
    assert state_dec.frames == enc_lens.tolist()


@pytest.mark.parametrize("chunk", [1, 3])
def test_streaming_beam_equals_full_beam(model_and_enc, chunk):
    """Chunked modified beam search = the whole-utterance search (scores bit for bit, timestamps
    absolute), and after each chunk it holds what the whole search held at that frame."""
    model, _, enc, enc_lens = model_and_enc
    full = modified_beam_search(model, enc, enc_lens, beam=4)
    state, prefix_checked = None, 0
    for s in range(0, enc.size(1), chunk):
        c_lens = (enc_lens - s).clamp(0, chunk)
        nbest, state = modified_beam_search_streaming(model, enc[:, s : s + chunk], c_lens, state, beam=4)
        if s + chunk < int(enc_lens[0]):  # the search so far = a search of the prefix
            prefix = modified_beam_search(model, enc[:, : s + chunk], enc_lens.clamp(max=s + chunk), beam=4)[0]
            assert [(h.tokens, h.log_prob, h.timestamps) for h in nbest[0]] == [(h.tokens, h.log_prob, h.timestamps) for h in prefix]
            prefix_checked += 1
    assert [[(h.tokens, h.log_prob, h.timestamps) for h in n] for n in nbest] == \
        [[(h.tokens, h.log_prob, h.timestamps) for h in n] for n in full]
    assert state.frames == enc_lens.tolist() and prefix_checked >= 2


def test_beam_merging_matches_exhaustive_sum_over_alignments():
    """With a beam wide enough to prune nothing, each hypothesis' log_prob is the exact log-sum over
    all one-symbol-per-frame alignments of its token sequence."""
    model, _, enc, _ = make_model("stateless")
    enc = enc[:1, :3]
    cache: dict[tuple[int, ...], torch.Tensor] = {}

    def pred(hist: tuple[int, ...]) -> torch.Tensor:
        if hist not in cache:
            out, st = model.predictor.init_decoder(1)
            for tok in hist:
                out, st = model.predictor.step_tokens(torch.tensor([tok]), st)
            cache[hist] = out
        return cache[hist]

    totals: dict[tuple[int, ...], list[float]] = {}
    with torch.no_grad():
        for path in itertools.product(range(V), repeat=3):
            hist, lp = (), 0.0
            for t, s in enumerate(path):
                lp += float(model.joiner.forward_frame(enc[:, t], pred(hist)).log_softmax(-1)[0, s])
                if s != model.blank_id:
                    hist = hist + (s,)
            totals.setdefault(hist, []).append(lp)
    exact = {k: math.log(sum(math.exp(v) for v in vs)) for k, vs in totals.items()}
    hyps = modified_beam_search(model, enc, torch.tensor([3]), beam=V**3)[0]  # >= candidates per frame: topk comes before merging
    assert len(hyps) == len(exact)
    for h in hyps:
        assert h.log_prob == pytest.approx(exact[tuple(h.tokens)], abs=1e-4)
    assert math.log(sum(math.exp(h.log_prob) for h in hyps)) == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("chunk", [1, 4])
def test_multi_symbol_beam_streams_like_offline_and_emits_several_tokens_per_frame(model_and_enc, chunk):
    """max_sym_per_frame 2: any chunking gives the whole-utterance search; tokens may share a frame
    (a sequence can be longer than the frames); batching changes nothing."""
    model, _, enc, enc_lens = model_and_enc
    full = modified_beam_search(model, enc, enc_lens, beam=4, max_sym_per_frame=2)
    state = None
    for s in range(0, enc.size(1), chunk):
        _, state = modified_beam_search_streaming(model, enc[:, s:s + chunk], (enc_lens - s).clamp(0, chunk), state,
                                                  beam=4, max_sym_per_frame=2)
    assert [[(h.tokens, h.log_prob, h.timestamps) for h in n] for n in state.nbest()] == \
        [[(h.tokens, h.log_prob, h.timestamps) for h in n] for n in full]
    shared = [h for n in full for h in n if len(set(h.timestamps)) < len(h.timestamps)]
    assert shared, "no hypothesis emitted twice on one frame"
    assert all(ts == sorted(ts) for n in full for ts in (h.timestamps for h in n))
    for i in range(len(LENS)):
        single = modified_beam_search(model, enc[i:i + 1, :enc_lens[i]], enc_lens[i:i + 1], beam=4, max_sym_per_frame=2)[0]
        assert [h.tokens for h in single] == [h.tokens for h in full[i]]
    with pytest.raises(ValueError, match="max_sym_per_frame"):
        modified_beam_search(model, enc, enc_lens, beam=4, max_sym_per_frame=0)
