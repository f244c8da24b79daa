"""Which pipeline invocation this process belongs to, found in the process tree.

The invocation is the nearest ancestor whose command line is a ``dvc`` command (``dvc repro``,
``dvc exp run``, ``python -m dvc ...``); with none, it is this process.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import psutil

# Set by a Hydra multirun's main process (edgeasr.sweep) so that jobs in worker processes (joblib)
# belong to the sweep's invocation: one parent run whatever the launcher.
INVOCATION_ENV = "EDGEASR_INVOCATION"


def _program_name(arg: str) -> str:
    base = arg.replace("\\", "/").rsplit("/", 1)[-1].lower()
    for suffix in (".exe", "-script.py"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base


def is_dvc_cmdline(cmdline: list[str]) -> bool:
    """True for ``dvc ...``, ``<python> .../bin/dvc ...`` (shebang) and ``<python> -m dvc ...``."""
    if not cmdline:
        return False
    exe = _program_name(cmdline[0])
    if exe == "dvc":
        return True
    if not re.fullmatch(r"python[0-9.]*w?", exe):
        return False
    args = cmdline[1:]
    i = 0
    while i < len(args):  # skip interpreter options
        a = args[i]
        if a in ("-m",):
            return i + 1 < len(args) and args[i + 1] == "dvc"
        if a.startswith("-m") and len(a) > 2:
            return a[2:] == "dvc"
        if a in ("-X", "-W", "-Q"):
            i += 2
            continue
        if a.startswith("-") and a != "-":
            i += 1
            continue
        return _program_name(a) == "dvc"
    return False


def _linux_start_ticks(pid: int) -> int | None:
    """Process start time in clock ticks since boot (immune to wall-clock/NTP changes)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22 overall
    except (OSError, ValueError, IndexError):
        return None


def _process_key(proc: Any) -> str:
    """``<pid>-<start time>``: unique for a process across pid reuse.

    On Linux the start time is read as seconds since boot, suffixed with the boot id: psutil's
    ``create_time()`` adds ``btime`` from ``/proc/stat``, which follows wall-clock adjustments
    and could differ between two stages of one long pipeline.
    """
    ticks = _linux_start_ticks(proc.pid)
    if ticks is not None:
        try:
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        except OSError:
            boot = "0"
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        return f"{proc.pid}-{ticks / hz:.2f}@{boot}"
    return f"{proc.pid}-{proc.create_time():.3f}"


def _dvc_ancestor(me: psutil.Process) -> tuple[str, str] | None:
    """``(key, command line)`` of the nearest ``dvc`` ancestor of ``me``, if any."""
    try:
        ancestors = me.parents()
    except (psutil.Error, OSError):
        ancestors = []
    for proc in ancestors:
        try:
            cmdline = proc.cmdline()
        except (psutil.Error, OSError):
            continue
        if is_dvc_cmdline(cmdline):
            try:
                return "dvc:" + _process_key(proc), " ".join(cmdline)
            except (psutil.Error, OSError):
                continue
    return None


def invocation() -> tuple[str, str | None]:
    """``(key, command)`` of the pipeline invocation this process belongs to.

    The invocation is the nearest ancestor whose command line is a ``dvc`` command; with none,
    it is this process. ``command`` is the dvc command line (None without a dvc ancestor).
    ``$DVC_EXP_NAME`` is appended to the key so experiments run by one long-lived DVC worker
    process still get one parent each.
    """
    if os.environ.get(INVOCATION_ENV):
        return os.environ[INVOCATION_ENV], None
    me = psutil.Process()
    found = _dvc_ancestor(me)
    key, command = found if found is not None else ("proc:" + _process_key(me), None)
    exp = os.environ.get("DVC_EXP_NAME")
    if exp:
        key += f":{exp}"
    return key, command
