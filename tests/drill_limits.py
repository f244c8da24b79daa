"""What the fuzz drills (tests/test_drills_*.py) share: time limits per case (CPU time, and a wall
clock backstop for a case that blocks), a cap on the address space (a trusted bogus length must
fail, not swap the machine), one torch thread."""

from __future__ import annotations

import resource
import signal
from contextlib import contextmanager

import torch


class CaseTimeout(BaseException):
    """A case ran past its limit. A BaseException: no ``except Exception`` under test swallows it."""


def _on_alarm(signum, frame):
    raise CaseTimeout("CPU time" if signum == signal.SIGPROF else "wall clock")


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


@contextmanager
def drill_limits(headroom: int = 2 << 30):
    """For the block: SIGPROF / SIGALRM raise :class:`CaseTimeout` (arm them per case with
    :func:`arm`), the address space may grow by ``headroom`` bytes only, torch runs one thread
    (cases run one at a time; on 2 cores intra-op threads only contend)."""
    threads = torch.get_num_threads()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    vm = _vm_bytes()
    old = {sig: signal.signal(sig, _on_alarm) for sig in (signal.SIGPROF, signal.SIGALRM)}
    torch.set_num_threads(1)
    if vm:
        cap = vm + headroom if hard == resource.RLIM_INFINITY else min(hard, vm + headroom)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        _disarm()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        torch.set_num_threads(threads)


def _disarm() -> None:
    signal.setitimer(signal.ITIMER_PROF, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)


@contextmanager
def arm(cpu_s: float, wall_s: float | None = None):
    """One case's limits (inside :func:`drill_limits`): ``cpu_s`` of this process's CPU time, which a
    busy machine does not stretch (wall-clock limits misfired on a loaded 2-core machine), and
    ``wall_s`` of wall time for a case that blocks (default ``max(120, 10 * cpu_s)``)."""
    signal.setitimer(signal.ITIMER_PROF, cpu_s)
    signal.setitimer(signal.ITIMER_REAL, wall_s if wall_s is not None else max(120.0, 10 * cpu_s))
    try:
        yield
    finally:
        _disarm()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
