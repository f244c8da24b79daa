"""Encodings of quantized weight levels (``qweight`` tensors): dense, bitmap, rle, zlib, and auto.

A quantized weight is ``n`` signed integer levels on the symmetric grid of ``bits`` b:
``|level| <= qmax = 2**(b-1) - 1`` (:func:`edgeasr.quantspec.levels.weight_levels`), pruned entries
exactly 0, in row-major (C) order of the tensor's shape. Byte layouts (all little-endian, packed
streams as in :mod:`.bitpack`; ``docs/export_format.md`` is the normative spec):

``dense``  ``ceil(n*b/8)`` bytes: every level as a b-bit two's-complement code. The code
           ``-2**(b-1)`` is off the symmetric grid and rejected.
``bitmap`` ``ceil(n/8)`` bytes of mask (bit i = level i is non-zero), then ``ceil(nnz*b/8)``
           bytes: the non-zero levels in order, b-bit two's complement. Size = the emulator's
           ``weight_bytes(..., "bitmap")`` minus the scales, exactly.
``rle``    zero-run coding for high sparsity. 8-byte head ``u8 r (1..8), 3 x u8 0, u32 K``, then
           K run codes of r bits, then the non-zero levels at b bits. With ``M = 2**r - 1``: code
           ``c < M`` = "c zeros, then the next non-zero level"; code ``M`` = "M zeros, no level".
           Trailing zeros after the last non-zero level are escapes plus an implicit remainder
           ``< M``. r is chosen per tensor to minimise the size.
``zlib``   entropy coding: ``u32 L``, then a raw DEFLATE stream (RFC 1951) of the bitmap's mask
           bytes (L bytes), then a raw DEFLATE stream of the non-zero levels as int8 (b <= 8) or
           int16 LE (b > 8). Written Huffman-only (``Z_HUFFMAN_ONLY``): within ~0.03 bit/weight
           of the zeroth-order entropy on pruned int8 matrices and ~5 ms per 1 M weights.
           Any valid DEFLATE stream decodes.
``auto``   the smallest of the candidates for this tensor (ties: the earlier one in ``ENCODINGS``,
           i.e. the cheaper one to decode).

Why the run lengths are at most 8 bits and trailing zeros are explicit: a decoder never expands a
payload by more than 255x (and DEFLATE by ~1032x), so a bogus shape in a file cannot make the
reader allocate gigabytes before it notices the payload is too short.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from edgeasr.quantspec import MAX_WEIGHT_BITS, MIN_WEIGHT_BITS, check_weight_bits, qmax

from .bitpack import BitstreamError, from_twos_complement, pack_bits, packed_nbytes, to_twos_complement, unpack_bits

ENCODINGS = ("dense", "bitmap", "rle", "zlib")  # qweight encodings, in auto's tie-break order
MIN_BITS, MAX_BITS = MIN_WEIGHT_BITS, MAX_WEIGHT_BITS  # qweight bit widths: the spec's weight widths
RLE_MAX_RUN_BITS = 8
_RLE_HEAD = 8
_ZLIB_HEAD = 4


class CodecError(ValueError):
    """A payload does not decode to what its directory entry declares (the container adds the file name)."""


def check_bits(bits: int) -> int:
    return check_weight_bits(bits, "qweight bits")


def level_dtype(bits: int) -> np.dtype:
    """dtype of decoded levels: the narrowest signed integer holding the grid (int8 up to 8 bits, else int16)."""
    return np.dtype(np.int8) if bits <= 8 else np.dtype(np.int16)


def check_levels(levels, bits: int) -> np.ndarray:
    """Writer-side validation -> the levels flattened (row-major) as int32.

    ``levels`` may be any integer array (numpy, or a CPU torch tensor) with ``|level| <= qmax(bits)``.
    """
    bits = check_bits(bits)
    a = np.asarray(levels)
    if a.dtype.kind not in "iu":
        raise ValueError(f"qweight levels must be integers (use edgeasr.quantspec.levels.weight_levels), got dtype {a.dtype}")
    flat = a.reshape(-1).astype(np.int32)
    if flat.size:
        lo, hi = int(flat.min()), int(flat.max())
        if max(-lo, hi) > qmax(bits):
            raise ValueError(f"levels [{lo}, {hi}] are outside the symmetric {bits}-bit grid [-{qmax(bits)}, {qmax(bits)}]")
    return flat


# --------------------------------------------------------------------------- sizes


def _rle_runs(flat: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """-> (gaps: zeros before each non-zero (nnz,), trailing zeros, positions of the non-zeros)."""
    pos = np.flatnonzero(flat)
    gaps = np.diff(pos, prepend=-1) - 1
    tail = int(flat.size - 1 - pos[-1]) if pos.size else int(flat.size)
    return gaps, tail, pos


def _rle_codes_count(gaps: np.ndarray, tail: int, r: int) -> int:
    m = (1 << r) - 1
    return int(gaps.size + (gaps // m).sum() + tail // m)


def _rle_best(flat: np.ndarray, bits: int) -> tuple[int, int, int]:
    """-> (run bits r, number of codes K, payload bytes) minimising the rle size."""
    gaps, tail, _ = _rle_runs(flat)
    vals = packed_nbytes(gaps.size, bits)
    best = None
    for r in range(1, RLE_MAX_RUN_BITS + 1):
        k = _rle_codes_count(gaps, tail, r)
        size = _RLE_HEAD + packed_nbytes(k, r) + vals
        if best is None or size < best[2]:
            best = (r, k, size)
    return best


def _analytic_nbytes(flat: np.ndarray, bits: int, encoding: str) -> int:
    n = flat.size
    if encoding == "dense":
        return packed_nbytes(n, bits)
    if encoding == "bitmap":
        return packed_nbytes(n, 1) + packed_nbytes(int(np.count_nonzero(flat)), bits)
    if encoding == "rle":
        return _rle_best(flat, bits)[2]
    raise AssertionError(encoding)


def _split(encoding: str | Sequence[str], candidates: Sequence[str] | None) -> tuple[str, Sequence[str] | None]:
    """A tuple/list encoding means "the smallest of these": ``("dense", "bitmap")`` for an NPU that
    decodes only those (``auto`` alone may pick ``zlib``)."""
    if isinstance(encoding, (tuple, list)):
        return "auto", tuple(encoding)
    return encoding, candidates


def _resolve(encoding: str, candidates: Sequence[str] | None) -> tuple[str, ...]:
    if encoding == "auto":
        cands = tuple(candidates) if candidates is not None else ENCODINGS
        bad = [c for c in cands if c not in ENCODINGS]
        if bad or not cands:
            raise ValueError(f"auto candidates must be a non-empty subset of {ENCODINGS}, got {cands!r}")
        return cands
    if encoding not in ENCODINGS:
        raise ValueError(f"qweight encoding must be one of {ENCODINGS + ('auto',)}, got {encoding!r}")
    return (encoding,)


def choose_encoding(levels, bits: int, candidates: Sequence[str] | None = None) -> tuple[str, int]:
    """-> (the smallest encoding among ``candidates`` (default all), its payload bytes) for these levels."""
    flat = check_levels(levels, bits)
    best: tuple[str, int] | None = None
    for enc in _resolve("auto", candidates):
        size = len(_encode_zlib(flat, bits)) if enc == "zlib" else _analytic_nbytes(flat, bits, enc)
        if best is None or size < best[1]:
            best = (enc, size)
    return best


def encoded_nbytes(levels, bits: int, encoding: str | Sequence[str] = "auto",
                   candidates: Sequence[str] | None = None) -> int:
    """Payload bytes of ``levels`` (any shape) at ``bits`` in ``encoding``, without writing anything.

    Exactly ``len(encode_levels(levels, bits, encoding)[1])``: the figure the container spends on
    the levels. A tensor's data region adds its scales (4 bytes per channel) and, if present,
    multipliers and shifts (5 bytes per channel, padded to 4): see ``container.record_nbytes``.
    ``dense`` and ``bitmap`` are computed analytically (no packing), ``rle`` from the run lengths,
    ``zlib`` by compressing (a few ms per 1 M weights). ``encoding`` may be a tuple of candidates.
    """
    encoding, candidates = _split(encoding, candidates)
    if encoding == "auto":
        return choose_encoding(levels, bits, candidates)[1]
    flat = check_levels(levels, bits)
    _resolve(encoding, None)
    return len(_encode_zlib(flat, bits)) if encoding == "zlib" else _analytic_nbytes(flat, bits, encoding)


# --------------------------------------------------------------------------- encode


def _values_bytes(nonzero: np.ndarray, bits: int) -> bytes:
    return nonzero.astype("<i1" if bits <= 8 else "<i2").tobytes()


def deflate(data: bytes, huffman_only: bool = False) -> bytes:
    """Raw DEFLATE (wbits=-15): the file's CRC-32 already guards integrity, so zlib's 6-byte
    header/Adler-32 would be pure overhead. ``huffman_only`` for weights: LZ77 matching costs 10-100x
    the time and gains nothing on near-i.i.d. quantized levels (measured: benchmarks/export_size.py)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_HUFFMAN_ONLY if huffman_only else zlib.Z_DEFAULT_STRATEGY)
    return c.compress(data) + c.flush()


