"""Writing the prepare stage's outputs: manifests atomically, and a full disk as one clear error.

A manifest is written through :func:`edgeasr.atomic.atomic_write` (a temporary file in its own
folder, ``fsync``, ``os.replace``), so ``cuts_<split>.jsonl.gz`` is either complete or absent,
never truncated by a crash or a full disk. The temporary name (``.cuts_<split>.jsonl.gz.tmp<pid>``)
matches no manifest glob, and it is removed when the write fails.

:func:`disk_full_as_error` turns ``ENOSPC`` / ``EDQUOT`` anywhere in a block (also from lhotse's
feature-writing worker processes, which re-raise it here) into :class:`DiskFullError`: one line
naming the file or folder, the free space, what this run wrote, and where to make room.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from edgeasr.atomic import atomic_write

_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """No space left where a stage writes; the message says where, and what to free."""

    def __init__(self, message: str, filename: str | None = None):
        super().__init__(errno.ENOSPC, message)
        if filename is not None:
            self.filename = filename

    def __str__(self) -> str:
        return self.strerror  # the message alone, without OSError's "[Errno 28]" prefix

    def __reduce__(self):
        return type(self), (self.strerror, self.filename)


def write_manifest(manifest, path: str | os.PathLike) -> Path:
    """``manifest.to_file(path)`` for JSON-lines manifests (gzipped if ``path`` ends in ``.gz``), atomically."""
    path = Path(path)
    name = path.name
    if not (name.endswith(".jsonl") or name.endswith(".jsonl.gz")):
        raise ValueError(f"{path}: write_manifest writes .jsonl or .jsonl.gz manifests")

    def write(raw) -> None:
        # lhotse's to_file layout (the gzip header names the final file), but mtime 0: the same
        # manifest is the same bytes, so a rerun of prepare leaves DVC's downstream stages up to date.
        f = gzip.GzipFile(filename=name, mode="wb", fileobj=raw, mtime=0) if name.endswith(".gz") else raw
        for item in manifest.to_dicts():
            f.write((json.dumps(item, ensure_ascii=False) + "\n").encode("utf-8"))
        if f is not raw:
            f.close()

    try:
        return atomic_write(path, write)
    except OSError as e:
        if e.errno in _FULL:
            e.filename = str(path)  # name the manifest, not its temporary file
        raise


def full_disk_cause(exc: BaseException | None) -> OSError | None:
    """The ``ENOSPC`` / ``EDQUOT`` error in ``exc``'s chain (cause or context), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def _du(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_full_message(where: Path, out: Path, setting: str) -> str:
    free = shutil.disk_usage(_existing(where)).free
    return (f"{where}: no space left on device (ENOSPC); {_mb(free)} free there, this run wrote {_mb(_du(out))} "
            f"into {out} (deleted when the stage reruns); free space on that disk (e.g. `dvc gc -w` drops "
            f"cache entries no workspace uses) or point {setting} at a larger disk, then rerun")


@contextmanager
def disk_full_as_error(where: Path, out: Path, setting: str = "paths.data_dir") -> Iterator[None]:
    """Inside the block, a full disk raises :class:`DiskFullError` naming the failing file (if
    the error carries it) or ``where``; ``out`` is the stage's output folder, ``setting`` the
    config key that moves it."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        cause = full_disk_cause(e)
        if cause is None:
            raise
        name = cause.filename if isinstance(cause.filename, str) else None
        raise DiskFullError(disk_full_message(Path(name) if name else Path(where), Path(out), setting), name) from e
