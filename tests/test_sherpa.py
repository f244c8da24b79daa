"""sherpa-onnx bundles of a tiny (random, 50 % pruned, int8-grid) student: ONNX == PyTorch, the
metadata sherpa needs, zeros preserved, and sherpa-onnx itself (in a subprocess) decoding real
synthesized speech exactly like our greedy search, offline and streaming."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("sherpa_onnx")

TEXTS = ["turn on the kitchen lights", "call alice", "what is the weather like in paris today",
         "play some music", "set a timer for ten minutes", "send a message to bob"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tokenizer, tiny compressed student, both bundles (fp32 + int8) and three real wavs."""
    import soundfile as sf

    from edgeasr.compression import Compression, layer_mask
    from edgeasr.data.synthetic.tts import synthesize
    from edgeasr.data.tokenizer import Tokenizer, train_tokenizer
    from edgeasr.export.sherpa import export_sherpa_bundles
    from edgeasr.models import build_transducer

    root = tmp_path_factory.mktemp("sherpa")
    train_tokenizer(TEXTS * 3, root / "tokenizer", vocab_size=40)
    tok = Tokenizer(root / "tokenizer" / "bpe.model")
    cfg = {"vocab_size": tok.vocab_size, "joiner_dim": 48, "ctc_weight": 0.0,
           "encoder": {"type": "lstm", "hidden": 48, "num_layers": 2, "subsampling_channels": 8, "frame_stack": 2},
           "predictor": {"type": "stateless", "embed_dim": 48, "context_size": 2}}
    torch.manual_seed(0)
    model = build_transducer(cfg)
    comp = Compression(model, bits=8)
    comp.set_masks([layer_mask(t.effective(), 0.5) for t in comp.targets])
    comp.materialize()
    model.eval()
    bundles = export_sherpa_bundles(model, root / "tokenizer", root / "sherpa", chunk_frames=2)
    wavs = []
    for i, (text, voice) in enumerate(zip(TEXTS[:3], ["en-us", "en", "en-gb-x-rp"])):
        p = root / f"utt{i}.wav"
        sf.write(p, synthesize(text, voice), 16000, subtype="PCM_16")
        wavs.append(p)
    return model, tok, bundles, wavs, root


def _utts(wavs, texts=None):
    from edgeasr.deploy.sherpa import utterances_from_wavs

    utts = utterances_from_wavs(wavs)
    for u, t in zip(utts, texts or []):
        u.text = t
    return utts


def test_bundle_files_and_sherpa_metadata(setup):
    from edgeasr.export.sherpa import SherpaBundle, onnx_metadata

    model, tok, bundles, _, _ = setup
    for mode, b in bundles.items():
        again = SherpaBundle.load(b.dir)
        assert again.streaming == (mode == "streaming") and again.int8
        for int8 in (False, True):
            for f in again.files(int8=int8).values():
                assert Path(f).is_file(), f
        dec = onnx_metadata(b.dir / "decoder.onnx")
        assert dec["vocab_size"] == str(tok.vocab_size) and dec["context_size"] == "2"
        assert onnx_metadata(b.dir / "decoder.int8.onnx")["context_size"] == "2"
        lines = (b.dir / "tokens.txt").read_text(encoding="utf-8").splitlines()
        assert lines[0] == "<blk> 0" and len(lines) == tok.vocab_size
        assert len((b.dir / "bpe.vocab").read_text(encoding="utf-8").splitlines()) == tok.vocab_size
    enc = onnx_metadata(bundles["streaming"].dir / "encoder.onnx")
    # chunk_frames=2, frame_stack=2: 4*2*2 = 16 frames shift, T = 19
    assert enc["model_type"] == "lstm" and enc["T"] == "19" and enc["decode_chunk_len"] == "16"
    assert enc["num_encoder_layers"] == "2" and enc["d_model"] == "48" and enc["rnn_hidden_size"] == "48"
    assert onnx_metadata(bundles["streaming"].dir / "encoder.int8.onnx")["model_type"] == "lstm"


def test_onnx_graphs_equal_pytorch(setup):
    import onnxruntime as ort

    model, _, bundles, _, _ = setup
    run = lambda path, *xs: (lambda s: s.run(None, {i.name: x for i, x in zip(s.get_inputs(), xs)}))(  # noqa: E731
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 157, 80, generator=gen) * 3 + 10
    lens = torch.tensor([157, 101])
    with torch.no_grad():
        ref, ref_lens = model.encode(x, lens)
        out, out_lens = run(bundles["offline"].dir / "encoder.onnx", x.numpy(), lens.numpy())
        assert out_lens.tolist() == ref_lens.tolist()
        for i, n in enumerate(ref_lens.tolist()):  # padded rows: valid frames unaffected by the padding
            np.testing.assert_allclose(out[i, :n], ref[i, :n].numpy(), atol=2e-5)

        h = torch.randn(2, 2, 48, generator=gen)
        c = torch.randn(2, 2, 48, generator=gen)
        xs = x[:, :19]
        r = model.encoder.streaming_forward(xs, h, c)
        o = run(bundles["streaming"].dir / "encoder.onnx", xs.numpy(), h.numpy(), c.numpy())
        assert o[0].shape == (2, 2, 48)  # m = 2 encoder frames per chunk
        for a, b in zip(o, r):
            np.testing.assert_allclose(a, b.numpy(), atol=2e-5)

        ctx = torch.tensor([[-1, 0], [3, 7]])
        np.testing.assert_allclose(run(bundles["offline"].dir / "decoder.onnx", ctx.numpy())[0],
                                   model.predictor.step(ctx).numpy(), atol=2e-5)
        e, p = torch.randn(3, 48, generator=gen), torch.randn(3, 48, generator=gen)
        np.testing.assert_allclose(run(bundles["offline"].dir / "joiner.onnx", e.numpy(), p.numpy())[0],
                                   model.joiner.forward_frame(e, p).numpy(), atol=2e-5)