def _encode_zlib(flat: np.ndarray, bits: int) -> bytes:
    nz = flat != 0
    mask = deflate(np.packbits(nz, bitorder="little").tobytes(), huffman_only=True)
    vals = deflate(_values_bytes(flat[nz], bits), huffman_only=True)
    return len(mask).to_bytes(4, "little") + mask + vals


def _encode_rle(flat: np.ndarray, bits: int) -> bytes:
    r, k, _ = _rle_best(flat, bits)
    m = (1 << r) - 1
    gaps, _, pos = _rle_runs(flat)
    codes = np.full(k, m, dtype=np.uint16)  # escapes everywhere, then the terminal codes
    if gaps.size:
        per_nz = gaps // m + 1  # escapes + 1 terminal code per non-zero level
        codes[np.cumsum(per_nz) - 1] = gaps % m
    head = bytes([r, 0, 0, 0]) + int(k).to_bytes(4, "little")
    return head + pack_bits(codes, r) + pack_bits(to_twos_complement(flat[pos], bits), bits)


def encode_levels(levels, bits: int, encoding: str | Sequence[str] = "auto",
                  candidates: Sequence[str] | None = None) -> tuple[str, bytes]:
    """-> (encoding actually used, payload bytes) for integer ``levels`` (any shape, row-major).

    ``encoding``: one of ``ENCODINGS``, ``"auto"`` (smallest of ``candidates``, default all) or a
    tuple of candidates."""
    encoding, candidates = _split(encoding, candidates)
    flat = check_levels(levels, bits)
    if encoding == "auto":
        encoding = choose_encoding(flat, bits, candidates)[0]
    else:
        _resolve(encoding, None)
    if encoding == "dense":
        return encoding, pack_bits(to_twos_complement(flat, bits), bits)
    if encoding == "bitmap":
        nz = flat != 0
        return encoding, np.packbits(nz, bitorder="little").tobytes() + pack_bits(to_twos_complement(flat[nz], bits), bits)
    if encoding == "rle":
        return encoding, _encode_rle(flat, bits)
    return encoding, _encode_zlib(flat, bits)


