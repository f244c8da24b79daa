"""Fresh processes for eSpeak synthesis: children forked from long-lived spawn workers.

eSpeak carries synthesis state from one utterance to the next inside a process (see tts.py), so
output that must not depend on what was synthesised before runs in a child forked from a pool
worker that never synthesises itself (:func:`run_fresh`). A Pool with maxtasksperchild=1 would
also give fresh processes, but every spawn/forkserver child re-imports the caller's __main__
module; forking from long-lived spawn workers costs milliseconds per task. Used by the corpus
(corpus.py: one child per chunk of utterances) and the babble noises (noise.py).
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import pickle
import traceback
from typing import Any

_POOLS: dict[int, Any] = {}


def worker_pool(num_jobs: int):
    """A shared spawn-context pool of `num_jobs` workers (use with :func:`run_fresh`).

    Workers never synthesise themselves, so they stay free of eSpeak state and are kept for reuse:
    starting one costs seconds (it imports numpy, scipy.signal and the edgeasr package). They are
    terminated at exit or by :func:`shutdown_workers`.
    """
    n = max(1, int(num_jobs))
    if n not in _POOLS:
        _POOLS[n] = mp.get_context("spawn").Pool(n)
    return _POOLS[n]


@atexit.register
def shutdown_workers() -> None:
    """Terminate the shared synthesis worker pools."""
    while _POOLS:
        _, pool = _POOLS.popitem()
        pool.terminate()
        pool.join()


def run_fresh(func, *args):
    """Run func(*args) in a child forked from this process and return its (picklable) result.

    Meant for pool workers, which never synthesise themselves: the child's eSpeak starts pristine.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            try:
                payload = pickle.dumps((True, func(*args)))
            except BaseException:
                payload, code = pickle.dumps((False, traceback.format_exc())), 1
            with os.fdopen(w, "wb") as f:
                f.write(payload)
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        payload = f.read()
    _, status = os.waitpid(pid, 0)
    if not payload:
        raise RuntimeError(f"synthesis child died (wait status {status})")
    ok, result = pickle.loads(payload)
    if not ok:
        raise RuntimeError(f"synthesis child failed:\n{result}")
    return result
