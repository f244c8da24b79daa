"""Real-time factor of the student on one CPU thread: sherpa-onnx int8 / fp32 (offline and
streaming), our integer runtime (an exported ``.edgeasr`` file) and PyTorch fp32 greedy.

Every row decodes the same utterances one at a time from audio (fbank included), 1 thread;
RTF = summed decode wall time / summed audio duration, best of ``--repeat`` per utterance, after
one warm-up utterance. sherpa-onnx runs in a subprocess (its own timer around create_stream ..
result, model loading excluded). Also prints each row's WER and its share of transcripts
identical to PyTorch's greedy (offline rows vs offline PyTorch, streaming vs streaming PyTorch).

Usage (repository root, after prepare + compress + export):
  python benchmarks/rtf.py --model data/compress/model.pt --cuts data/prepare/manifests/cuts_test.jsonl.gz \
      [--bundles data/sherpa] [--edgeasr data/export/student.edgeasr] [--limit 100] [--repeat 1] [--json out.json]
Without --bundles the bundles are exported to a temporary directory first. A missing .edgeasr file
skips the integer-runtime row with a message.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _row(name, mode, size, times, audio, texts, refs, same=None):
    from edgeasr.deploy.sherpa import wer_percent

    return {"runtime": name, "mode": mode, "bytes": size, "utts": len(times), "audio_s": round(sum(audio), 2),
            "compute_s": round(sum(times), 3), "rtf": round(sum(times) / max(1e-9, sum(audio)), 5),
            "wer": round(wer_percent(refs, texts), 2), "identical_to_torch": None if same is None else round(same, 4)}


def _calibrated_runtime(model, model_path, cuts, tokenizer_dir, n_batches: int = 8, batch: int = 8):
    """An IntTransducer from the (compressed, weights-on-grid) ``model``: its compression spec with
    activation scales from ``n_batches`` x ``batch`` cuts of ``cuts``, the compress stage's
    calibration procedure."""
    import copy
    import dataclasses

    import torch

    from edgeasr.compression import activation_spec, attach_activation_quant, calibrate, float_view
    from edgeasr.data.tokenizer import Tokenizer
    from edgeasr.deploy.sherpa import fbank, utterances_from_cuts
    from edgeasr.models.io import load_model
    from edgeasr.quantspec import read_spec
    from edgeasr.runtime import IntTransducer

    meta = load_model(model_path)[1]
    spec = read_spec(meta, str(model_path), need="the integer runtime (--calibrate-cuts)")
    tok = Tokenizer(Path(tokenizer_dir) / "bpe.model")
    us = utterances_from_cuts(cuts, limit=n_batches * batch)
    batches = []
    for i in range(0, len(us), batch):
        feats = [fbank(u.samples) for u in us[i:i + batch]]
        lens = torch.tensor([f.size(0) for f in feats])
        x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
        batches.append({"features": x, "feature_lens": lens, "tokens": [tok.encode(u.text) for u in us[i:i + batch]]})
    m = copy.deepcopy(model)
    attach_activation_quant(m, weight_bits=spec.bits)
    calibrate(m, batches)
    m.eval()
    print(f"integer runtime built from {model_path} ({spec.bits}-bit weights), activations calibrated on "
          f"{len(us)} cuts of {cuts}", file=sys.stderr)
    calibrated = dataclasses.replace(spec, activations=activation_spec(m))
    with float_view(m) as plain:
        return IntTransducer.from_model(plain, calibrated, meta["model_cfg"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="data/compress/model.pt")
    ap.add_argument("--cuts", default="data/prepare/manifests/cuts_test.jsonl.gz")
    ap.add_argument("--tokenizer", default="data/prepare/tokenizer")
    ap.add_argument("--bundles", default=None, help="dir with offline/ and streaming/ bundles (default: export now)")
    ap.add_argument("--edgeasr", default="data/export/student.edgeasr", help="exported student for the integer runtime")
    ap.add_argument("--calibrate-cuts", default=None,
                    help="without an .edgeasr file: build the integer runtime from --model, activation scales "
                         "calibrated on these cuts (e.g. the dev split), instead of skipping it")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    from edgeasr.deploy.sherpa import (fbank, ids_from_symbols, ids_to_text, read_tokens, sherpa_decode, torch_greedy,
                                       utterances_from_cuts)
    from edgeasr.export.sherpa import SherpaBundle, export_sherpa_bundles
    from edgeasr.models.io import load_model

    model, _ = load_model(a.model)
    utts = utterances_from_cuts(a.cuts, limit=a.limit)
    refs = [u.text for u in utts]
    audio = [u.duration for u in utts]
    tmp = None
    if a.bundles is None:
        tmp = tempfile.TemporaryDirectory(prefix="edgeasr-rtf-")
        export_sherpa_bundles(model, a.tokenizer, tmp.name)
        root = Path(tmp.name)
    else:
        root = Path(a.bundles)
    bundles = {m: SherpaBundle.load(root / m) for m in ("offline", "streaming")}
    table = read_tokens(bundles["offline"].files()["tokens"])
    n_params = sum(p.numel() for n, p in model.state_dict().items() if not n.startswith("ctc_head"))

    def best_of(fn):
        fn(utts[:1])  # warm-up
        runs = []
        for _ in range(max(1, a.repeat)):
            t: list[float] = []
            out = fn(utts, t)
            runs.append(t)
        return out, [min(x) for x in zip(*runs)]

    rows = []
    ref_ids = {}
    for mode in ("offline", "streaming"):
        ids, times = best_of(lambda us, t=None: torch_greedy(model, us, streaming=mode == "streaming", times=t))
        ref_ids[mode] = ids
        rows.append(_row("pytorch fp32", mode, 4 * n_params, times, audio, [ids_to_text(i, table) for i in ids], refs))

    for mode, b in bundles.items():
        for int8 in (True, False):
            files = b.files(int8=int8)
            size = sum(Path(files[p]).stat().st_size for p in ("encoder", "decoder", "joiner"))
            r = sherpa_decode(files, utts, streaming=b.streaming, num_threads=1, repeat=a.repeat)
            got = [ids_from_symbols(t, table) for t in r.tokens]
            same = sum(g == i for g, i in zip(got, ref_ids[mode])) / max(1, len(got))
            rows.append(_row(f"sherpa-onnx {'int8' if int8 else 'fp32'}", mode, size, r.decode_s, r.audio_s,
                             [ids_to_text(g, table) for g in got], refs, same))

    path = Path(a.edgeasr)
    rt = None
    if path.is_file():
        from edgeasr.runtime import load_student

        rt, int_name, int_size = load_student(path), "edgeasr int runtime", path.stat().st_size
        rt_source = path
        if rt.header.get("source"):
            print(f"note: {path} was exported from {rt.header['source']}; identical_to_torch compares it with {a.model}",
                  file=sys.stderr)
    elif a.calibrate_cuts:
        rt, int_name, int_size = _calibrated_runtime(model, a.model, a.calibrate_cuts, a.tokenizer), "int runtime (calib.)", None
        rt_source = Path(a.model)
    else:
        print(f"skipping the integer runtime: {path} not found (run the export stage, pass --edgeasr, or "
              "--calibrate-cuts to build it from --model)", file=sys.stderr)
    if rt is not None:
        from edgeasr.recognizer import Recognizer
        from edgeasr.runtime import tokens_to_text

        tokens = getattr(rt, "tokens", table)
        # offline greedy exactly as the edgeasr CLI decodes an exported student
        rec = Recognizer(rt_source, "exported", rt, lambda ids: tokens_to_text(tokens, ids))

        def int_decode(us, t=None):
            out = []
            for u in us:
                t0 = time.perf_counter()
                out.append(rec.recognize(fbank(u.samples)))
                if t is not None:
                    t.append(time.perf_counter() - t0)
            return out

        ids, times = best_of(int_decode)
        same = sum(i == r for i, r in zip(ids, ref_ids["offline"])) / max(1, len(ids))
        rows.append(_row(int_name, "offline", int_size, times, audio, [rec.to_text(i) for i in ids], refs, same))

    print(f"{len(utts)} utterances, {sum(audio):.1f} s of audio, 1 thread, best of {a.repeat}")
    head = f"{'runtime':<20} {'mode':<10} {'model KB':>9} {'compute s':>9} {'RTF':>8} {'WER %':>7} {'same as torch':>13}"
    print(head)
    print("-" * len(head))
    for r in rows:
        same = "-" if r["identical_to_torch"] is None else f"{100 * r['identical_to_torch']:.1f} %"
        kb = "-" if r["bytes"] is None else f"{r['bytes'] / 1024:.0f}"
        print(f"{r['runtime']:<20} {r['mode']:<10} {kb:>9} {r['compute_s']:>9.2f} {r['rtf']:>8.4f} "
              f"{r['wer']:>7.2f} {same:>13}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
