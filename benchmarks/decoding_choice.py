"""WER of an exported student (integer runtime) on one split under modified beam search (beam 4, 8;
beam 8 with up to 2 and 3 symbols per frame) and greedy search at the header's tokens per frame:
how `evaluate.decoding` was chosen (on dev).

Usage: python benchmarks/decoding_choice.py [--model data/export/student.edgeasr] [--data data] [--split dev]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from edgeasr.data.datamodule import AsrDataModule
from edgeasr.evaluation import decode_loader, wer_metrics
from edgeasr.runtime import load_student, tokens_to_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("data/export/student.edgeasr"))
    ap.add_argument("--data", type=Path, default=Path("data"), help="paths.data_dir of a prepared corpus")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    prep = a.data / "prepare"
    dm = AsrDataModule(prep / "manifests", prep / "tokenizer" / "bpe.model", train_splits=["train"], max_duration=60)
    rt = load_student(a.model)
    loader = list(dm.split_dataloader(a.split))
    for method, beam, per_frame in (("beam", 4, 1), ("beam", 8, 1), ("beam", 8, 2), ("beam", 8, 3),
                                    ("greedy", 0, rt.max_sym_per_frame)):
        acc = decode_loader(rt, loader, lambda ids: tokens_to_text(rt.tokens, ids), method, beam, per_frame)
        label = f"beam {beam}, {per_frame} per frame" if method == "beam" else f"greedy, {per_frame} per frame"
        print(f"{a.split}\t{label}\t{wer_metrics(acc, a.split)}", flush=True)


if __name__ == "__main__":
    main()
