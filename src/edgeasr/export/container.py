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

The reader is pure numpy + stdlib. It checks, in this order: magic (with a hint for common foreign
files), version (a newer major is refused with an upgrade message), declared vs actual file length
(truncation), the CRC (any corruption), then the structure (lengths, bounds, canonical offsets,
kinds, bit widths, shapes against decoded sizes, level ranges). Every failure is an
:class:`ExportFormatError` naming the file, the problem and the fix. The structural checks matter
for files whose CRC is right but whose content is not (a buggy or hostile writer): they make sure
nothing is read out of bounds, nothing huge is allocated from a bogus length, and nothing decodes
to silently wrong data.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
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


# --------------------------------------------------------------------------- reading

_FOREIGN = (
    (b"RIFF", "a RIFF file (WAV audio?)"),
    (b"PK\x03\x04", "a zip archive (a PyTorch .pt/.ckpt checkpoint?)"),
    (b"\x80", "a Python pickle (a legacy torch.save file?)"),
    (b"\x93NUMPY", "a numpy .npy file"),
    (b"\x89HDF", "an HDF5 file"),
    (b"fLaC", "a FLAC audio file"),
    (b"OggS", "an Ogg file"),
    (b"ID3", "an MP3 file"),
    (b"{", "a JSON/text file"),
)


def _what_is(data: bytes) -> str:
    if len(data) >= 8 and data[4:8] == b"TFL3":
        return "a TFLite flatbuffer"
    for magic, what in _FOREIGN:
        if data.startswith(magic):
            return what
    return f"unknown content starting with {bytes(data[:8])!r}"


