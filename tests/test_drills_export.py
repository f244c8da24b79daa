"""Reliability drill (issue 15): 1,000 mutated export files -> 0 crashes.

One real exported student (the 50 %-pruned int8 tiny LSTM of ``quantized_tiny_student``) is
mutated 1,000 ways with a seeded RNG: raw bit flips, byte overwrites, truncations, insertions and
deletions (the checksum's job), the same with the checksum recomputed (the structural checks'
job), length / offset / shape fields set to edge and huge values, and edits of the JSON header
(the model config, the compression spec, the token list) in a well-formed container. Each file
must either load (``edgeasr.runtime.load_student``, then the CLI's recognizer decodes random
features) or raise :class:`ExportFormatError`. Anything else is a crash: another exception type,
a case over its time limit, or one that grows the process by gigabytes (huge length fields must
not allocate them: the address space is capped during the drill).
"""

from __future__ import annotations

import copy
import json
import struct
import sys
import time
import zlib
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import TINY_STUDENT_CFG, quantized_tiny_student
from drill_limits import CaseTimeout, arm, drill_limits, peak_rss_mb
from edgeasr.cli_base import Notes
from edgeasr.export import ExportFormatError, build_container, parse_container
from edgeasr.recognizer import load_recognizer
from edgeasr.runtime import load_student

CASES = 1000
SEED = 15
CASE_LIMIT_S = 10.0  # CPU seconds per case (a case takes ~0.01); a hang is minutes
EDGE = [0, 1, 2, 3, 7, 8, 15, 16, 17, 47, 48, 49, 255, 256, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1]
VALUES = [None, True, False, 0, 1, -1, 2, 3, 7, 8, 47, 48, 49, 1000, 2**31, 2**63, -2**63, 10**30, 0.5, -0.5,
          1e-45, 1e308, float("nan"), float("inf"), -float("inf"), "", "x", "lstm", "conformer", "stateless",
          "layer", "none", "\u2581", [], [1], {}, {"a": 1}, "A" * 5000]


def reseal(b: bytes | bytearray) -> bytes:
    """Fix the declared length and the CRC: only the structural checks can catch what is left."""
    b = bytearray(b)
    if len(b) >= 48:
        struct.pack_into("<Q", b, 16, len(b))
    if len(b) >= 4:
        b[-4:] = struct.pack("<I", zlib.crc32(bytes(b[:-4])))
    return bytes(b)


def with_header_text(c, text: bytes) -> bytes:
    """The container ``c`` with its JSON header replaced by exactly ``text`` (any bytes, valid or not)."""
    pad = max(0, len(text) - 8)
    data = bytearray(build_container({"x": "a" * pad}, c.tensors, c.blobs))
    json_len = struct.unpack_from("<I", data, 24)[0]
    if len(text) < 8:  # shorter than the placeholder: blank the rest (the reader rejects it or not)
        text = text + b" " * (json_len - len(text))
    data[48:48 + json_len] = text
    return reseal(data)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:8]):
            yield from _paths(v, prefix + (i,))


def _edit_header(rng, header: dict) -> bytes:
    h = copy.deepcopy(header)
    paths = [p for p in _paths(h) if p]
    for _ in range(int(rng.integers(1, 4))):
        path = paths[int(rng.integers(len(paths)))]
        parent = h
        try:
            for k in path[:-1]:
                parent = parent[k]
            key = path[-1]
            op = int(rng.integers(6))
            if op == 0:
                del parent[key]
            elif op == 1:
                parent[key] = VALUES[int(rng.integers(len(VALUES)))]
            elif op == 2 and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
                parent[key] = parent[key] * [-1, 0, 2, 10, 1e6, 0.5][int(rng.integers(6))]
            elif op == 3 and isinstance(parent[key], list):
                n = len(parent[key])
                parent[key] = parent[key][: int(rng.integers(0, n + 1))] + parent[key][: int(rng.integers(0, 3))]
            elif op == 4:
                parent[key] = str(parent[key])
            else:
                parent[key] = int(rng.choice(EDGE))
        except (KeyError, IndexError, TypeError):
            pass
    text = json.dumps(h, allow_nan=True)  # NaN/Infinity are what a hostile writer could put there
    if rng.random() < 0.1:  # raw text damage that stays inside the header
        b = bytearray(text.encode())
        i = int(rng.integers(len(b)))
        b[i] = int(rng.choice([0x80, 0xff, ord("{"), ord("]"), ord('"'), ord("\\"), 0]))
        return bytes(b)
    return text.encode()


