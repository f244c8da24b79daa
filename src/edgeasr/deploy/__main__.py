"""``python -m edgeasr.deploy {export,decode,verify,hotwords}``: the sherpa-onnx deployment path.

Run from the repository root (manifests hold paths relative to it). Examples in docs/deploy.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from edgeasr.deploy.sherpa import hotword_wer, sherpa_decode, utterances_from_cuts, utterances_from_wavs, verify_bundle
from edgeasr.export.sherpa import SherpaBundle, export_sherpa_bundles
from edgeasr.models.io import load_model


def _model(path):
    return load_model(path)[0]


def _bundles(root: Path, modes):
    return {m: SherpaBundle.load(root / m) for m in modes}


def cmd_export(a) -> dict:
    b = export_sherpa_bundles(_model(a.model), a.tokenizer, a.out, chunk_frames=a.chunk_frames, int8=not a.no_int8,
                              extra_meta={"source": str(a.model)})
    return {m: {"dir": str(x.dir), "bytes": x.info["bytes"], "zeros": x.info["zeros"]} for m, x in b.items()}


def cmd_decode(a) -> dict:
    b = SherpaBundle.load(a.bundle)
    utts = utterances_from_wavs(a.wavs)
    hw = [a.hotwords] * len(utts) if a.hotwords else None
    r = sherpa_decode(b.files(int8=a.int8), utts, streaming=b.streaming,
                      method="modified_beam_search" if (a.beam or hw) else "greedy_search", hotwords=hw)
    for u, t in zip(utts, r.texts):
        print(f"{u.id}\t{t.strip()}")
    return {"rtf": round(r.rtf, 5)}


def cmd_verify(a) -> dict:
    torch.set_num_threads(1)
    model = _model(a.model)
    utts = utterances_from_cuts(a.cuts, limit=a.limit)
    out = {}
    for mode, b in _bundles(Path(a.bundles), a.modes).items():
        for int8 in ([False, True] if a.int8 else [False]):
            key = f"{mode}/{'int8' if int8 else 'fp32'}"
            ag = verify_bundle(model, b, utts, int8=int8)
            out[key] = ag.as_dict()
            out[key]["mismatches"] = ag.mismatches[: a.show]
            print(f"{key}: {ag.identical}/{ag.n} identical ({100 * ag.rate:.2f} %), WER sherpa "
                  f"{ag.wer_sherpa:.2f} vs ours {ag.wer_torch:.2f}, sherpa RTF {ag.rtf_sherpa:.4f}", file=sys.stderr)
    return out


def cmd_hotwords(a) -> dict:
    utts = utterances_from_cuts(a.cuts, limit=a.limit)
    out = {}
    for mode, b in _bundles(Path(a.bundles), a.modes).items():
        for score in a.scores:
            key = f"{mode}/score={score}"
            out[key] = hotword_wer(b, utts, int8=a.int8, hotwords_score=score, max_active_paths=a.beam)
            print(key, out[key], file=sys.stderr)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgeasr.deploy", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("export", help="write <out>/offline and <out>/streaming sherpa-onnx bundles (fp32 + int8)")
    e.add_argument("--model", required=True, help="data/<stage>/model.pt")
    e.add_argument("--tokenizer", default="data/prepare/tokenizer")
    e.add_argument("--out", required=True)
    e.add_argument("--chunk-frames", type=int, default=4, help="encoder frames per streaming chunk")
    e.add_argument("--no-int8", action="store_true")

    d = sub.add_parser("decode", help="transcribe 16 kHz audio files with a bundle")
    d.add_argument("--bundle", required=True, help="<out>/offline or <out>/streaming")
    d.add_argument("--int8", action="store_true")
    d.add_argument("--beam", action="store_true", help="modified_beam_search instead of greedy")
    d.add_argument("--hotwords", default=None, help="'phrase one/phrase two' (implies --beam)")
    d.add_argument("wavs", nargs="+")

    v = sub.add_parser("verify", help="sherpa greedy vs our PyTorch greedy on lhotse cuts")
    v.add_argument("--model", required=True)
    v.add_argument("--bundles", required=True)
    v.add_argument("--cuts", required=True)
    v.add_argument("--modes", nargs="+", default=["offline", "streaming"])
    v.add_argument("--int8", action="store_true", help="also decode the int8 files")
    v.add_argument("--limit", type=int, default=None)
    v.add_argument("--show", type=int, default=10, help="mismatches kept in the output")

    h = sub.add_parser("hotwords", help="WER with / without each cut's context list as hotwords")
    h.add_argument("--bundles", required=True)
    h.add_argument("--cuts", required=True)
    h.add_argument("--modes", nargs="+", default=["offline"])
    h.add_argument("--scores", nargs="+", type=float, default=[1.5])
    h.add_argument("--beam", type=int, default=4)
    h.add_argument("--int8", action="store_true")
    h.add_argument("--limit", type=int, default=None)

    for s in (e, d, v, h):
        s.add_argument("--json", default=None, help="also write the result here")
    a = p.parse_args(argv)
    res = {"export": cmd_export, "decode": cmd_decode, "verify": cmd_verify, "hotwords": cmd_hotwords}[a.cmd](a)
    text = json.dumps(res, indent=2)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(text + "\n")
    if a.cmd != "decode":
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
