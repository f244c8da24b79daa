"""Reading and validating an export container (the layout: :mod:`edgeasr.export.container`).

    c = read_container("model.edgeasr")           # validated, or ExportFormatError
    c.header["model"], c.tensors["joiner.output.weight"].values, c.blobs["tokenizer"]

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
from typing import Any

import numpy as np

from . import codec
from .container import (
    ALIGN,
    FIX,
    FLAG_FIXED_POINT,
    FLAG_SCALE,
    MAGIC,
    MAX_NDIM,
    VERSION,
    _CRC,
    _ENCODING_NAMES,
    _ENTRY,
    _KIND_NAMES,
    _PLAIN_DTYPES,
    _PREAMBLE,
    _SCALED_KINDS,
    Container,
    ExportFormatError,
    TensorRecord,
    _align,
)

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