def mutations(data: bytes, rng, n: int):
    """``n`` (kind, bytes) cases, the same for the same seed."""
    c = parse_container(data)
    header = c.header
    json_len, dir_len = struct.unpack_from("<II", data, 24)
    dir_off = -(-(48 + json_len) // 16) * 16
    region0 = -(-(dir_off + dir_len) // 16) * 16
    # directory entry starts, for field edits
    starts, pos = [], dir_off
    for _ in range(struct.unpack_from("<I", data, 32)[0]):
        starts.append(pos)
        ndim, name_len = data[pos + 3], struct.unpack_from("<H", data, pos + 6)[0]
        pos += 32 + 4 * ndim + name_len
    kinds = (["bitflip"] * 12 + ["byte"] * 8 + ["truncate"] * 8 + ["insert"] * 5 + ["delete"] * 5
             + ["resealed_byte"] * 20 + ["length_field"] * 12 + ["header_edit"] * 25 + ["header_text"] * 5)
    for i in range(n):
        kind = kinds[int(rng.integers(len(kinds)))]
        b = bytearray(data)
        if kind == "bitflip":
            for _ in range(int(rng.integers(1, 4))):
                p = int(rng.integers(len(b)))
                b[p] ^= 1 << int(rng.integers(8))
        elif kind == "byte":
            p = int(rng.integers(len(b)))
            b[p : p + int(rng.integers(1, 9))] = bytes(rng.integers(0, 256, 8, dtype=np.uint8))[: len(b) - p]
        elif kind == "truncate":
            b = b[: int(rng.integers(0, len(b)))]
        elif kind == "insert":
            p = int(rng.integers(len(b) + 1))
            b[p:p] = bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))
            if rng.random() < 0.5:
                b = bytearray(reseal(b))
        elif kind == "delete":
            p = int(rng.integers(len(b)))
            del b[p : p + int(rng.integers(1, 64))]
            if rng.random() < 0.5:
                b = bytearray(reseal(b))
        elif kind == "resealed_byte":
            lo, hi = [(8, 48), (dir_off, region0), (region0, len(b) - 4)][int(rng.integers(3))]
            p = int(rng.integers(lo, hi))
            b[p] = int(rng.integers(256)) if rng.random() < 0.5 else b[p] ^ (1 << int(rng.integers(8)))
            b = bytearray(reseal(b))
        elif kind == "length_field":
            big = [2**32 - 1, 2**31, 2**31 - 1, 2**24, 0, 1, len(b), len(b) + 16][int(rng.integers(8))]
            if rng.random() < 0.3:  # preamble: preamble_len, json_len, dir_len, n_entries
                off = [12, 24, 28, 32][int(rng.integers(4))]
                struct.pack_into("<I", b, off, big)
            else:  # a directory entry: name_len, nchan, offset, length, a dim
                s = starts[int(rng.integers(len(starts)))]
                field = int(rng.integers(5))
                if field == 0:
                    struct.pack_into("<H", b, s + 6, big & 0xFFFF)
                elif field == 1:
                    struct.pack_into("<I", b, s + 8, big & 0xFFFFFFFF)
                elif field in (2, 3):
                    struct.pack_into("<Q", b, s + 16 + 8 * (field - 2), [2**64 - 16, 2**63, big][int(rng.integers(3))])
                elif b[s + 3]:
                    struct.pack_into("<I", b, s + 32 + 4 * int(rng.integers(b[s + 3])), big & 0xFFFFFFFF)
            b = bytearray(reseal(b))
        elif kind == "header_edit":
            b = bytearray(with_header_text(c, _edit_header(rng, header)))
        else:  # header_text: JSON that is not a student header at all
            text = [b"[]", b"{}", b"null", b'{"format": "edgeasr-student"}', b"[" * 100000 + b"]" * 100000,
                    b'{"a": ' + b"9" * 5000 + b"}", b'{"a": 1e999999}', b"\xff\xfe{}", b'{"a": "\\ud800"}',
                    json.dumps({**header, "tokens": list(range(48))}).encode()][int(rng.integers(10))]
            b = bytearray(with_header_text(c, text))
        yield kind, bytes(b)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from edgeasr.compression import activation_spec
    from edgeasr.compression.actquant import float_view
    from edgeasr.export.student import export_student

    model, _ = quantized_tiny_student()
    compression = {"bits": 8, "sparsity": 0.5, "activation_quant": activation_spec(model).to_dict()}
    tokens = ["<blk>"] + [("\u2581" if i % 3 == 0 else "") + f"t{i}" for i in range(1, TINY_STUDENT_CFG["vocab_size"])]
    path = tmp_path_factory.mktemp("drill") / "student.edgeasr"
    with float_view(model) as plain:
        export_student(plain, {"model_cfg": TINY_STUDENT_CFG, "compression": compression}, tokens, path)
    return path


def _run_case(path, data: bytes, rng) -> str:
    """``ExportFormatError`` or ``loaded``; raises for anything else."""
    path.write_bytes(data)
    try:
        load_student(path)
    except ExportFormatError as e:
        return "unchecked" if "unchecked" in str(e) else "ExportFormatError"
    # It loads: the command's own path must load it too and decode without surprises.
    rec = load_recognizer(path, note=Notes(sys.stderr))
    frames = rng.standard_normal((int(rng.integers(0, 60)), rec.feature_dim)).astype(np.float32)
    feats = torch.from_numpy(frames * 3 + 10)
    mode = int(rng.integers(3))
    text = rec.transcribe_features(feats, method="beam" if mode == 2 else "greedy", beam=2, streaming=mode == 1,
                                   chunk_frames=16)
    assert isinstance(text, str)
    return "loaded"