# --------------------------------------------------------------------------- decode


def _check_grid(vals: np.ndarray, bits: int, nonzero: bool) -> None:
    if vals.size == 0:
        return
    lo, hi = int(vals.min()), int(vals.max())
    if max(-lo, hi) > qmax(bits):
        raise CodecError(f"levels [{lo}, {hi}] are outside the symmetric {bits}-bit grid [-{qmax(bits)}, {qmax(bits)}]")
    if nonzero and not np.all(vals):
        raise CodecError("a zero level in the stream of non-zero levels")


def _take(payload: memoryview, start: int, size: int, what: str) -> memoryview:
    if start + size > len(payload):
        raise CodecError(f"{what} needs bytes [{start}, {start + size}) but the payload has {len(payload)}")
    return payload[start : start + size]


def inflate(data: memoryview, expected: int, what: str) -> bytes:
    """Raw DEFLATE stream -> exactly ``expected`` bytes, else CodecError."""
    d = zlib.decompressobj(-15)
    try:
        # max_length bounds the output (one extra byte reveals a stream longer than declared), and
        # CPython grows the buffer as it goes: a bogus `expected` never triggers a huge allocation.
        out = d.decompress(bytes(data), expected + 1)
    except zlib.error as e:
        raise CodecError(f"{what}: invalid DEFLATE stream ({e})") from None
    if len(out) != expected or not d.eof or d.unused_data or d.unconsumed_tail:
        raise CodecError(f"{what}: DEFLATE stream does not decode to exactly {expected} bytes")
    return out


def _unpack(buf: memoryview, count: int, bits: int, what: str) -> np.ndarray:
    try:
        return unpack_bits(buf, count, bits)
    except BitstreamError as e:
        raise CodecError(f"{what}: {e}") from None