def test_pruned_weights_stay_zero_in_fp32_and_int8(setup, tmp_path):
    import onnx
    from onnx import numpy_helper

    from edgeasr.export.sherpa import check_fp32_zeros, check_int8_zeros

    model, _, bundles, _, _ = setup
    for b in bundles.values():
        z = b.info["zeros"]
        assert z["fp32"]["sparsity"] == pytest.approx(0.5, abs=0.01) and z["fp32"]["zeros"] > 10_000
        for part in ("encoder", "decoder", "joiner"):
            q = z["int8"][part]
            assert q["pruned"] > 0 and q["pruned_on_zero_level"] == q["pruned"]
            assert q["zero_levels"] >= q["pruned"]
            assert not q["float_tensors_left"] or part == "encoder"  # only LSTM biases stay float
        # independently of what export recorded
        assert check_int8_zeros(b.dir / "joiner.onnx", b.dir / "joiner.int8.onnx")["pruned_on_zero_level"] > 0

    # a single pruned weight changed in the ONNX file is caught
    path = bundles["offline"].dir / "joiner.onnx"
    m = onnx.load(str(path))
    for init in m.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.ndim == 2 and (a == 0).any():
            a = a.copy()
            a[np.unravel_index(np.argmax(a == 0), a.shape)] = 1e-3
            init.CopyFrom(numpy_helper.from_array(a, init.name))
            break
    onnx.save(m, str(tmp_path / "joiner.onnx"))
    files = [bundles["offline"].dir / "encoder.onnx", bundles["offline"].dir / "decoder.onnx", tmp_path / "joiner.onnx"]
    with pytest.raises(AssertionError, match="joiner"):
        check_fp32_zeros(model, files)


@pytest.mark.parametrize("mode", ["offline", "streaming"])
def test_sherpa_greedy_equals_our_greedy(setup, mode):
    from edgeasr.deploy.sherpa import verify_bundle

    model, _, bundles, wavs, _ = setup
    utts = _utts(wavs, TEXTS)
    ag = verify_bundle(model, bundles[mode], utts, timeout=120)
    assert ag.n == 3 and ag.mismatches == [] and ag.identical == 3
    assert ag.wer_sherpa == ag.wer_torch


def test_int8_bundles_decode(setup):
    from edgeasr.deploy.sherpa import ids_from_symbols, read_tokens, sherpa_decode

    _, _, bundles, wavs, _ = setup
    utts = _utts(wavs)
    for b in bundles.values():
        files = b.files(int8=True)
        r = sherpa_decode(files, utts, streaming=b.streaming, timeout=120)
        table = read_tokens(files["tokens"])
        assert len(r.tokens) == 3 and all(len(t) > 0 for t in r.tokens)  # a random model emits plenty
        assert all(0 < i < len(table) for t in r.tokens for i in ids_from_symbols(t, table))
        assert r.rtf > 0


def test_hotwords_through_modified_beam_search(setup):
    from edgeasr.deploy.sherpa import hotword_wer

    _, _, bundles, wavs, _ = setup
    utts = _utts(wavs, TEXTS)
    for u in utts:
        u.context = ["kitchen lights", "alice", "paris"]
    res = hotword_wer(bundles["offline"], utts, hotwords_score=2.0, timeout=120)
    assert res["utterances"] == 3 and res["with_context"] == 3
    for k in ("wer_greedy", "wer_beam", "wer_beam_hotwords"):
        assert res[k] >= 0


def test_sherpa_failure_is_an_exception_not_an_exit(setup, tmp_path):
    from edgeasr.deploy.sherpa import sherpa_decode

    _, _, bundles, wavs, _ = setup
    files = bundles["offline"].files()
    files["decoder"] = str(tmp_path / "missing.onnx")
    with pytest.raises(RuntimeError, match="sherpa-onnx worker failed"):
        sherpa_decode(files, _utts(wavs[:1]), streaming=False, timeout=60)


def test_cli_decode_prints_transcripts(setup, capsys):
    from edgeasr.deploy.__main__ import main

    _, _, bundles, wavs, root = setup
    assert main(["decode", "--bundle", str(bundles["streaming"].dir), "--json", str(root / "d.json"), *map(str, wavs)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in out] == ["utt0", "utt1", "utt2"]
    assert json.loads((root / "d.json").read_text())["rtf"] > 0


def test_rejects_models_sherpa_cannot_run(tmp_path):
    from edgeasr.export.sherpa import export_sherpa
    from edgeasr.models import build_transducer

    cfg = {"vocab_size": 10, "joiner_dim": 16, "encoder": {"type": "lstm", "hidden": 16, "num_layers": 1},
           "predictor": {"type": "lstm", "embed_dim": 16, "hidden": 16}}
    with pytest.raises(ValueError, match="stateless predictor"):
        export_sherpa(build_transducer(cfg), tmp_path, tmp_path / "out", streaming=False)
