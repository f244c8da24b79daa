"""Test WER of student model files under greedy search with 1, 2, 3 tokens per encoder frame.

At 80-ms frames eSpeak's fast voices speak more than one BPE token per frame; sherpa-onnx's greedy
search (and modified beam search) emit at most one. This prints what each bound costs.
Usage: python benchmarks/tokens_per_frame.py MODEL.pt [MODEL.pt ...] [--data data] [--split test] [--threads 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from edgeasr.compression import restore_fake_quant
from edgeasr.data.datamodule import AsrDataModule
from edgeasr.evaluation import decode_loader, wer_metrics
from edgeasr.models.io import load_model
from edgeasr.quantspec import read_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, default=Path("data"), help="paths.data_dir of a prepared corpus")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-sym", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    prep = a.data / "prepare"
    dm = AsrDataModule(prep / "manifests", prep / "tokenizer" / "bpe.model", train_splits=["train"], max_duration=60)
    loader = list(dm.split_dataloader(a.split))
    print("model\ttokens/frame\t" + "\t".join(("wer", "slot_wer", "carrier_wer")))
    for path in a.models:
        model, meta = load_model(path)
        if "compression" in meta:  # a compressed student decodes as its stage evaluated it
            model = restore_fake_quant(model, read_spec(meta, str(path), need="decoding")).eval()
        for n in a.max_sym:
            m = wer_metrics(decode_loader(model, loader, dm.tokenizer.decode, "greedy", max_sym_per_frame=n), a.split)
            print(f"{path}\t{n}\t" + "\t".join(f"{m.get(f'{k}/{a.split}', float('nan')):.2f}"
                                                  for k in ("wer", "slot_wer", "carrier_wer")), flush=True)


if __name__ == "__main__":
    main()
