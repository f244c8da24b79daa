"""The compressed student as one container file (read back by :func:`edgeasr.runtime.load_student`).

``export_student`` writes: every compressed weight as a ``qweight`` record (levels + per-channel
scales, sparse-encoded), biases and norm affines as float32 (the runtime quantizes them to int32 /
int16 at load, from the scales it derives), and a JSON header with the model config, the
compression spec's header fields (:meth:`edgeasr.quantspec.CompressionSpec.header_fields`: weight
bits, target sparsity, activation quantization, ``docs/integer_runtime.md``) and the token list,
which is all a device needs to turn ids into text (``▁`` = word boundary, as sherpa-onnx's tokens.txt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from edgeasr.quantspec import read_spec

from .container import ExportFormatError, write_container
from .torch_records import records_from_model

FORMAT_NAME = "edgeasr-student"


def export_student(model, meta: Mapping[str, Any], tokens: Sequence[str], path: str | Path,
                   encoding: str | tuple[str, ...] = "auto", extra: Mapping[str, Any] | None = None) -> int:
    """``model``: a plain compressed student (weights on the grid, pruned entries 0); ``meta``: its
    model-file meta (``model_cfg``, ``compression``: the spec, with activation quantization).
    Returns the file size in bytes."""
    if getattr(model, "biaser", None) is not None:
        raise ExportFormatError(
            f"the model exported to {path} has an attention biaser (model_cfg.biaser), which the integer "
            "runtime does not run yet: export a student trained with `model.student.biaser=null` and bias it "
            "with shallow fusion (`--context`)")
    spec = read_spec(meta, f"the model exported to {path}", need="export")
    header = {"format": FORMAT_NAME, "model_cfg": dict(meta["model_cfg"]), **spec.header_fields(),
              "tokens": list(tokens), "runtime": "docs/integer_runtime.md", **(extra or {})}
    return write_container(path, header, records_from_model(model, spec.bits, encoding))