def test_export_fuzz_1000_files_0_crashes(exported, tmp_path, capsys):
    data = exported.read_bytes()
    rng = np.random.default_rng(SEED)
    target = tmp_path / "mutated.edgeasr"
    outcomes, by_kind, crashes = Counter(), Counter(), []
    rss0, t0, cpu0, slowest = peak_rss_mb(), time.perf_counter(), time.process_time(), (0.0, "")
    with drill_limits():
        for i, (kind, mutated) in enumerate(mutations(data, rng, CASES)):
            by_kind[kind] += 1
            t = time.perf_counter()
            try:
                with arm(CASE_LIMIT_S):
                    outcome = _run_case(target, mutated, np.random.default_rng([SEED, i]))
            except CaseTimeout:
                outcome = "timeout"
            except BaseException as e:  # noqa: BLE001 - the drill counts them all
                outcome = f"crash {type(e).__name__}: {str(e)[:200]}"
            slowest = max(slowest, (time.perf_counter() - t, f"case {i} ({kind})"))
            outcomes[outcome.split(":")[0]] += 1
            if outcome not in ("loaded", "ExportFormatError"):
                crashes.append(f"case {i} ({kind}): {outcome}")
    grown = peak_rss_mb() - rss0
    with capsys.disabled():
        print(f"\nexport fuzz: {CASES} cases, {outcomes['ExportFormatError']} ExportFormatError, "
              f"{outcomes['loaded']} loaded, {len(crashes)} crashes; {time.perf_counter() - t0:.1f} s "
              f"({time.process_time() - cpu0:.1f} s CPU; slowest {slowest[0]:.2f} s, {slowest[1]}), "
              f"peak RSS +{grown:.0f} MB; kinds {dict(sorted(by_kind.items()))}")
    assert sum(outcomes.values()) == CASES
    assert not crashes, "\n".join(crashes[:30])
    assert grown < 512, f"the drill grew the process by {grown:.0f} MB"
    assert outcomes["loaded"] > 0 and outcomes["ExportFormatError"] > CASES // 2  # both paths exercised


@pytest.mark.parametrize("edit, match", [
    (lambda h: h.update(tokens=list(range(48))), "'tokens' must be a list of strings"),
    (lambda h: h.update(tokens=3.5), "'tokens' must be a list of strings"),
    (lambda h: h["model_cfg"]["encoder"].update(hidden=24), "hidden 24 differs"),
    (lambda h: h["model_cfg"]["encoder"].update(frame_stack=2**31), "frame_stack 2147483648 does not fit"),
    (lambda h: h["model_cfg"]["encoder"].update(input_dim=7), "input_dim 7 does not fit"),
    (lambda h: h["model_cfg"]["encoder"].update(input_norm="batch"), "input_norm"),
    (lambda h: h["model_cfg"]["predictor"].update(context_size=3), "context_size 3 differs"),
    (lambda h: h["model_cfg"].update(blank_id=48), "blank_id 48 is outside"),
    (lambda h: h["activation_quant"]["points"]["encoder.in"].update(bits=float("inf")),
     "point 'encoder.in' is malformed"),
])
def test_what_the_drill_found_is_refused_at_load(exported, tmp_path, edit, match):
    """Each crash the export drill found (a header that loaded, then failed mid-decode or with a
    TypeError), replayed: now an ExportFormatError at load naming the problem."""
    c = parse_container(exported.read_bytes())
    header = copy.deepcopy(c.header)
    edit(header)
    path = tmp_path / "edited.edgeasr"
    path.write_bytes(with_header_text(c, json.dumps(header, allow_nan=True).encode()))
    with pytest.raises(ExportFormatError, match=match):
        load_student(path)


def test_layernorm_of_a_constant_row_at_a_coarse_scale_does_not_divide_by_zero():
    from edgeasr.runtime.ops import IntLayerNorm

    norm = IntLayerNorm(torch.ones(48), torch.zeros(48), 1e-5, s_in=4.0, s_out=0.05)  # eps rounds to 0 levels
    assert norm(torch.full((2, 48), 7, dtype=torch.int64)).tolist() == [[0] * 48] * 2


def test_the_drill_limits_catch_a_hang_and_a_huge_allocation():
    """The drills' own alarms work: a case that hangs or asks for gigabytes is stopped and counted."""
    with drill_limits(headroom=1 << 30):
        with pytest.raises(CaseTimeout, match="CPU time"), arm(0.2):
            while True:  # a busy hang
                pass
        with pytest.raises(CaseTimeout, match="wall clock"), arm(0.2, wall_s=0.5):
            time.sleep(5)  # a blocking one
        with pytest.raises(MemoryError):
            np.empty(4 << 30, dtype=np.uint8)
