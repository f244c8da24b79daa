"""The ``edgeasr`` console script: transcribe / score with real (tiny) models and real audio files.

One module fixture builds, in a few seconds: a BPE tokenizer, real wav/flac files (16 kHz, 8 kHz,
stereo, corrupt, empty), a plain LSTM student ``model.pt``, its 50 %-pruned int8 compressed copy
with calibrated activation quantization (``model.pt`` + exported ``.edgeasr``) and a tiny Conformer.
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeasr import cli
from edgeasr.audio_input import audio_features, chunk_frames, read_audio
from edgeasr.cli_base import DEFAULT_TOKENIZER
from edgeasr.metrics import WerAccumulator
from edgeasr.recognizer import load_recognizer

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["turn on the kitchen lights", "play some music please", "what is the weather like today",
         "set a timer for ten minutes"] * 5


def _cfg(vocab: int) -> dict:
    return {"vocab_size": vocab, "joiner_dim": 48, "ctc_weight": 0.0,
            "encoder": {"type": "lstm", "hidden": 48, "num_layers": 2, "subsampling_channels": 8, "frame_stack": 2},
            "predictor": {"type": "stateless", "embed_dim": 48, "context_size": 2}}


def _signal(rng, seconds: float, sr: int) -> np.ndarray:
    """Speech-like enough for fbank: amplitude-modulated harmonics plus noise, peak 0.5."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = rng.uniform(100, 220)
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 12) if f0 * k < sr / 2)
    x = x * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)) + 0.05 * rng.standard_normal(t.size)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    import soundfile as sf

    from edgeasr.compression import Compression, activation_spec, attach_activation_quant, calibrate, layer_mask
    from edgeasr.compression.actquant import float_view
    from edgeasr.data.tokenizer import Tokenizer, train_tokenizer
    from edgeasr.export.student import export_student
    from edgeasr.models import build_transducer
    from edgeasr.models.io import save_model

    root = tmp_path_factory.mktemp("cli")
    tok = Tokenizer(train_tokenizer(TEXTS, root / "tokenizer", vocab_size=40))
    rng = np.random.default_rng(0)
    audio = root / "audio"
    audio.mkdir()
    files = {}
    for i, sec in enumerate((1.3, 0.9, 1.7)):
        files[f"good{i}"] = audio / f"good{i}.wav"
        sf.write(files[f"good{i}"], _signal(rng, sec, 16000), 16000)
    files["low"] = audio / "low_8k.wav"
    sf.write(files["low"], _signal(rng, 1.1, 8000), 8000)
    files["stereo"] = audio / "stereo.flac"
    sf.write(files["stereo"], np.stack([_signal(rng, 1.0, 16000), _signal(rng, 1.0, 16000)], 1), 16000)
    files["corrupt"] = audio / "corrupt.wav"
    files["corrupt"].write_bytes(b"RIFF\x24\x08\x00\x00WAVEfmt " + bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
    files["empty"] = audio / "empty.wav"
    files["empty"].write_bytes(b"")
    files["missing"] = audio / "missing.wav"

    cfg = _cfg(tok.vocab_size)
    torch.manual_seed(0)
    student = build_transducer(cfg).eval()
    models = root / "models"
    save_model(models / "distill" / "model.pt", student, cfg, meta={"stage": "distill"})

    feats = [audio_features(read_audio(files[k])) for k in ("good0", "good1", "good2")]
    batch = {"features": torch.nn.utils.rnn.pad_sequence(feats, batch_first=True),
             "feature_lens": torch.tensor([f.size(0) for f in feats]),
             "tokens": [tok.encode(t) for t in TEXTS[:3]]}
    comp_model = copy.deepcopy(student)
    comp = Compression(comp_model, bits=8)
    comp.set_masks([layer_mask(t.effective(), 0.5) for t in comp.targets])
    comp.materialize()
    attach_activation_quant(comp_model, weight_bits=8)
    calibrate(comp_model, [batch])
    comp_model.eval()
    spec = activation_spec(comp_model)
    compression = {"bits": 8, "sparsity": 0.5, "activation_quant": spec.to_dict()}
    with float_view(comp_model) as plain:
        save_model(models / "compress" / "model.pt", plain, cfg, meta={"stage": "compress", "compression": compression})
        tokens = [tok.sp.id_to_piece(i) for i in range(tok.vocab_size)]
        export_student(plain, {"model_cfg": cfg, "compression": compression}, tokens, models / "student.edgeasr")

    tcfg = {"vocab_size": tok.vocab_size, "joiner_dim": 32,
            "encoder": {"type": "conformer", "d_model": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64,
                        "conv_kernel": 7, "subsampling_channels": 8},
            "predictor": {"type": "stateless", "embed_dim": 32, "context_size": 2}}
    save_model(models / "teacher" / "model.pt", build_transducer(tcfg), tcfg, meta={"stage": "train_teacher"})
    return {"root": root, "tok": tok.path, "files": files, "student": models / "distill" / "model.pt",
            "compressed": models / "compress" / "model.pt", "exported": models / "student.edgeasr",
            "teacher": models / "teacher" / "model.pt", "comp_model": comp_model, "batch": batch}


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def lines(out: str) -> dict[str, str]:
    return dict(line.split("\t", 1) for line in out.splitlines())


# --------------------------------------------------------------------------- the console script


def test_console_script_is_installed_and_runs():
    exe = Path(sys.executable).parent / "edgeasr"
    exe = str(exe) if exe.exists() else shutil.which("edgeasr")
    assert exe, "console script `edgeasr` not installed; run pip install -e ."
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "transcribe" in r.stdout and "score" in r.stdout
    r = subprocess.run([exe, "transcribe", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--streaming" in r.stdout and "--chunk-ms" in r.stdout


def test_console_script_bad_model_is_one_line_exit_2_without_traceback(tmp_path):
    exe = str(Path(sys.executable).parent / "edgeasr")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 4)
    r = subprocess.run([exe, "transcribe", str(junk), str(junk)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and str(junk) in r.stderr and "expected" in r.stderr
    assert r.stdout == ""


# --------------------------------------------------------------------------- transcribe


def test_transcribe_prints_one_line_per_good_file_and_reports_bad_ones(assets, capsys):
    f = assets["files"]
    order = [f["good0"], f["corrupt"], f["low"], f["missing"], f["stereo"], f["empty"], f["good1"]]
    code, out, err = run_main(capsys, "transcribe", assets["student"], *order, "--tokenizer", assets["tok"])
    assert code == 1
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(p) for p in (f["good0"], f["low"], f["stereo"], f["good1"])]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 3
    for bad, why in ((f["corrupt"], "cannot read audio"), (f["missing"], "no such audio file"), (f["empty"], "empty")):
        assert any(str(bad) in line and why in line for line in errors), (bad, err)
    assert "Traceback" not in err
    assert f"{f['low']}: resampling 8000 Hz -> 16000 Hz" in err
    assert "2 channels, using channel 0" in err


def test_transcribe_all_good_exits_0(assets, capsys):
    f = assets["files"]
    code, out, err = run_main(capsys, "transcribe", assets["exported"], f["good0"], f["good1"])
    assert code == 0, err
    assert len(out.splitlines()) == 2


def test_features_are_the_prepare_stage_features(assets):
    """Same options as conf/config.yaml's prepare.features, same extractor, same resampling as the
    prepare stage (``cut.resample`` in cleaning) -> bit-identical features."""
    from lhotse import Recording
    from omegaconf import OmegaConf

    from edgeasr.data.features import KaldiFbank, KaldiFbankConfig

    conf = KaldiFbankConfig.from_cfg(OmegaConf.load(REPO / "conf" / "config.yaml").prepare.features)
    assert conf == KaldiFbankConfig()
    ex = KaldiFbank(conf)
    for key in ("good0", "low"):
        path = assets["files"][key]
        cut = Recording.from_file(path).to_cut()
        if cut.sampling_rate != 16000:
            cut = cut.resample(16000)
        want = torch.from_numpy(cut.compute_features(ex))
        got = audio_features(read_audio(path))
        assert got.shape == want.shape and got.shape[1] == 80
        assert torch.equal(got, want), key


@pytest.mark.parametrize("which", ["student", "exported"])
def test_streaming_equals_offline(assets, which):
    """Chunked encoder with state + streaming greedy == offline greedy, token for token, for several
    chunk sizes (including one that is not a multiple of the subsampling)."""
    rec = load_recognizer(assets[which], assets["tok"])
    rec.check_streaming()
    n_tokens = 0
    for key in ("good0", "good1", "good2", "low"):
        feats = audio_features(read_audio(assets["files"][key]))
        offline = rec.recognize(feats)
        n_tokens += len(offline)
        for chunk in (chunk_frames(320), 7, 1):
            assert rec.recognize(feats, streaming=True, chunk_frames=chunk) == offline, (key, chunk)
    assert n_tokens > 0  # the comparison is not between empty outputs


def test_streaming_cli_text_equals_offline_text(assets, capsys):
    f = assets["files"]
    for model in (assets["student"], assets["exported"]):
        code, offline, _ = run_main(capsys, "transcribe", model, f["good0"], f["good2"], "--tokenizer", assets["tok"])
        assert code == 0
        code, streaming, _ = run_main(capsys, "transcribe", model, f["good0"], f["good2"], "--tokenizer", assets["tok"],
                                      "--streaming", "--chunk-ms", "160")
        assert code == 0
        assert streaming == offline and all(t.strip() for t in lines(offline).values())


def test_compressed_model_pt_gets_its_activation_quantization_back(assets):
    """The CLI's model.pt reproduces the compress stage's fake-quantized encoder exactly; the plain
    float weights alone would not."""
    from edgeasr.models.io import load_model

    b = assets["batch"]
    rec = load_recognizer(assets["compressed"], assets["tok"])
    with torch.no_grad():
        want = assets["comp_model"].encode(b["features"], b["feature_lens"])[0]
        got = rec.model.encode(b["features"], b["feature_lens"])[0]
        plain = load_model(assets["compressed"])[0].encode(b["features"], b["feature_lens"])[0]
    assert torch.equal(got, want)
    assert not torch.equal(plain, want)


def test_compressed_model_pt_streams_through_the_integer_runtime(assets, capsys):
    """Streaming a fake-quantized model.pt runs its integer-runtime twin: the same text as the
    exported file of the same weights."""
    f = assets["files"]
    code, out_pt, err = run_main(capsys, "transcribe", assets["compressed"], f["good0"], f["good1"],
                                 "--tokenizer", assets["tok"], "--streaming")
    assert code == 0 and "integer runtime" in err
    code, out_ex, _ = run_main(capsys, "transcribe", assets["exported"], f["good0"], f["good1"], "--streaming")
    assert code == 0
    assert lines(out_pt) == lines(out_ex)


def test_beam_search_and_its_streaming_restriction(assets, capsys):
    f = assets["files"]
    code, out, err = run_main(capsys, "transcribe", assets["exported"], f["good0"], "--method", "beam", "--beam", "3")
    assert code == 0, err
    assert list(lines(out)) == [str(f["good0"])]
    code, out, err = run_main(capsys, "transcribe", assets["exported"], f["good0"], "--method", "beam", "--streaming")
    assert code == 2 and "greedy" in err and out == ""


def test_streaming_endpoint_prints_partials_and_end_pointer_events(assets, capsys, tmp_path):
    from edgeasr.endpoint import EndOfQuery, EndpointConfig, EndpointRule

    f = assets["files"]
    rule, eoq = tmp_path / "rule.json", tmp_path / "eoq.json"
    EndpointConfig(EndpointRule(0.08, 0.4, 0.5), EndpointRule(0.08, 0.24, 0.3), chunk_ms=80.0, beam=4).save(rule)
    EndOfQuery.fit(["turn on the lights", "stop"]).save(eoq)
    for model in (assets["exported"], assets["compressed"]):  # the exported file and a model.pt it streams like
        code, out, err = run_main(capsys, "transcribe", model, f["good0"], f["good2"], "--streaming", "--endpoint",
                                  "--endpoint-config", rule, "--end-of-query", eoq, "--tokenizer", assets["tok"])
        assert code == 0, err
        rows = [line.split("\t") for line in out.splitlines()]
        assert all(len(r) == 4 for r in rows) and {r[0] for r in rows} == {str(f["good0"]), str(f["good2"])}
        for path in (f["good0"], f["good2"]):
            mine = [r for r in rows if r[0] == str(path)]
            times = [float(r[1]) for r in mine]
            assert times == sorted(times) and {r[2] for r in mine} <= {"partial", "speculative", "reset", "final", "end"}
            assert mine[-1][2] in ("final", "end") and [r[2] for r in mine].count(mine[-1][2]) == 1
    # --endpoint without --streaming, and a missing configuration: one line, exit 2
    code, out, err = run_main(capsys, "transcribe", assets["exported"], f["good0"], "--endpoint")
    assert code == 2 and "--streaming" in err and out == ""
    code, out, err = run_main(capsys, "transcribe", assets["exported"], f["good0"], "--streaming", "--endpoint",
                              "--endpoint-config", tmp_path / "nope.json", "--end-of-query", eoq)
    assert code == 2 and "nope.json" in err and "dvc repro evaluate" in err and len(err.strip().splitlines()) == 1


def test_conformer_teacher_decodes_offline_but_refuses_streaming(assets, capsys):
    f = assets["files"]
    code, out, err = run_main(capsys, "transcribe", assets["teacher"], f["good0"], "--tokenizer", assets["tok"])
    assert code == 0, err
    assert len(out.splitlines()) == 1
    code, out, err = run_main(capsys, "transcribe", assets["teacher"], f["good0"], "--tokenizer", assets["tok"],
                              "--streaming")
    assert code == 2 and out == ""
    assert str(assets["teacher"]) in err and "no streaming mode" in err and "Traceback" not in err


# --------------------------------------------------------------------------- model files


def test_unknown_or_corrupt_model_files_exit_2_with_a_clear_message(assets, capsys, tmp_path):
    rng = np.random.default_rng(1)
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.edgeasr"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.edgeasr"
    truncated.write_bytes(assets["exported"].read_bytes()[:300])
    mutated = tmp_path / "mutated.edgeasr"
    data = bytearray(assets["exported"].read_bytes())
    data[len(data) // 2] ^= 0x40
    mutated.write_bytes(bytes(data))
    not_edgeasr_zip = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, not_edgeasr_zip)
    cases = {
        random_bytes: "expected",
        assets["files"]["good0"]: "WAV",  # an audio file passed as the model
        empty: "empty",
        truncated: "truncated",
        mutated: "edgeasr",
        not_edgeasr_zip: "not an edgeasr model file",
        tmp_path / "nope.pt": "not found",
        tmp_path: "not a regular file",
    }
    for path, why in cases.items():
        code, out, err = run_main(capsys, "transcribe", path, assets["files"]["good0"], "--tokenizer", assets["tok"])
        assert code == 2, (path, err)
        assert out == "" and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
        assert str(path) in err and why in err, (path, err)


def test_model_kind_is_detected_by_content_not_suffix(assets, capsys, tmp_path):
    f = assets["files"]["good0"]
    pt_named_edgeasr = tmp_path / "model.edgeasr"
    shutil.copy(assets["student"], pt_named_edgeasr)
    export_named_pt = tmp_path / "model.pt"
    shutil.copy(assets["exported"], export_named_pt)
    _, want_pt, _ = run_main(capsys, "transcribe", assets["student"], f, "--tokenizer", assets["tok"])
    _, want_ex, _ = run_main(capsys, "transcribe", assets["exported"], f)
    code, got_pt, err = run_main(capsys, "transcribe", pt_named_edgeasr, f, "--tokenizer", assets["tok"])
    assert code == 0, err
    code, got_ex, err = run_main(capsys, "transcribe", export_named_pt, f)
    assert code == 0, err
    assert lines(got_pt) == lines(want_pt) and lines(got_ex) == lines(want_ex)


def test_tokenizer_problems_exit_2(assets, capsys, tmp_path, monkeypatch):
    from edgeasr.data.tokenizer import train_tokenizer

    f = assets["files"]["good0"]
    monkeypatch.chdir(tmp_path)  # no data/prepare/tokenizer/bpe.model here
    code, _, err = run_main(capsys, "transcribe", assets["student"], f)
    assert code == 2 and "--tokenizer" in err and DEFAULT_TOKENIZER in err
    other = train_tokenizer(TEXTS, tmp_path / "other", vocab_size=30)
    code, _, err = run_main(capsys, "transcribe", assets["student"], f, "--tokenizer", other)
    assert code == 2 and "tokens but" in err
    garbage = tmp_path / "bpe.model"
    garbage.write_bytes(b"not a sentencepiece model")
    code, _, err = run_main(capsys, "transcribe", assets["student"], f, "--tokenizer", garbage)
    assert code == 2 and str(garbage) in err and "Traceback" not in err


def test_bad_options_exit_2(assets, capsys):
    f = assets["files"]["good0"]
    with pytest.raises(SystemExit) as e:
        cli.main(["transcribe", str(assets["exported"]), str(f), "--chunk-ms", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["transcribe", str(assets["exported"]), str(f), "--method", "viterbi"])
    assert e.value.code == 2
    capsys.readouterr()


# --------------------------------------------------------------------------- score


WER_LINE = re.compile(r"^%WER (\d+\.\d\d) \[ (\d+) / (\d+), (\d+) ins, (\d+) del, (\d+) sub \] (\d+) utts")


def _hyps(assets, capsys, model, keys, *extra) -> dict[str, str]:
    paths = [assets["files"][k] for k in keys]
    code, out, _ = run_main(capsys, "transcribe", model, *paths, "--tokenizer", assets["tok"], *extra)
    assert code == 0
    return {Path(p).name: t for p, t in lines(out).items()}


def test_score_tsv_prints_the_corpus_wer_and_writes_recogs_and_errs(assets, capsys, tmp_path):
    keys = ("good0", "good1", "good2", "low")
    hyps = _hyps(assets, capsys, assets["student"], keys)
    names = [assets["files"][k].name for k in keys]
    refs = {names[0]: hyps[names[0]].upper() + ",",  # normalized to the hypothesis: 0 errors
            names[1]: "Turn on the kitchen lights!", names[2]: "play some music", names[3]: "what is the weather"}
    tsv = assets["files"]["good0"].parent / "set.tsv"  # audio paths relative to the TSV
    tsv.write_text("audio\ttext\n" + "".join(f"{n}\t{refs[n]}\n" for n in names), encoding="utf-8")
    out_dir = tmp_path / "results"
    code, out, err = run_main(capsys, "score", assets["student"], tsv, "--out", out_dir, "--tokenizer", assets["tok"])
    assert code == 0, err
    m = WER_LINE.match(out.strip())
    assert m, out

    from edgeasr.data.cleaning import normalize_transcript

    norm = [normalize_transcript(refs[n]) for n in names]
    assert norm[1:] == ["turn on the kitchen lights", "play some music", "what is the weather"]
    want = WerAccumulator()
    want.update(norm, [hyps[n] for n in names], names)
    assert want.errors > 0 and want.words == sum(len(r.split()) for r in norm)
    assert m.group(1) == f"{want.wer:.2f}"
    assert tuple(int(g) for g in m.groups()[1:]) == (want.errors, want.words, want.ins, want.dels, want.subs, 4)
    assert (out_dir / "recogs-set.txt").is_file() and (out_dir / "errs-set.txt").is_file()
    want.write_recogs(tmp_path / "want-recogs.txt")
    want.write_errs(tmp_path / "want-errs.txt")
    assert (out_dir / "recogs-set.txt").read_text() == (tmp_path / "want-recogs.txt").read_text()
    assert (out_dir / "errs-set.txt").read_text() == (tmp_path / "want-errs.txt").read_text()
    assert f"%WER = {want.wer:.2f}" in (out_dir / "errs-set.txt").read_text()


def test_score_tsv_with_a_bad_file_reports_it_and_scores_the_rest(assets, capsys, tmp_path):
    f = assets["files"]
    tsv = tmp_path / "set.tsv"
    tsv.write_text(f"{f['good0']}\tturn on the lights\n{f['corrupt']}\tplay music\n{f['missing']}\tplay\n",
                   encoding="utf-8")
    code, out, err = run_main(capsys, "score", assets["exported"], tsv, "--out", tmp_path, "--progress")
    assert code == 1
    assert WER_LINE.match(out.strip()).group(7) == "1"
    assert str(f["corrupt"]) in err and str(f["missing"]) in err and "2 of 3 utterances" in err


def test_score_lhotse_cuts_with_features_or_recordings(assets, capsys, tmp_path):
    """A cuts manifest with (lossless) features or only recordings scores like the audio files."""
    from lhotse import CutSet, NumpyFilesWriter, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    from edgeasr.data.features import KaldiFbank, KaldiFbankConfig

    keys = ("good0", "good1", "low")
    hyps = _hyps(assets, capsys, assets["exported"], keys)
    recs = [Recording.from_file(assets["files"][k], recording_id=k) for k in keys]
    sups = [SupervisionSegment(id=k, recording_id=k, start=0, duration=r.duration, channel=0, text=TEXTS[i])
            for i, (k, r) in enumerate(zip(keys, recs))]
    cuts = CutSet.from_manifests(RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups))
    cuts = cuts.trim_to_supervisions(keep_overlapping=False)
    cuts.to_file(tmp_path / "cuts_audio.jsonl.gz")
    featured = CutSet.from_cuts(c.resample(16000) if c.sampling_rate != 16000 else c for c in cuts)
    featured = featured.compute_and_store_features(KaldiFbank(KaldiFbankConfig()), tmp_path / "feats",
                                                   storage_type=NumpyFilesWriter, num_jobs=1)
    featured.to_file(tmp_path / "cuts_feats.jsonl.gz")

    want = WerAccumulator()
    want.update(TEXTS[:3], [hyps[assets["files"][k].name] for k in keys], list(keys))
    for name in ("audio", "feats"):
        out_dir = tmp_path / name
        code, out, err = run_main(capsys, "score", assets["exported"], tmp_path / f"cuts_{name}.jsonl.gz",
                                  "--out", out_dir)
        assert code == 0, err
        assert WER_LINE.match(out.strip()).groups()[:3] == (f"{want.wer:.2f}", str(want.errors), str(want.words))
        assert (out_dir / f"recogs-{name}.txt").is_file()
        assert ("low: resampling 8000 Hz" in err) == (name == "audio")  # the features were computed at 16 kHz


def test_score_rejects_a_missing_or_unreadable_set(assets, capsys, tmp_path):
    code, _, err = run_main(capsys, "score", assets["exported"], tmp_path / "nope.tsv")
    assert code == 2 and "not found" in err
    broken = tmp_path / "cuts_broken.jsonl.gz"
    broken.write_bytes(b"\x1f\x8b" + b"\x00" * 40)
    code, _, err = run_main(capsys, "score", assets["exported"], broken)
    assert code == 2 and str(broken) in err and "Traceback" not in err
    one_col = tmp_path / "one.tsv"
    one_col.write_text("a.wav\n", encoding="utf-8")
    code, _, err = run_main(capsys, "score", assets["exported"], one_col)
    assert code == 2 and f"{one_col}:1" in err


def test_score_refuses_a_manifest_that_would_run_a_command_or_fetch(assets, capsys, tmp_path):
    """Issue 15.1: a cuts manifest is data, not code. Its `command` audio source and a feature
    storage read through `pipe:` are refused (exit 2, one line) before lhotse runs them."""
    from lhotse import AudioSource, CutSet, Recording, SupervisionSegment
    from lhotse.cut import MonoCut

    good = Recording.from_file(assets["files"]["good0"], recording_id="evil")
    marker = tmp_path / "command_ran"
    cmd = f"touch {marker}; cat {assets['files']['good0']}"
    rec = Recording(id="evil", sources=[AudioSource(type="command", channels=[0], source=cmd)],
                    sampling_rate=good.sampling_rate, num_samples=good.num_samples, duration=good.duration)
    sup = SupervisionSegment(id="evil", recording_id="evil", start=0, duration=rec.duration, channel=0, text=TEXTS[0])
    cuts = tmp_path / "cuts_evil.jsonl.gz"
    CutSet.from_cuts([MonoCut("evil", 0, rec.duration, 0, recording=rec, supervisions=[sup])]).to_file(cuts)

    code, out, err = run_main(capsys, "score", assets["exported"], cuts, "--out", tmp_path)
    assert not marker.exists(), "the manifest's shell command ran"
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert str(cuts) in err and "'evil'" in err and "'command'" in err and "--allow-source-type command" in err

    # The explicit opt-in reads it (the command writes the marker and pipes the wav).
    code, out, err = run_main(capsys, "score", assets["exported"], cuts, "--out", tmp_path,
                              "--allow-source-type", "command")
    assert code == 0, err
    assert marker.exists() and WER_LINE.match(out.strip())

    # Features are loaded without audio: a numpy_files storage under `pipe:` would be a shell command too.
    feat_marker = tmp_path / "features_command_ran"
    plain = Recording.from_file(assets["files"]["good0"], recording_id="good0")
    fsup = SupervisionSegment(id="good0", recording_id="good0", start=0, duration=plain.duration, channel=0,
                              text=TEXTS[0])
    from lhotse import NumpyFilesWriter

    from edgeasr.data.features import KaldiFbank, KaldiFbankConfig

    featured = CutSet.from_cuts([MonoCut("good0", 0, plain.duration, 0, recording=plain, supervisions=[fsup])])
    featured = featured.compute_and_store_features(KaldiFbank(KaldiFbankConfig()), tmp_path / "feats",
                                                   storage_type=NumpyFilesWriter, num_jobs=1, progress_bar=False)
    featured = CutSet.from_cuts(
        replace(c.drop_recording(), features=replace(c.features, storage_path=f"pipe:touch {feat_marker};"))
        for c in featured)
    featured.to_file(tmp_path / "cuts_pipe.jsonl.gz")
    code, _, err = run_main(capsys, "score", assets["exported"], tmp_path / "cuts_pipe.jsonl.gz", "--out", tmp_path)
    assert not feat_marker.exists(), "the feature storage's shell command ran"
    assert code == 2 and "'good0'" in err and "numpy_files" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- context biasing


def test_transcribe_context_pulls_the_phrase_in_and_needs_beam(assets, capsys, tmp_path):
    f = assets["files"]
    ctx = tmp_path / "contacts.txt"
    ctx.write_text("# my contacts\nKitchen  Lights\n\n", encoding="utf-8")
    for model in (assets["exported"], assets["compressed"]):
        extra = ("--tokenizer", assets["tok"])  # the exported file spells phrases with it
        code, plain, err = run_main(capsys, "transcribe", model, f["good0"], "--method", "beam", *extra)
        assert code == 0, err
        code, biased, err = run_main(capsys, "transcribe", model, f["good0"], "--method", "beam", "--context", ctx,
                                     "--context-boost", "20", *extra)
        assert code == 0, err
        assert "kitchen lights" in lines(biased)[str(f["good0"])]   # lower-cased, spaces collapsed
        assert "kitchen lights" not in lines(plain)[str(f["good0"])]
    code, _, err = run_main(capsys, "transcribe", assets["exported"], f["good0"], "--context", ctx)
    assert code == 2 and "--method beam" in err
    code, _, err = run_main(capsys, "transcribe", assets["exported"], f["good0"], "--method", "beam", "--streaming",
                            "--context", ctx)
    assert code == 2 and "--streaming" in err


def test_context_file_and_tokenizer_problems_exit_2(assets, capsys, tmp_path):
    f = assets["files"]
    beam = ("--method", "beam")
    code, _, err = run_main(capsys, "transcribe", assets["exported"], f["good0"], *beam, "--context", tmp_path / "no.txt")
    assert code == 2 and "no.txt: context list not found" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    code, _, err = run_main(capsys, "transcribe", assets["exported"], f["good0"], *beam, "--context", empty)
    assert code == 2 and "holds no phrase" in err
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    code, _, err = run_main(capsys, "transcribe", assets["exported"], f["good0"], *beam, "--context", binary)
    assert code == 2 and "not a readable UTF-8 context list" in err
    # an exported file spells phrases with the tokenizer it was trained with, and checks it is that one
    from edgeasr.data.tokenizer import train_tokenizer
    other = train_tokenizer(["a completely different text corpus"] * 20, tmp_path / "other", vocab_size=30)
    ctx = tmp_path / "ctx.txt"
    ctx.write_text("kitchen lights\n", encoding="utf-8")
    code, _, err = run_main(capsys, "transcribe", assets["exported"], f["good0"], *beam, "--context", ctx,
                            "--tokenizer", other)
    assert code == 2 and "not" in err and "tokens" in err and "Traceback" not in err
    for bad in (("--context-end-bonus", "-1"), ("--context-reserve", "-1"), ("--context-reserve", "1.5")):
        with pytest.raises(SystemExit):
            cli.main(["transcribe", str(assets["exported"]), str(f["good0"]), *bad])
    # a phrase the tokenizer can only spell with <unk> is dropped, named
    ctx.write_text("kitchen lights\nzürich ß\n", encoding="utf-8")
    code, _, err = run_main(capsys, "transcribe", assets["exported"], f["good0"], *beam, "--context", ctx,
                            "--tokenizer", assets["tok"])
    assert code == 0 and "1 phrase(s) the model cannot spell dropped" in err and "zürich" in err


def test_score_utterance_context_uses_each_cuts_own_list(assets, capsys, tmp_path):
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    keys = ("good0", "good1", "good2")
    recs = [Recording.from_file(assets["files"][k], recording_id=k) for k in keys]
    lists = [["kitchen lights"], None, "play music"]   # the last is not a list: reported, skipped
    sups = [SupervisionSegment(id=k, recording_id=k, start=0, duration=r.duration, channel=0, text=TEXTS[i],
                               custom=None if lists[i] is None else {"context": lists[i]})
            for i, (k, r) in enumerate(zip(keys, recs))]
    cuts = CutSet.from_manifests(RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups))
    cuts.trim_to_supervisions(keep_overlapping=False).to_file(tmp_path / "cuts_ctx.jsonl.gz")
    args = ("score", assets["exported"], tmp_path / "cuts_ctx.jsonl.gz", "--out", tmp_path, "--method", "beam",
            "--tokenizer", assets["tok"])
    code, out, err = run_main(capsys, *args, "--utterance-context", "--context-boost", "20")
    assert code == 1 and "good2: its supervision custom 'context' must be a list of phrases" in err
    assert "good1: no context list in the set; decoded without biasing" in err and "2 utts" in out
    recogs = (tmp_path / "recogs-ctx.txt").read_text()
    assert "'kitchen', 'lights" in recogs.split("good0:\thyp=")[1].splitlines()[0]
    code, _, err = run_main(capsys, *args, "--utterance-context", "--context", tmp_path / "x.txt")
    assert code == 2 and "exclude each other" in err
