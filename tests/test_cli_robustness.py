"""The ``edgeasr`` command's contract at its edges (issue 15, findings 2 and 4): audio too short for
the model, a file whose decoding fails, and model files that must be refused in one line.

Reuses ``tests/test_cli.py``'s module fixture (tokenizer, audio, a frame-stack-2 LSTM student as
``model.pt``, its compressed copy and export, a Conformer teacher).
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from test_cli import _signal, assets, lines, run_main  # noqa: F401  (assets: the shared fixture)

from edgeasr import audio_input
from edgeasr.models.subsampling import frames_after_subsampling, min_input_frames
from edgeasr.recognizer import load_recognizer

MODELS = {"student": 11, "compressed": 11, "exported": 11, "teacher": 7}  # 4 s + 3 with frame_stack 2; 7 unstacked


@pytest.fixture(scope="module")
def short(assets):  # noqa: F811
    """0.10 s (10 frames: enough for the convolutions, not for a stacked pair) and 0.05 s (5 frames)."""
    import soundfile as sf

    rng = np.random.default_rng(5)
    out = {}
    for name, sec in (("short100ms", 0.10), ("short50ms", 0.05)):
        out[name] = assets["root"] / "audio" / f"{name}.wav"
        sf.write(out[name], _signal(rng, sec, 16000), 16000)
    return out


def test_min_input_frames_is_the_smallest_input_with_an_encoder_frame():
    for k in (1, 2, 3, 4):
        want = next(t for t in range(1, 100) if frames_after_subsampling(t) // k >= 1)
        assert min_input_frames(k) == want == 4 * k + 3
        assert min_input_frames(k, ceil=True) == 7


@pytest.mark.parametrize("which", list(MODELS))
def test_each_model_derives_its_minimum_input_from_its_encoder(assets, which):
    rec = load_recognizer(assets[which], assets["tok"])
    need = rec.min_input_frames
    assert need == MODELS[which]
    feats = audio_input.audio_features(audio_input.read_audio(assets["files"]["good0"]))
    with torch.inference_mode():
        _, lens = rec.model.encode(feats[:need].unsqueeze(0), torch.tensor([need]))
    assert int(lens[0]) >= 1  # the minimum is enough ...
    assert rec.recognize(feats[: need - 1]) == []  # ... and one frame less is an empty result, not an error


# one call per model kind; the streaming ones cover the PyTorch LSTM and the integer runtime's loops
@pytest.mark.parametrize("which, extra", [("student", ()), ("teacher", ()), ("exported", ("--streaming", "--chunk-ms", "40")),
                                          ("compressed", ("--streaming",))])
def test_short_audio_gives_an_empty_result_and_a_warning_and_the_rest_go_on(assets, short, capsys, which, extra):
    normal = assets["files"]["good1"]
    order = [short["short100ms"], normal, short["short50ms"]]
    code, out, err = run_main(capsys, "transcribe", assets[which], *order, "--tokenizer", assets["tok"], *extra)
    assert code == 0, err
    got = lines(out)
    assert list(got) == [str(p) for p in order]  # the file after a short one is transcribed too
    need = MODELS[which]
    for name, frames in (("short100ms", 10), ("short50ms", 5)):  # the teacher (7) decodes the 0.10 s file
        warning = (f"{short[name]}: {frames / 100:.2f} s is shorter than the model's minimum input "
                   f"({need} frames = {need / 100:.2f} s); empty result")
        assert (warning in err) == (frames < need), err
        assert got[str(short[name])] == "" or frames >= need
    assert "Traceback" not in err and "error" not in err


def test_score_counts_short_audio_as_an_empty_hypothesis(assets, short, capsys, tmp_path):
    f = assets["files"]
    tsv = tmp_path / "set.tsv"
    tsv.write_text(f"{short['short100ms']}\tturn on\n{f['good0']}\tturn on the lights\n{short['short50ms']}\tplay\n",
                   encoding="utf-8")
    code, out, err = run_main(capsys, "score", assets["student"], tsv, "--out", tmp_path, "--tokenizer", assets["tok"])
    assert code == 0, err
    assert out.startswith("%WER") and " 3 utts" in out
    assert "shorter than the model's minimum input (11 frames" in err and "1 more like that (short)" in err


@pytest.mark.parametrize("command", ["transcribe", "score"])
def test_a_file_whose_decoding_fails_is_reported_in_one_line_and_the_others_go_on(assets, short, capsys, tmp_path,
                                                                                  monkeypatch, command):
    f = assets["files"]
    real = audio_input.audio_features
    calls = []

    def flaky(samples, *a, **kw):  # the second input hits a bug the decoder did not foresee
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("unforeseen\nsecond line")
        return real(samples, *a, **kw)

    monkeypatch.setattr(audio_input, "audio_features", flaky)
    order = [f["good1"], f["good0"], short["short100ms"]]  # the short one: cheap to decode
    if command == "transcribe":
        code, out, err = run_main(capsys, "transcribe", assets["student"], *order, "--tokenizer", assets["tok"])
        assert list(lines(out)) == [str(f["good1"]), str(short["short100ms"])]
    else:
        tsv = tmp_path / "set.tsv"
        tsv.write_text("".join(f"{p}\tturn on the lights\n" for p in order), encoding="utf-8")
        code, out, err = run_main(capsys, "score", assets["student"], tsv, "--out", tmp_path, "--tokenizer", assets["tok"])
        assert " 2 utts" in out and "1 of 3 utterances" in err
    assert code == 1 and "Traceback" not in err
    failed = [line for line in err.splitlines() if "error:" in line]
    assert failed == [f"edgeasr: error: {f['good0']}: cannot decode (RuntimeError: unforeseen second line)"]


# --------------------------------------------------------------------------- model files refused in one line


def _with(assets, tmp_path, name: str, **changes) -> str:
    """The compressed model.pt with some top-level entries (or meta entries: ``meta_*``) replaced."""
    obj = torch.load(assets["compressed"], map_location="cpu", weights_only=True)
    for key, value in changes.items():
        if key.startswith("meta_"):
            obj["meta"][key[5:]] = value
        else:
            obj[key] = value
    path = tmp_path / name / "model.pt"
    path.parent.mkdir()
    torch.save(obj, path)
    return path


def _assert_refused(capsys, path, tok, *why):
    code, out, err = run_main(capsys, "transcribe", path, "whatever.wav", "--tokenizer", tok)
    assert code == 2, (path, err)
    assert out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert str(path) in err and all(w in err for w in why), err
    assert "weights_only" not in err
    return err


def test_a_pickle_bearing_file_is_refused_in_one_line_without_torchs_advice(assets, capsys, tmp_path):
    path = tmp_path / "pickled.pt"
    obj = torch.load(assets["student"], map_location="cpu", weights_only=True)
    torch.save(dict(obj, meta={"note": argparse.Namespace(stage="distill")}), path)
    _assert_refused(capsys, path, assets["tok"], "refused", "pickled Python objects", "argparse.Namespace",
                    "only tensors and plain containers")


def test_malformed_compression_metadata_is_refused_in_one_line(assets, capsys, tmp_path):
    act = torch.load(assets["compressed"], weights_only=True)["meta"]["compression"]["activation_quant"]
    bad = {
        "garbage": "garbage",
        "bits_str": {"bits": "eight", "sparsity": 0.5},
        "aq_list": {"bits": 8, "sparsity": 0.5, "activation_quant": [1, 2]},
        # an infinite range passed the spec check and overflowed while attaching the quantizers
        "amax_inf": {"bits": 8, "sparsity": 0.5, "activation_quant": {**act, "amax": {k: float("inf") for k in act["amax"]}}},
        "tuple_names": {"bits": 8, "sparsity": 0.5,
                        "activation_quant": {**act, "points": {(k,): v for k, v in act["points"].items()},
                                             "amax": {(k,): v for k, v in act["amax"].items()}}},
    }
    for name, compression in bad.items():
        _assert_refused(capsys, _with(assets, tmp_path, name, meta_compression=compression), assets["tok"])


def test_malformed_model_files_name_the_file_in_one_line(assets, capsys, tmp_path):
    cfg = torch.load(assets["student"], weights_only=True)["model_cfg"]
    cases = {
        "meta_str": dict(meta="garbage"),
        "cfg_str": dict(model_cfg="garbage"),
        "cfg_unknown_encoder": dict(model_cfg={**cfg, "encoder": {"type": "transformer"}}),
        "cfg_bad_width": dict(model_cfg={**cfg, "encoder": {**cfg["encoder"], "hidden": "wide"}}),
        "no_weights": dict(state_dict={}),
    }
    for name, changes in cases.items():
        _assert_refused(capsys, _with(assets, tmp_path, name, **changes), assets["tok"])


def test_the_cli_decodes_with_the_models_own_tokens_per_frame(assets, tmp_path):  # noqa: F811
    """A model.pt's ``decoding`` meta (and an export's header) sets greedy tokens per frame; a
    malformed value is one CliError naming the file."""
    from edgeasr.cli_base import CliError
    from edgeasr.decoding import greedy_search
    from edgeasr.models.io import load_model, save_model

    model, meta = load_model(assets["student"])
    feats = assets["batch"]["features"][0]
    enc, lens = model.encode(feats.unsqueeze(0), torch.tensor([feats.size(0)]))
    for n in (1, 3):
        path = tmp_path / f"sym{n}" / "model.pt"
        save_model(path, model, meta["model_cfg"], meta={"stage": "distill", "decoding": {"max_sym_per_frame": n}})
        rec = load_recognizer(path, tokenizer=assets["tok"])
        assert rec.max_sym_per_frame == n
        assert rec.recognize(feats) == greedy_search(model, enc, lens, n)[0]
    assert load_recognizer(assets["student"], tokenizer=assets["tok"]).max_sym_per_frame == 1  # no meta: 1
    bad = tmp_path / "bad" / "model.pt"
    save_model(bad, model, meta["model_cfg"], meta={"stage": "distill", "decoding": {"max_sym_per_frame": "all"}})
    with pytest.raises(CliError, match=r"bad/model.pt: .*max_sym_per_frame must be an integer"):
        load_recognizer(bad, tokenizer=assets["tok"]).recognize(feats)
