"""An exported student file (``docs/export_format.md``) loaded into the integer runtime.

The loader reads the container (:mod:`edgeasr.export`, validated), the compression spec from its
header (:func:`edgeasr.quantspec.read_spec`) and checks the stored levels against it; every
problem is an :class:`~edgeasr.export.ExportFormatError` naming the file and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from edgeasr.export import Container, ExportFormatError, read_container
from edgeasr.export.student import FORMAT_NAME
from edgeasr.quantspec import SpecError, check_sparsity, read_spec

from .ops import QWeight
from .transducer import IntTransducer

SPACE = "\u2581"  # sentencepiece's word boundary
FIX = "re-export it with `dvc repro export`"


MAX_SYM_PER_FRAME = 8  # a decoder loop bound: more per 80-ms frame is no speech


def load_student(path: str | Path, container: Container | None = None) -> IntTransducer:
    """-> :class:`IntTransducer` with ``tokens`` and ``header``.

    ``container``: ``read_container(path)`` if the caller has already read it (saves a second read
    and checksum pass). Raises :class:`ExportFormatError` naming the file for anything that is not
    an intact exported student."""
    c = container if container is not None else read_container(path)
    h = c.header
    if h.get("format") != FORMAT_NAME:
        raise ExportFormatError(f"{path}: container holds {h.get('format')!r}, not an exported student ({FORMAT_NAME}); {FIX}")
    missing = [k for k in ("model_cfg", "bits", "sparsity", "activation_quant", "tokens") if k not in h]
    if missing:
        raise ExportFormatError(f"{path}: header lacks {missing}; {FIX}")
    weights, floats = {}, {}
    for name, rec in c.tensors.items():
        if rec.kind == "qweight":
            weights[name] = QWeight(torch.from_numpy(rec.values.astype("int64")), torch.from_numpy(rec.scale.copy()))
        else:
            floats[name] = torch.from_numpy(rec.values.astype("float32"))
    try:
        spec = read_spec(h, str(path), need="the integer runtime")
        if any(rec.bits != spec.bits for rec in c.tensors.values() if rec.kind == "qweight"):
            raise SpecError(f"{path}: qweight bit widths differ from the header's bits={spec.bits}")
        check_sparsity(spec, sum(int((w.levels == 0).sum()) for w in weights.values()),
                       sum(w.levels.numel() for w in weights.values()), str(path))
    except SpecError as e:
        raise ExportFormatError(f"{e}; {FIX}") from e
    tokens = h["tokens"]
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ExportFormatError(f"{path}: header 'tokens' must be a list of strings; {FIX}")
    try:
        rt = IntTransducer(h["model_cfg"], weights, floats, spec)
        _smoke(rt)
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError, OverflowError, ZeroDivisionError) as e:
        raise ExportFormatError(f"{path}: tensors do not match the header's model ({type(e).__name__}: {e}); {FIX}") from e
    if len(tokens) != rt.joiner.vocab_size:
        raise ExportFormatError(f"{path}: {len(tokens)} tokens for a {rt.joiner.vocab_size}-way joiner; {FIX}")
    rt.tokens, rt.header = list(tokens), h
    rt.max_sym_per_frame = header_max_sym(h, path)
    return rt


def _smoke(rt: IntTransducer) -> None:
    """Silence through every layer and one decoding step: tensors whose shapes pass the reader but
    do not chain (a hostile or buggy file) fail here, not in the middle of a user's decode."""
    with torch.inference_mode():
        t = 4 * rt.encoder.k + 3  # one encoder frame (k is bounded by the stacking weights' size)
        enc, _ = rt.encode(torch.zeros(1, t, rt.encoder.input_dim), torch.tensor([t]))
        pred, ctx = rt.predictor.init_decoder(1)
        rt.joiner.forward_frame(enc[:, 0], pred)
        rt.predictor.step_tokens(torch.tensor([rt.joiner.vocab_size - 1]), ctx)
    rt.reset_stats()  # the emulator counts work from zero


def header_max_sym(header: dict, path) -> int:
    """The greedy decoder's tokens per encoder frame the model was evaluated with (header
    ``decoding.max_sym_per_frame``; 1, the sherpa-onnx contract, in files written before it)."""
    dec = header.get("decoding", {})
    n = dec.get("max_sym_per_frame", 1) if isinstance(dec, dict) else None
    if type(n) is not int or not 1 <= n <= MAX_SYM_PER_FRAME:
        raise ExportFormatError(f"{path}: header decoding={dec!r}: max_sym_per_frame must be an integer in "
                                f"1..{MAX_SYM_PER_FRAME}; {FIX}")
    return n


def tokens_to_text(tokens: Sequence[str], ids: Sequence[int], blank_id: int = 0) -> str:
    """Token ids -> text with the exported token list (BPE pieces, ``▁`` starts a word)."""
    return "".join(tokens[i] for i in ids if i != blank_id).replace(SPACE, " ").strip()
