"""The compressed student as one container file, and back as an integer runtime.

``export_student`` writes: every weight matrix as a ``qweight`` record (levels + per-channel
scales, sparse-encoded), biases and norm affines as float32 (the runtime quantizes them to int32 /
int16 at load, from the scales it derives), and a JSON header with the model config, the weight
bits, the activation quantization spec (``docs/integer_runtime.md``) and the token list, which is
all a device needs to turn ids into text (``▁`` = word boundary, as sherpa-onnx's tokens.txt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

FORMAT_NAME = "edgeasr-student"
SPACE = "\u2581"


def export_student(model, meta: Mapping[str, Any], tokens: Sequence[str], path: str | Path,
                   encoding: str | tuple[str, ...] = "auto", extra: Mapping[str, Any] | None = None) -> int:
    """``model``: a plain compressed student (weights on the grid, pruned entries 0); ``meta``: its
    model-file meta (``model_cfg``, ``compression`` with ``bits`` and ``activation_quant``).
    Returns the file size in bytes."""
    from .container import write_container
    from .torch_records import records_from_model

    comp = meta.get("compression") or {}
    if "activation_quant" not in comp:
        raise ValueError("only a compressed student with activation quantization can be exported "
                         "(run the compress stage with compress.activations.enabled=true)")
    bits = int(comp["bits"])
    header = {"format": FORMAT_NAME, "model_cfg": dict(meta["model_cfg"]), "bits": bits,
              "sparsity": comp.get("sparsity"), "activation_quant": comp["activation_quant"],
              "tokens": list(tokens), "runtime": "docs/integer_runtime.md", **(extra or {})}
    return write_container(path, header, records_from_model(model, bits, encoding))


def load_student(path: str | Path, container=None):
    """-> :class:`~edgeasr.emulator.intruntime.IntTransducer` with ``tokens`` and ``header``.

    ``container``: ``read_container(path)`` if the caller has already read it (saves a second read
    and checksum pass). Raises :class:`~edgeasr.export.ExportFormatError` naming the file for anything that is not an
    intact exported student."""
    import torch

    from edgeasr.emulator.intruntime import IntTransducer, QWeight

    from .container import ExportFormatError, read_container

    c = container if container is not None else read_container(path)
    h = c.header
    fix = "re-export it with `dvc repro export`"
    if h.get("format") != FORMAT_NAME:
        raise ExportFormatError(f"{path}: container holds {h.get('format')!r}, not an exported student ({FORMAT_NAME}); {fix}")
    missing = [k for k in ("model_cfg", "bits", "activation_quant", "tokens") if k not in h]
    if missing:
        raise ExportFormatError(f"{path}: header lacks {missing}; {fix}")
    weights, floats = {}, {}
    for name, rec in c.tensors.items():
        if rec.kind == "qweight":
            weights[name] = QWeight(torch.from_numpy(rec.values.astype("int64")), torch.from_numpy(rec.scale.copy()))
        else:
            floats[name] = torch.from_numpy(rec.values.astype("float32"))
    try:
        rt = IntTransducer(h["model_cfg"], weights, floats, h["activation_quant"])
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise ExportFormatError(f"{path}: tensors do not match the header's model ({type(e).__name__}: {e}); {fix}") from e
    if len(h["tokens"]) != rt.joiner.vocab_size:
        raise ExportFormatError(f"{path}: {len(h['tokens'])} tokens for a {rt.joiner.vocab_size}-way joiner; {fix}")
    rt.tokens, rt.header = list(h["tokens"]), h
    return rt


def tokens_to_text(tokens: Sequence[str], ids: Sequence[int], blank_id: int = 0) -> str:
    """Token ids -> text with the exported token list (BPE pieces, ``▁`` starts a word)."""
    return "".join(tokens[i] for i in ids if i != blank_id).replace(SPACE, " ").strip()
