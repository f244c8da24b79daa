"""Export of the compressed student: a versioned, checksummed binary container (numpy-only reader).

Spec: ``docs/export_format.md``. ``write_container`` returns the file size (the model's
``size_bytes``); ``encoded_nbytes`` gives one tensor's payload size without writing, the figure the
emulator should use. ``records_from_model`` (needs torch) turns a model into records.
"""

from .codec import ENCODINGS, choose_encoding, decode_levels, encode_levels, encoded_nbytes
from .container import (
    MAGIC,
    VERSION,
    Container,
    ExportFormatError,
    TensorRecord,
    build_container,
    container_nbytes,
    record_nbytes,
    write_container,
)
from .reader import parse_container, read_container


def __getattr__(name: str):
    # torch helpers load lazily so that reading a container never imports torch (seconds of import;
    # tests/test_export_container.py::test_reader_needs_no_torch)
    if name in ("records_from_model", "qweight_record"):
        from . import torch_records

        return getattr(torch_records, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ENCODINGS",
    "MAGIC",
    "VERSION",
    "Container",
    "ExportFormatError",
    "TensorRecord",
    "build_container",
    "choose_encoding",
    "container_nbytes",
    "decode_levels",
    "encode_levels",
    "encoded_nbytes",
    "parse_container",
    "qweight_record",
    "read_container",
    "record_nbytes",
    "records_from_model",
    "write_container",
]
