"""Crash-safe file writes: the new content goes to a temp file beside the target, is flushed to
disk (fsync), and only then renamed over the target, so a crash or a full disk leaves either the
old file or the new one, never a partial file under the real name.

The rename also matters for DVC: an output may be a hardlink into DVC's cache (``cache.type
hardlink``); writing through it in place would change the cached copy too. Stdlib only, so any
package (the numpy-only export reader's writer included) may use it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: some filesystems refuse fsync on a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(fh)`` on a binary temp file next to ``path``, fsync it, rename it to ``path``.

    The temp name carries the pid, so processes writing the same target never share a temp
    file; on any error it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda fh: fh.write(data))
