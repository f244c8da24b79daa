"""What the fuzz drills (tests/test_drills_*.py) share: a time limit per case, a cap on the
address space (a trusted bogus length must fail, not swap the machine), one torch thread."""

from __future__ import annotations

import resource
import signal
from contextlib import contextmanager

import torch


class CaseTimeout(BaseException):
    """A case ran past its limit. A BaseException: no ``except Exception`` under test swallows it."""


def _on_alarm(signum, frame):
    raise CaseTimeout()


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


@contextmanager
def drill_limits(headroom: int = 2 << 30):
    """For the block: SIGALRM raises :class:`CaseTimeout` (arm it per case with :func:`arm`), the
    address space may grow by ``headroom`` bytes only, torch runs one thread (cases run one at a
    time; on 2 cores intra-op threads only contend)."""
    threads = torch.get_num_threads()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    vm = _vm_bytes()
    old = signal.signal(signal.SIGALRM, _on_alarm)
    torch.set_num_threads(1)
    if vm:
        cap = vm + headroom if hard == resource.RLIM_INFINITY else min(hard, vm + headroom)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        torch.set_num_threads(threads)


@contextmanager
def arm(seconds: float):
    """One case's time limit (inside :func:`drill_limits`)."""
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