class _Reader:
    """Parses one container held in memory; every problem becomes ExportFormatError(source: ...)."""

    def __init__(self, data: bytes, source: str):
        self.data, self.mv, self.source = data, memoryview(data), source

    def fail(self, what: str, fix: str = FIX):
        raise ExportFormatError(f"{self.source}: {what}; {fix}")

    def parse(self) -> Container:
        d = self.data
        if not d:
            self.fail("the file is empty, not an edgeasr export container",
                      "pass the file written by the export stage, or " + FIX)
        if not d.startswith(MAGIC):
            if MAGIC.startswith(bytes(d[:8])):
                self.fail(f"the file is truncated ({len(d)} bytes, shorter than the 8-byte magic)")
            self.fail(f"not an edgeasr export container: {_what_is(d)}, expected magic {MAGIC!r}",
                      "pass the file written by the export stage (`dvc repro export`)")
        if len(d) < 12:
            self.fail(f"the file is truncated ({len(d)} bytes): it ends inside the version field")
        major, minor = struct.unpack_from("<HH", d, 8)
        if major > VERSION[0]:
            self.fail(f"written with export format v{major}.{minor}, newer than this reader (v{VERSION[0]}.x)",
                      "upgrade edgeasr to read it, or " + FIX + " with this version")
        if major < VERSION[0]:
            self.fail(f"export format v{major}.{minor} is older than this reader supports (v{VERSION[0]}.x)", FIX)
        if len(d) < _PREAMBLE.size + _CRC.size:
            self.fail(f"the file is truncated ({len(d)} bytes, shorter than the {_PREAMBLE.size}-byte preamble + checksum)")
        (_, _, _, pre_len, file_len, json_len, dir_len, n_entries, flags, _) = _PREAMBLE.unpack_from(d, 0)
        if file_len != len(d):
            if file_len > len(d):
                self.fail(f"the file is truncated: the header declares {file_len} bytes, the file has {len(d)}")
            self.fail(f"the file has {len(d) - file_len} unexpected bytes after the declared end ({file_len} bytes)")
        stored = _CRC.unpack_from(d, len(d) - 4)[0]
        actual = zlib.crc32(self.mv[:-4])
        if stored != actual:
            self.fail(f"checksum mismatch (stored CRC-32 0x{stored:08x}, computed 0x{actual:08x}): the file is corrupted")
        # ---- from here on the bytes are what the writer wrote: check the writer's structure
        if flags:
            self.fail(f"uses format features this reader does not know (flags 0x{flags:08x})",
                      "upgrade edgeasr to read it, or " + FIX + " with this version")
        end = len(d) - _CRC.size  # everything below lies in [0, end)
        if pre_len < _PREAMBLE.size or pre_len % ALIGN or pre_len > end:
            self.fail(f"malformed preamble: length {pre_len} "
                      f"(must be >= {_PREAMBLE.size}, a multiple of {ALIGN}, inside the file)")
        if pre_len + json_len > end:
            self.fail(f"malformed: the JSON header [{pre_len}, {pre_len + json_len}) runs past the data end {end}")
        header = self._json(pre_len, json_len)
        dir_off = _align(pre_len + json_len)
        if dir_off + dir_len > end:
            self.fail(f"malformed: the directory [{dir_off}, {dir_off + dir_len}) runs past the data end {end}")
        if n_entries > dir_len // _ENTRY.size:
            self.fail(f"malformed: {n_entries} directory entries cannot fit in {dir_len} bytes")
        self._zeros(pre_len + json_len, dir_off)
        entries = self._directory(dir_off, dir_len, n_entries, end)

        tensors: dict[str, TensorRecord] = {}
        blobs: dict[str, bytes] = {}
        encodings: dict[str, str] = {}
        for e in entries:
            if e["kind"] == "blob":
                blobs[e["name"]] = self._blob(e)
            else:
                tensors[e["name"]] = self._tensor(e)
                encodings[e["name"]] = e["encoding"]
        return Container(header, tensors, blobs, (major, minor), len(d), self.source, encodings)

    def _zeros(self, start: int, stop: int) -> None:
        if any(self.mv[start:stop]):
            self.fail(f"malformed: non-zero padding bytes in [{start}, {stop})")

    def _json(self, off: int, n: int) -> dict[str, Any]:
        try:
            header = json.loads(self.mv[off : off + n].tobytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            self.fail(f"malformed JSON header ({type(e).__name__}: {str(e)[:200]})")
        if not isinstance(header, dict):
            self.fail(f"malformed JSON header: a {type(header).__name__}, not an object")
        return header

    def _directory(self, pos: int, dir_len: int, n_entries: int, end: int) -> list[dict[str, Any]]:
        d, stop = self.data, pos + dir_len
        entries, names = [], set()
        prev_end = stop  # the first region starts at align16(directory end)
        for i in range(n_entries):
            if pos + _ENTRY.size > stop:
                self.fail(f"malformed directory: entry {i} runs past the directory end")
            (kind_c, bits, enc_c, ndim, flags, _, name_len, nchan, _, offset, length) = _ENTRY.unpack_from(d, pos)
            pos += _ENTRY.size
            where = f"directory entry {i}"
            if ndim > MAX_NDIM:
                self.fail(f"malformed {where}: ndim {ndim} > {MAX_NDIM}")
            if pos + 4 * ndim + name_len > stop:
                self.fail(f"malformed {where}: its shape and name run past the directory end")
            shape = struct.unpack_from(f"<{ndim}I", d, pos)
            pos += 4 * ndim
            try:
                name = self.mv[pos : pos + name_len].tobytes().decode("utf-8")
            except UnicodeDecodeError:
                self.fail(f"malformed {where}: its name is not UTF-8")
            pos += name_len
            if not name or name in names:
                self.fail(f"malformed {where}: empty or duplicate name {name!r}")
            names.add(name)
            where = f"entry {name!r}"
            kind = _KIND_NAMES.get(kind_c)
            encoding = _ENCODING_NAMES.get(enc_c)
            if kind is None or encoding is None:
                self.fail(f"malformed {where}: unknown kind code {kind_c} or encoding code {enc_c}")
            if kind == "qweight":
                if encoding not in codec.ENCODINGS:
                    self.fail(f"malformed {where}: qweight with encoding {encoding!r}")
                if not codec.MIN_BITS <= bits <= codec.MAX_BITS:
                    self.fail(f"malformed {where}: qweight bits {bits} outside {codec.MIN_BITS}..{codec.MAX_BITS}")
            else:
                want = 8 if kind == "blob" else np.dtype(_PLAIN_DTYPES[kind]).itemsize * 8
                encodings = ("raw", "zlib") if kind == "blob" else ("raw",)
                if encoding not in encodings or bits != want:
                    self.fail(f"malformed {where}: kind {kind} must be {' or '.join(encodings)} with {want} bits, "
                              f"got {encoding!r}, {bits}")
                if kind == "blob" and ndim != 1:
                    self.fail(f"malformed {where}: a blob must be 1-D, got ndim {ndim}")
            if flags & ~(FLAG_SCALE | FLAG_FIXED_POINT):
                self.fail(f"malformed {where}: unknown flags 0x{flags:02x}")
            if flags and kind not in _SCALED_KINDS:
                self.fail(f"malformed {where}: kind {kind} cannot carry scales or multipliers")
            if kind == "qweight" and not flags & FLAG_SCALE:
                self.fail(f"malformed {where}: a qweight without scales")
            per_channel = shape[0] if ndim else 1
            if (flags and nchan not in (1, per_channel)) or (not flags and nchan):
                self.fail(f"malformed {where}: {nchan} channel parameters for shape {tuple(shape)}")
            # canonical layout: regions in directory order, each at the next 16-byte boundary
            if offset != _align(prev_end) or offset + length > end:
                self.fail(f"malformed {where}: region [{offset}, {offset + length}) is out of place "
                          f"(expected to start at {_align(prev_end)} and end by {end})")
            self._zeros(prev_end, offset)
            prev_end = offset + length
            entries.append(dict(name=name, kind=kind, bits=bits, encoding=encoding, shape=tuple(shape),
                                flags=flags, nchan=nchan, offset=offset, length=length))
        if pos != stop:
            self.fail(f"malformed directory: {n_entries} entries use {dir_len - (stop - pos)} of its {dir_len} bytes")
        if prev_end != end:
            self.fail(f"malformed: {end - prev_end} bytes between the last region and the checksum")
        return entries

    def _blob(self, e: dict[str, Any]) -> bytes:
        region = self.mv[e["offset"] : e["offset"] + e["length"]]
        (n,) = e["shape"]
        if e["encoding"] == "raw":
            if len(region) != n:
                self.fail(f"malformed blob {e['name']!r}: declares {n} bytes, its region has {len(region)}")
            return bytes(region)
        try:
            return codec.inflate(region, n, "DEFLATE stream")
        except codec.CodecError as err:
            self.fail(f"malformed blob {e['name']!r}: {err}")

    def _tensor(self, e: dict[str, Any]) -> TensorRecord:
        name, kind, shape, nchan, flags = e["name"], e["kind"], e["shape"], e["nchan"], e["flags"]
        region = self.mv[e["offset"] : e["offset"] + e["length"]]
        n = math.prod(shape)
        pos = 0
        scale = multiplier = shift = None

        def take(nbytes: int, what: str) -> memoryview:
            nonlocal pos
            if pos + nbytes > len(region):
                self.fail(f"malformed tensor {name!r}: its {what} needs {pos + nbytes} bytes, the region has {len(region)}")
            out = region[pos : pos + nbytes]
            pos += nbytes
            return out

        if flags & FLAG_SCALE:
            scale = np.frombuffer(take(4 * nchan, "scales"), dtype="<f4").astype(np.float32)
            if not np.all(np.isfinite(scale) & (scale > 0)):
                self.fail(f"malformed tensor {name!r}: scales are not all finite and > 0")
        if flags & FLAG_FIXED_POINT:
            multiplier = np.frombuffer(take(4 * nchan, "multipliers"), dtype="<i4").astype(np.int32)
            shift = np.frombuffer(take(nchan, "shifts"), dtype="<i1").astype(np.int8)
            if any(take(_align(5 * nchan, 4) - 5 * nchan, "padding")):
                self.fail(f"malformed tensor {name!r}: non-zero padding after the shifts")
        payload = region[pos:]
        if kind == "qweight":
            try:
                levels = codec.decode_levels(payload, n, e["bits"], e["encoding"])
            except codec.CodecError as err:
                self.fail(f"malformed tensor {name!r} ({e['encoding']}, {e['bits']} bits, shape {shape}): {err}")
            values = levels.reshape(shape)
        else:
            dtype = np.dtype(_PLAIN_DTYPES[kind])
            if len(payload) != n * dtype.itemsize:
                self.fail(f"malformed tensor {name!r}: {kind} shape {shape} needs {n * dtype.itemsize} bytes, "
                          f"has {len(payload)}")
            values = np.frombuffer(payload, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
            if dtype.kind == "f" and not np.all(np.isfinite(values)):
                self.fail(f"malformed tensor {name!r}: non-finite values")
        return TensorRecord(name, kind, values, e["bits"], scale, multiplier, shift, e["encoding"])


def parse_container(data: bytes | bytearray | memoryview, source: str = "<bytes>") -> Container:
    """Validate and decode a container held in memory (``source`` names it in error messages)."""
    data = bytes(data)
    try:
        return _Reader(data, source).parse()
    except ExportFormatError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, OverflowError, MemoryError, RecursionError) as e:
        # Last line of defence: the explicit checks above should make this unreachable (the fuzz
        # tests assert they do), but a reader must never crash on a bad file.
        raise ExportFormatError(f"{source}: malformed container (unchecked {type(e).__name__}: {e}); {FIX}") from e


def read_container(path: str | os.PathLike) -> Container:
    """Read and validate the container at ``path``; any problem raises :class:`ExportFormatError`."""
    try:
        with open(path, "rb") as f:
            # Sniff the preamble first: a multi-GB audio file passed by mistake is refused without
            # being read into memory.
            head = f.read(_PREAMBLE.size)
            if not head.startswith(MAGIC) or len(head) < 12 or struct.unpack_from("<H", head, 8)[0] != VERSION[0]:
                return parse_container(head, str(path))
            data = head + f.read()
    except OSError as e:
        raise ExportFormatError(f"{path}: cannot read the file ({e.strerror or e}); "
                                f"pass the file written by the export stage (`dvc repro export`)") from e
    return parse_container(data, str(path))