def _scatter(n: int, mask: np.ndarray, vals: np.ndarray, bits: int) -> np.ndarray:
    out = np.zeros(n, dtype=level_dtype(bits))
    out[mask] = vals
    return out


def decode_levels(payload: bytes | memoryview, n: int, bits: int, encoding: str) -> np.ndarray:
    """Payload -> ``(n,)`` levels (int8 for bits <= 8, else int16), validated.

    Raises :class:`CodecError` unless the payload is exactly what ``encode_levels`` would produce
    for some ``n`` levels on the ``bits`` grid: exact length, zero padding bits, in-range levels,
    no zeros among the "non-zero" levels, run lengths adding up to ``n``. Every length is checked
    against the payload before anything proportional to ``n`` is allocated.
    """
    bits = check_bits(bits)
    p = memoryview(payload).cast("B")
    if encoding == "dense":
        if len(p) != packed_nbytes(n, bits):
            raise CodecError(f"dense payload of {n} x {bits}-bit levels needs {packed_nbytes(n, bits)} bytes, has {len(p)}")
        levels = from_twos_complement(_unpack(p, n, bits, "dense levels"), bits)
        _check_grid(levels, bits, nonzero=False)
        return levels.astype(level_dtype(bits))

    if encoding == "bitmap":
        mbytes = packed_nbytes(n, 1)
        mask = _unpack(_take(p, 0, mbytes, "bitmap mask"), n, 1, "bitmap mask").astype(bool)
        nnz = int(np.count_nonzero(mask))
        vbytes = packed_nbytes(nnz, bits)
        if len(p) != mbytes + vbytes:
            raise CodecError(f"bitmap payload with {nnz} non-zeros of {n} needs {mbytes + vbytes} bytes, has {len(p)}")
        vals = from_twos_complement(_unpack(p[mbytes:], nnz, bits, "bitmap values"), bits)
        _check_grid(vals, bits, nonzero=True)
        return _scatter(n, mask, vals, bits)

    if encoding == "rle":
        head = _take(p, 0, _RLE_HEAD, "rle head")
        r, k = head[0], int.from_bytes(head[4:8], "little")
        if not 1 <= r <= RLE_MAX_RUN_BITS or any(head[1:4]):
            raise CodecError(f"rle head has run bits {r} (must be 1..{RLE_MAX_RUN_BITS}) or non-zero reserved bytes")
        m = (1 << r) - 1
        cbytes = packed_nbytes(k, r)
        codes = _unpack(_take(p, _RLE_HEAD, cbytes, "rle run codes"), k, r, "rle run codes").astype(np.int64)
        terminal = codes < m
        covered = int(np.where(terminal, codes + 1, m).sum())  # positions described by the codes
        if not 0 <= n - covered < m:
            raise CodecError(f"rle run codes cover {covered} positions, inconsistent with {n} levels")
        nnz = int(np.count_nonzero(terminal))
        vstart = _RLE_HEAD + cbytes
        if len(p) != vstart + packed_nbytes(nnz, bits):
            need = vstart + packed_nbytes(nnz, bits)
            raise CodecError(f"rle payload with {k} codes and {nnz} non-zeros needs {need} bytes, has {len(p)}")
        vals = from_twos_complement(_unpack(p[vstart:], nnz, bits, "rle values"), bits)
        _check_grid(vals, bits, nonzero=True)
        ends = np.cumsum(np.where(terminal, codes + 1, m))
        mask = np.zeros(n, dtype=bool)
        mask[ends[terminal] - 1] = True
        return _scatter(n, mask, vals, bits)

    if encoding == "zlib":
        mlen = int.from_bytes(_take(p, 0, _ZLIB_HEAD, "zlib head"), "little")
        mbytes = packed_nbytes(n, 1)
        mraw = inflate(_take(p, _ZLIB_HEAD, mlen, "zlib mask stream"), mbytes, "zlib mask stream")
        mask = _unpack(memoryview(mraw), n, 1, "zlib mask").astype(bool)
        nnz = int(np.count_nonzero(mask))
        itemsize = 1 if bits <= 8 else 2
        vraw = inflate(p[_ZLIB_HEAD + mlen :], nnz * itemsize, "zlib values stream")
        vals = np.frombuffer(vraw, dtype="<i1" if itemsize == 1 else "<i2").astype(np.int32)
        _check_grid(vals, bits, nonzero=True)
        return _scatter(n, mask, vals, bits)

    raise CodecError(f"unknown qweight encoding {encoding!r}")
