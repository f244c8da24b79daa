"""What a shallow-fusion context list costs on the host: building its automaton, its size, and the
integer runtime's modified beam search per utterance with lists of 0 to 1,000 phrases.

Lists: each utterance's true entity plus N distractors from the split's pool (as evaluate.biasing
draws them). The encoder runs once per batch and is not timed (biasing does not touch it).

Usage: python benchmarks/biasing_cost.py [--model data/export/student.edgeasr] [--data data]
       [--split test_rare] [--utts 64] [--beam 8]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from lhotse import CutSet

from edgeasr.data.tokenizer import Tokenizer
from edgeasr.decoding import ContextGraph, modified_beam_search
from edgeasr.runtime import load_student
from edgeasr.stages.evaluate_biasing import SplitLists, context_lists, feature_batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("data/export/student.edgeasr"))
    ap.add_argument("--data", type=Path, default=Path("data"), help="paths.data_dir of a prepared corpus")
    ap.add_argument("--split", default="test_rare")
    ap.add_argument("--utts", type=int, default=64)
    ap.add_argument("--beam", type=int, default=8)
    ap.add_argument("--boost", type=float, default=2.0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    prep = a.data / "prepare"
    tok = Tokenizer(prep / "tokenizer" / "bpe.model")
    rt = load_student(a.model)
    cuts = sorted(CutSet.from_file(prep / "manifests" / f"cuts_{a.split}.jsonl.gz"), key=lambda c: c.id)[: a.utts]
    sl = SplitLists.from_cuts(cuts)
    batches = []
    with torch.no_grad():
        for ids, feats, lens in feature_batches(cuts):
            batches.append((ids, *rt.encode(feats, lens)))
    print(f"{a.split}: {len(cuts)} utterances, beam {a.beam}, {a.model}")
    print("phrases\tbuild_ms_per_list\tstates\ttable_KiB\tsearch_ms_per_utt")
    for n in (None, 0, 10, 100, 1000):
        lists = context_lists(sl, n, 0, a.split) if n is not None else None
        build = search = 0.0
        states = table = 0
        for ids, enc, enc_lens in batches:
            graphs = None
            if lists is not None:
                t0 = time.perf_counter()
                graphs = [ContextGraph.from_phrases(lists[i], tok.encode, tok.vocab_size, a.boost) for i in ids]
                build += time.perf_counter() - t0
                states += sum(g.num_states for g in graphs)
                table += sum(g.next.nbytes + g.delta.nbytes for g in graphs)
            t0 = time.perf_counter()
            modified_beam_search(rt, enc, enc_lens, beam=a.beam, contexts=graphs)
            search += time.perf_counter() - t0
        k = len(cuts)
        label = "none" if n is None else f"1+{n}"
        print(f"{label}\t{1000 * build / k:.2f}\t{states / k:.0f}\t{table / k / 1024:.0f}\t{1000 * search / k:.1f}",
              flush=True)


if __name__ == "__main__":
    main()
