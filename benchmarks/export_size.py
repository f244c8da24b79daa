"""Bits per weight of each export encoding, and encode/decode throughput.

A 1280x320 Gaussian weight matrix (the shape NOTES §10 measured with Arm's codec), magnitude-pruned
to each sparsity, quantized symmetric per output channel (1280 float32 scales) at int8 and int4.
Prints the payload bits/weight of each encoding, the same with the scales, the zeroth-order entropy
of the levels (the bound for a per-symbol entropy coder), what ``auto`` picks; then the time to
encode and decode 1 M weights per encoding.

Usage: python benchmarks/export_size.py [--rows 1280] [--cols 320] [--repeats 3]
NOTES §10 reference (int8, Arm): dense 7.6 (mlw) / 8.9 (bitmap+values incl. scales); 50 % sparse:
bitmap+values 5.0, mlw 4.9, entropy 4.6; 90 % sparse: 1.8 / 1.3 / 1.2.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgeasr.export import ENCODINGS, choose_encoding, decode_levels, encode_levels, encoded_nbytes


def quantized(w: np.ndarray, bits: int, sparsity: float) -> np.ndarray:
    """Magnitude-prune then quantize like edgeasr.quantspec.levels.weight_levels (per row, symmetric)."""
    x = w.copy()
    if sparsity:
        x[np.abs(x) < np.quantile(np.abs(x), sparsity)] = 0
    qm = 2 ** (bits - 1) - 1
    s = np.maximum(np.abs(x).max(axis=1, keepdims=True) / qm, 1e-12)
    return np.clip(np.round(x / s), -qm, qm).astype(np.int32)


def entropy_bits(q: np.ndarray) -> float:
    _, counts = np.unique(q, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1280)
    ap.add_argument("--cols", type=int, default=320)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    w = rng.standard_normal((args.rows, args.cols)).astype(np.float32)
    n = w.size
    scale_bits = 32 * args.rows / n

    print(f"bits/weight, {args.rows}x{args.cols} matrix; payload only (+{scale_bits:.3f} for float32 scales)")
    head = f"{'bits':>4} {'sparsity':>8} " + " ".join(f"{e:>7}" for e in ENCODINGS) + f" {'entropy':>7}  auto (incl. scales)"
    print(head)
    print("-" * len(head))
    for bits in (8, 4):
        for sp in (0.0, 0.5, 0.7, 0.9):
            q = quantized(w, bits, sp)
            bpw = [encoded_nbytes(q, bits, e) * 8 / n for e in ENCODINGS]
            enc, nbytes = choose_encoding(q, bits)
            print(f"{bits:>4} {sp:>8.1f} " + " ".join(f"{b:>7.3f}" for b in bpw)
                  + f" {entropy_bits(q):>7.3f}  {enc} {nbytes * 8 / n + scale_bits:.3f}")

    print("\nthroughput, 1 M weights, int8, 50 % sparse (best of repeats)")
    q = quantized(rng.standard_normal((1000, 1000)).astype(np.float32), 8, 0.5)
    print(f"{'encoding':>8} {'encode ms':>10} {'decode ms':>10} {'enc Mw/s':>9} {'dec Mw/s':>9}")
    for enc in ENCODINGS:
        te = td = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            _, payload = encode_levels(q, 8, enc)
            t1 = time.perf_counter()
            back = decode_levels(payload, q.size, 8, enc)
            t2 = time.perf_counter()
            te, td = min(te, t1 - t0), min(td, t2 - t1)
        assert np.array_equal(back.reshape(q.shape), q)
        print(f"{enc:>8} {te * 1e3:>10.1f} {td * 1e3:>10.1f} {q.size / te / 1e6:>9.1f} {q.size / td / 1e6:>9.1f}")


if __name__ == "__main__":
    main()
