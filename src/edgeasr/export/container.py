"""The versioned binary container of an exported student (``docs/export_format.md`` is the spec).

    nbytes = write_container("model.edgeasr", header, {"joiner.output.weight": rec, ...},
                             blobs={"tokenizer": Path("bpe.model").read_bytes()})
    c = read_container("model.edgeasr")           # validated, or ExportFormatError
    c.header["model"], c.tensors["joiner.output.weight"].values, c.blobs["tokenizer"]

File layout (little-endian; every section start except the trailer is a multiple of 16)::

    0      48-byte preamble: magic "EDGEASR\\0", version major/minor, lengths
    48     UTF-8 JSON header (any JSON object: topology, quantization scheme, tokenizer info)
    A16    tensor directory: one variable-length entry per tensor or blob
    A16    data regions, one per entry, in directory order, each 16-byte aligned, zero padding between
    end-4  CRC-32 (zlib.crc32) of every byte before it

This module holds the layout, the records and the writer; the reader (``read_container``,
``parse_container``: every check a file goes through) is :mod:`edgeasr.export.reader`.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeasr.atomic import atomic_write_bytes

from . import codec

MAGIC = b"EDGEASR\0"
VERSION = (1, 0)  # (major, minor) written by this module; readers accept any minor of major 1
ALIGN = 16  # section/region alignment: DMA engines (Ethos-U: 16 bytes) and SIMD loads want it
MAX_NDIM = 8
MAX_NAME_BYTES = 1024
FIX = "re-export the model with `dvc repro export`"

_PREAMBLE = struct.Struct("<8sHHIQIIIIQ")  # magic, major, minor, preamble_len, file_len, json_len,
#                                          dir_len, n_entries, flags, reserved
_ENTRY = struct.Struct("<BBBBBBHIIQQ")  # kind, bits, encoding, ndim, flags, reserved, name_len,
#                                       nchan, reserved, offset, length; then ndim x u32 dims, name
_CRC = struct.Struct("<I")
assert _PREAMBLE.size == 48 and _ENTRY.size == 32

KINDS = {"blob": 0, "qweight": 1, "int8": 2, "int16": 3, "int32": 4, "float16": 5, "float32": 6}
_KIND_NAMES = {v: k for k, v in KINDS.items()}
_PLAIN_DTYPES = {"int8": "<i1", "int16": "<i2", "int32": "<i4", "float16": "<f2", "float32": "<f4"}
ENCODING_CODES = {"raw": 0, "dense": 1, "bitmap": 2, "rle": 3, "zlib": 4}
_ENCODING_NAMES = {v: k for k, v in ENCODING_CODES.items()}
FLAG_SCALE = 1  # region starts with nchan float32 scales
FLAG_FIXED_POINT = 2  # then nchan int32 multipliers, nchan int8 shifts, zero padding to 4
_SCALED_KINDS = ("qweight", "int8", "int16", "int32")  # kinds that may carry scales / multipliers


class ExportFormatError(ValueError):
    """A file is not a valid edgeasr export container (or cannot be written as one).

    The message names the file, what is wrong and what to do about it.
    """


def _align(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a


# --------------------------------------------------------------------------- records


@dataclass(eq=False)
class TensorRecord:
    """One tensor of the container.

    Attributes:
        name: unique name, e.g. ``"encoder.lstms.0.weight_ih_l0"``.
        kind: ``"qweight"`` (integer levels on the symmetric ``bits`` grid, stored with a sparse
            encoding) or a plain little-endian array kind: ``"int8" | "int16" | "int32" |
            "float16" | "float32"``.
        values: the array, shape = the tensor's shape. qweight: integer levels with
            ``|level| <= 2**(bits-1) - 1`` (pruned entries 0); read back as int8 (bits <= 8) or int16.
        bits: qweight bit width, 2..16 (required); plain kinds: ignored on write, set on read.
        scale: float32 ``(C,)`` with ``C = shape[0]`` (per output channel) or ``(1,)`` (per tensor);
            required for qweight (``w = levels * scale[:, None, ...]``), optional for integer kinds
            (e.g. an int32 bias with scale ``s_in * s_w``).
        multiplier, shift: optional int32 ``(C,)`` / int8 ``(C,)`` fixed-point requantization
            parameters (both or neither; their meaning is the header's quantization scheme).
        encoding: on write, the requested encoding (qweight: ``"auto"`` = smallest, ``"dense"``,
            ``"bitmap"``, ``"rle"``, ``"zlib"``, or a tuple of candidates = the smallest of those,
            e.g. ``("dense", "bitmap")`` for hardware that decodes only these; plain kinds:
            ``"auto"`` or ``"raw"``); on read, the one stored.
    """

    name: str
    kind: str
    values: np.ndarray
    bits: int | None = None
    scale: np.ndarray | None = None
    multiplier: np.ndarray | None = None
    shift: np.ndarray | None = None
    encoding: str | tuple[str, ...] = "auto"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.values))

    @classmethod
    def qweight(cls, name: str, levels, scale, bits: int, encoding: str | tuple[str, ...] = "auto", multiplier=None,
                shift=None) -> TensorRecord:
        return cls(name, "qweight", np.asarray(levels), int(bits), np.asarray(scale, dtype=np.float32),
                   None if multiplier is None else np.asarray(multiplier),
                   None if shift is None else np.asarray(shift), encoding)

    def dequantize(self) -> np.ndarray:
        """qweight -> float32 ``levels * scale`` (scale broadcast along dim 0); plain kinds -> float32 values."""
        v = np.asarray(self.values).astype(np.float32)
        if self.scale is None:
            return v
        s = np.asarray(self.scale, dtype=np.float32)
        return v * s.reshape(-1, *([1] * (v.ndim - 1))) if v.ndim else v * s[0]


@dataclass
class Container:
    """What :func:`read_container` returns: the JSON header, the tensors and the blobs, all validated."""

    header: dict[str, Any]
    tensors: dict[str, TensorRecord]
    blobs: dict[str, bytes]
    version: tuple[int, int] = VERSION
    nbytes: int = 0  # file size
    source: str = ""
    encodings: dict[str, str] = field(default_factory=dict)  # tensor name -> stored encoding


# --------------------------------------------------------------------------- writing


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _header_bytes(header: Mapping[str, Any]) -> bytes:
    if not isinstance(header, Mapping):
        raise ExportFormatError(f"header must be a mapping, got {type(header).__name__}")
    try:
        # sort_keys + compact separators: the same header always gives the same bytes (DVC hashes).
        text = json.dumps(dict(header), sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as e:
        raise ExportFormatError(f"header is not JSON-serializable: {e}") from None
    return text.encode("utf-8")


def _channel_array(rec: TensorRecord, attr: str, dtype: str, nchan: int) -> np.ndarray:
    a = np.asarray(getattr(rec, attr))
    if a.ndim != 1 or a.size != nchan:
        raise ExportFormatError(f"tensor {rec.name!r}: {attr} must have shape ({nchan},), got {a.shape}")
    if np.dtype(dtype).kind == "i":
        if a.dtype.kind not in "iu":
            raise ExportFormatError(f"tensor {rec.name!r}: {attr} must be integers, got dtype {a.dtype}")
        info = np.iinfo(dtype)
        if a.size and (int(a.min()) < info.min or int(a.max()) > info.max):
            raise ExportFormatError(f"tensor {rec.name!r}: {attr} values do not fit {np.dtype(dtype).name}")
    return a.astype(dtype)


def _nchan(rec: TensorRecord, shape: tuple[int, ...]) -> int:
    """Scales are per output channel (dim 0) or one per tensor."""
    s = np.asarray(rec.scale if rec.scale is not None else rec.multiplier)
    per_channel = shape[0] if shape else 1
    if s.ndim == 1 and s.size in (1, per_channel):
        return int(s.size)
    raise ExportFormatError(f"tensor {rec.name!r}: scale/multiplier must have shape ({per_channel},) or (1,), got {s.shape}")


def _prefix(rec: TensorRecord, shape: tuple[int, ...]) -> tuple[int, int, bytes]:
    """-> (flags, nchan, bytes of the region's scale / multiplier / shift prefix)."""
    has_fp = rec.multiplier is not None or rec.shift is not None
    if rec.scale is None and not has_fp:
        return 0, 0, b""
    if rec.kind not in _SCALED_KINDS:
        raise ExportFormatError(f"tensor {rec.name!r}: kind {rec.kind!r} cannot carry scales or multipliers")
    if has_fp and (rec.multiplier is None or rec.shift is None):
        raise ExportFormatError(f"tensor {rec.name!r}: multiplier and shift go together (got only one)")
    nchan = _nchan(rec, shape)
    flags, out = 0, b""
    if rec.scale is not None:
        s = np.asarray(rec.scale)
        if s.dtype.kind != "f":
            raise ExportFormatError(f"tensor {rec.name!r}: scale must be floating point, got dtype {s.dtype}")
        s = _channel_array(rec, "scale", "<f4", nchan)
        if not np.all(np.isfinite(s) & (s > 0)):
            raise ExportFormatError(f"tensor {rec.name!r}: scales must be finite and > 0")
        flags |= FLAG_SCALE
        out += s.tobytes()
    if has_fp:
        mult = _channel_array(rec, "multiplier", "<i4", nchan)
        shift = _channel_array(rec, "shift", "<i1", nchan)
        flags |= FLAG_FIXED_POINT
        fp = mult.tobytes() + shift.tobytes()
        out += fp + bytes(_align(len(fp), 4) - len(fp))
    return flags, nchan, out


def _plain_payload(rec: TensorRecord) -> bytes:
    dtype = np.dtype(_PLAIN_DTYPES[rec.kind])
    v = np.asarray(rec.values)
    if dtype.kind == "i":
        if v.dtype.kind not in "iu":
            raise ExportFormatError(f"tensor {rec.name!r}: kind {rec.kind} needs integer values, got dtype {v.dtype}")
        info = np.iinfo(dtype)
        if v.size and (int(v.min()) < info.min or int(v.max()) > info.max):
            raise ExportFormatError(f"tensor {rec.name!r}: values do not fit {rec.kind}")
    else:
        if v.dtype.kind not in "fiu":
            raise ExportFormatError(f"tensor {rec.name!r}: kind {rec.kind} needs numeric values, got dtype {v.dtype}")
        if not np.all(np.isfinite(v.astype(dtype))):
            raise ExportFormatError(f"tensor {rec.name!r}: non-finite values (or overflow in {rec.kind})")
    return np.ascontiguousarray(v, dtype=dtype).tobytes()


@dataclass
class _Entry:
    name: str
    kind: str
    bits: int
    encoding: str
    shape: tuple[int, ...]
    flags: int
    nchan: int
    region: bytes


def _encode_record(rec: TensorRecord, key: str | None = None) -> _Entry:
    if not isinstance(rec, TensorRecord):
        raise ExportFormatError(f"tensors must be TensorRecord, got {type(rec).__name__}")
    if key is not None and key != rec.name:
        raise ExportFormatError(f"tensor mapping key {key!r} differs from the record's name {rec.name!r}")
    shape = rec.shape
    if len(shape) > MAX_NDIM or any(d >= 2**32 for d in shape):
        raise ExportFormatError(f"tensor {rec.name!r}: shape {shape} has more than {MAX_NDIM} dims or a dim >= 2**32")
    if rec.kind == "qweight":
        try:
            bits = codec.check_bits(rec.bits)
            if rec.scale is None:
                raise ValueError("a qweight needs its per-channel scale")
            encoding, payload = codec.encode_levels(rec.values, bits, rec.encoding)
        except ValueError as e:
            raise ExportFormatError(f"tensor {rec.name!r}: {e}") from None
    elif rec.kind in _PLAIN_DTYPES:
        if not isinstance(rec.encoding, str) or rec.encoding not in ("auto", "raw"):
            raise ExportFormatError(f"tensor {rec.name!r}: kind {rec.kind} is stored 'raw', not {rec.encoding!r}")
        bits, encoding, payload = np.dtype(_PLAIN_DTYPES[rec.kind]).itemsize * 8, "raw", _plain_payload(rec)
    else:
        kinds = [k for k in KINDS if k != "blob"]
        raise ExportFormatError(f"tensor {rec.name!r}: unknown kind {rec.kind!r}; one of {kinds}")
    flags, nchan, prefix = _prefix(rec, shape)
    return _Entry(rec.name, rec.kind, bits, encoding, shape, flags, nchan, prefix + payload)


def _check_name(name: str) -> bytes:
    if not isinstance(name, str) or not name:
        raise ExportFormatError(f"names must be non-empty strings, got {name!r}")
    b = name.encode("utf-8")
    if len(b) > MAX_NAME_BYTES:
        raise ExportFormatError(f"name {name[:40]!r}... is longer than {MAX_NAME_BYTES} UTF-8 bytes")
    return b


def _records(tensors: Mapping[str, TensorRecord] | Iterable[TensorRecord]) -> list[_Entry]:
    if isinstance(tensors, Mapping):
        return [_encode_record(r, k) for k, r in tensors.items()]
    return [_encode_record(r) for r in tensors]


def build_container(header: Mapping[str, Any], tensors: Mapping[str, TensorRecord] | Iterable[TensorRecord],
                    blobs: Mapping[str, bytes] | None = None) -> bytes:
    """The complete file as bytes (what :func:`write_container` writes). Deterministic."""
    entries = _records(tensors)
    for name, data in (blobs or {}).items():
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ExportFormatError(f"blob {name!r} must be bytes, got {type(data).__name__}")
        data = bytes(data)
        # A blob is stored deflated when that is smaller (the default sentencepiece model, 243 KB,
        # is mostly its normalization charsmap and deflates to 58 %); the shape is the raw length.
        packed = codec.deflate(data)
        enc, region = ("zlib", packed) if len(packed) < len(data) else ("raw", data)
        entries.append(_Entry(name, "blob", 8, enc, (len(data),), 0, 0, region))
    seen: set[str] = set()
    for e in entries:
        _check_name(e.name)
        if e.name in seen:
            raise ExportFormatError(f"duplicate name {e.name!r} (tensors and blobs share one namespace)")
        seen.add(e.name)

    hjson = _header_bytes(header)
    dir_off = _align(_PREAMBLE.size + len(hjson))
    dir_len = sum(_ENTRY.size + 4 * len(e.shape) + len(e.name.encode("utf-8")) for e in entries)
    pos = dir_off + dir_len
    offsets = []
    for e in entries:
        pos = _align(pos)
        offsets.append(pos)
        pos += len(e.region)
    file_len = pos + _CRC.size

    buf = bytearray(file_len)  # zero-filled: every padding byte is 0
    buf[: _PREAMBLE.size] = _PREAMBLE.pack(MAGIC, VERSION[0], VERSION[1], _PREAMBLE.size, file_len, len(hjson),
                                           dir_len, len(entries), 0, 0)
    buf[_PREAMBLE.size : _PREAMBLE.size + len(hjson)] = hjson
    p = dir_off
    for e, off in zip(entries, offsets):
        name = e.name.encode("utf-8")
        rec = _ENTRY.pack(KINDS[e.kind], e.bits, ENCODING_CODES[e.encoding], len(e.shape), e.flags, 0, len(name),
                          e.nchan, 0, off, len(e.region))
        rec += struct.pack(f"<{len(e.shape)}I", *e.shape) + name
        buf[p : p + len(rec)] = rec
        p += len(rec)
        buf[off : off + len(e.region)] = e.region
    buf[-4:] = _CRC.pack(zlib.crc32(memoryview(buf)[:-4]))
    return bytes(buf)


def write_container(path: str | os.PathLike, header: Mapping[str, Any],
                    tensors: Mapping[str, TensorRecord] | Iterable[TensorRecord],
                    blobs: Mapping[str, bytes] | None = None) -> int:
    """Write the container atomically (temp file + rename) and return its size in bytes.

    That size is the model's ``size_bytes``. Invalid input (levels off the grid, missing scales,
    duplicate names, non-finite floats, ...) raises :class:`ExportFormatError` before anything is written.
    """
    data = build_container(header, tensors, blobs)
    atomic_write_bytes(path, data)  # temp file, fsync, rename: never a partial container
    return len(data)


def record_nbytes(rec: TensorRecord) -> int:
    """Bytes of ``rec``'s data region: scales ``4C`` + multiplier/shift ``align4(5C)`` + the encoded payload.

    The file spends this plus its directory entry (``32 + 4*ndim + len(name)``) plus < 16 bytes of
    alignment padding on the tensor.
    """
    return len(_encode_record(rec).region)


def container_nbytes(header: Mapping[str, Any], tensors, blobs: Mapping[str, bytes] | None = None) -> int:
    """The exact file size :func:`write_container` would produce (builds the file in memory)."""
    return len(build_container(header, tensors, blobs))

