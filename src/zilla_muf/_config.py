"""Build and run-time configuration: OpenMP threads, the output buffer cache.

The functions of ``__all__`` are re-exported by :mod:`zilla_muf`; the
others are the load policy the parallel kernels share: how many of the
threads a call asked for run, given the cores other processes keep busy.
"""

import operator
import os
import time

from . import _buffers
from ._openmp_helpers import have_openmp, max_threads, threads_used
from ._validation import resolve_workers

__all__ = ["buffer_cache", "have_openmp", "openmp_info"]


def openmp_info(workers=None):
    """Report how the kernels parallelise on this build and machine.

    Parameters
    ----------
    workers : int, optional
        Threads to ask a parallel kernel for, as the ``workers`` argument of
        every function (None is 1, -1 all cores).

    Returns
    -------
    info : dict
        ``"openmp"``: whether the kernels were compiled with OpenMP;
        ``"max_threads"``: the OpenMP runtime's default thread count;
        ``"requested"``: the threads `workers` resolves to;
        ``"threads_used"``: how many distinct threads a parallel loop run with
        that request actually used (1 without OpenMP).

    Examples
    --------
    >>> import zilla_muf
    >>> info = zilla_muf.openmp_info(workers=1)
    >>> info["threads_used"]
    1
    """
    n = resolve_workers(workers)
    return {
        "openmp": have_openmp(),
        "max_threads": max_threads(),
        "requested": n,
        "threads_used": threads_used(n),
    }


def buffer_cache(max_bytes=None):
    """Report, and optionally resize, the cache of large output buffers.

    A new array's memory is mapped in by the operating system page by page
    when it is first written, and every page is zeroed then. For an output of
    tens of megabytes that costs about as much as the scan that fills it
    (see Notes). With the cache on, the memory of large scan outputs is kept
    when they are freed, and the next output it fits reuses it. It is off
    until turned on; passing ``out=`` to the scans avoids the cost without
    it.

    Parameters
    ----------
    max_bytes : int, optional
        The most memory the cache holds, in bytes; 0 turns it off and frees
        what it holds. None (default) leaves the limit as it is. The limit
        starts at 0 (off).

    Returns
    -------
    info : dict
        ``"max_bytes"``: the limit; ``"cached_bytes"`` and
        ``"cached_blocks"``: the memory held now; ``"hits"`` and
        ``"misses"``: how many large outputs reused a block and how many
        did not, since the start.

    Raises
    ------
    ValueError
        If `max_bytes` is negative.
    TypeError
        If `max_bytes` is not an integer.

    Notes
    -----
    The outputs of the scan functions (:func:`linear_scan` and the others)
    of at least 1 MiB come from the cache. When such an array is freed, its
    block is kept if it fits under the limit; the oldest blocks make room,
    and at most 8 are held. A new output takes the smallest held block that
    is at least as large and no more than a quarter larger. The arrays are
    ordinary NumPy arrays; only NumPy's name of the allocator that made
    them (``numpy._core.multiarray.get_handler_name``) tells them apart.
    They can be freed, resized and pickled as any other, from any thread.
    Blocks of 4 MiB or more are advised as transparent huge pages when
    NumPy's own switch for that is on, as NumPy's allocator does.

    On this project's benchmark machine, writing a fresh 64 MiB array takes
    5-6 ms longer than rewriting one already mapped, against 9-10 ms for a
    pass of ``np.add`` over arrays of that size.

    .. versionchanged:: 0.2.0
       Off by default (in 0.1.0 the limit started at 256 MiB).

    Examples
    --------
    >>> import numpy as np
    >>> import zilla_muf
    >>> limit = zilla_muf.buffer_cache()["max_bytes"]   # 0 unless turned on
    >>> _ = zilla_muf.buffer_cache(256 << 20)           # turn it on
    >>> a = np.full((4, 1 << 16), 0.5)
    >>> h = zilla_muf.linear_scan(a, a)      # 2 MiB: from the cache
    >>> del h                                # kept for the next output
    >>> zilla_muf.buffer_cache()["cached_blocks"] >= 1
    True
    >>> zilla_muf.buffer_cache(0)["cached_bytes"]   # turn it off, free all
    0
    >>> _ = zilla_muf.buffer_cache(limit)           # as it was
    """
    if max_bytes is not None:
        if isinstance(max_bytes, bool):
            raise TypeError("`max_bytes` must be an integer, got bool")
        try:
            limit = operator.index(max_bytes)
        except TypeError:
            raise TypeError(
                f"`max_bytes` must be an integer, got {type(max_bytes).__name__}"
            ) from None
        if limit < 0:
            raise ValueError(f"`max_bytes` must be >= 0, got {limit}")
        _buffers.set_limit(min(limit, 2**62))
    return _buffers.stats()


# free_cores' answer is reused for this many seconds: reading the states of
# this process's threads takes ~0.1 ms while a pool thread spins, as much
# as a decoding step's work, and the load does not change that fast
_FREE_CORES_TTL = 0.01
# (time.monotonic() of the reading, its answer); -inf: nothing read yet
# (monotonic time may start near 0, as it does on a machine just booted)
_free_cores_seen = [float("-inf"), 1]


def free_cores():
    """Cores not running another process's task right now (at least 1).

    Read from the count of runnable tasks in /proc/loadavg (Linux), less
    this process's own runnable threads (the caller, and pool threads still
    spinning after an earlier parallel call, which the next call reuses);
    where that is unavailable, every core counts as free. An answer is
    reused for ``_FREE_CORES_TTL`` seconds."""
    now = time.monotonic()
    if now - _free_cores_seen[0] < _FREE_CORES_TTL:
        return _free_cores_seen[1]
    free = _read_free_cores()
    _free_cores_seen[:] = [time.monotonic(), free]
    return free


def _runnable_tasks():
    with open("/proc/loadavg", "rb") as f:
        return int(f.read().split()[3].split(b"/")[0])


def _read_free_cores():
    try:
        ncpu = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        ncpu = os.cpu_count() or 1
    try:
        running = _runnable_tasks()
        if running > 1:
            own = _own_runnable_threads()
            # a pool thread of ours that stopped spinning while its state
            # was read was counted in the first reading and not in `own`:
            # the lower of a reading before and one after
            running = min(running, _runnable_tasks())
    except (OSError, ValueError, IndexError):
        return ncpu
    others = running - 1 if running <= 1 else running - own
    return max(1, min(ncpu, ncpu - max(others, 0)))


def _own_runnable_threads():
    """This process's threads in the running state (at least 1, the
    caller), from /proc/self/task."""
    n = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the state follows the parenthesised command name
        if stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] == b"R":
            n += 1
    return max(n, 1)


def running_threads(nthreads):
    """The threads a kernel whose result does not depend on its thread
    count runs on: `nthreads` (``workers`` resolved) capped at
    :func:`free_cores`. A thread that the system deschedules for another
    process holds up every other at the end of each parallel phase, and
    idle OpenMP threads spin on the core that process needs; on a loaded
    machine one thread is faster than two."""
    return nthreads if nthreads <= 1 else min(nthreads, free_cores())
