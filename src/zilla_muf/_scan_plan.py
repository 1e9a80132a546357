"""The plan of a scan: how the kernels of ``_scan`` cut up and run the work.

One function, :func:`make_plan`, decides everything that the kernels
execute: the layout, the chunk (or leaf) length, the channel block width,
how many spans each sequence is cut into and how long the first is, and
how many threads run. The kernels take a :class:`ScanPlan` and re-decide
none of it; the public functions of :mod:`zilla_muf.scan` only build one.

The work decomposition (``chunk``, ``splits``, ``lead``) depends on the
problem and on `workers` alone, so a result depends on nothing else. The
threads that execute it (``threads``) may be fewer: when other processes
keep cores busy, a thread that the system deschedules holds up every other
at the end of each parallel phase, so a plan runs on the cores that are
free when it is made (see :func:`free_cores`). The result is the same
either way: every thread count runs the same decomposition. (The channel
block width of the columns layout follows the threads that run: channels
are independent, so it never changes a result. For the same reason an
output too large for the caches, whose channel blocks on several threads
would be too narrow to stream well, is scanned whole steps at a time on
one thread.)
"""

from dataclasses import dataclass

from ._config import free_cores

# Rows layout (scan axis contiguous): complex chains advance 4 at a time in
# lockstep (real ones take the vector row kernels, whole rows per thread).
_LANES = 4
# Chunk length (steps) of a long row split between threads: the unit in
# which the corrections of later spans are shared out.
_ROW_CHUNK = 1024
# Smallest chunk (steps) worth a carry and a correction.
_MIN_CHUNK = 256
# Elements of work below which another thread costs more than it saves.
MIN_PER_THREAD = 1 << 15
# Steps per thread below which the columns layout never splits time.
_MIN_STEPS_PER_THREAD = 64
# Bytes per step of the smallest channel block the columns layout gives a
# thread; with fewer channels it splits time instead.
_MIN_BLOCK_BYTES = 512
# Length of the first span of a sequence split between threads, relative to
# the others: the first is scanned (read a, b, write h) while the others are
# reduced to their affine maps (read a, b), which costs this fraction of a
# scan (rows: the lane-tree reduction of _scanrow.h; columns: two streams
# read against three moved).
_LEAD_ROWS = {4: 0.5, 8: 0.7}   # by itemsize: float32, float64
_LEAD_COLS = 2.0 / 3.0
# Bytes of output from which the columns layout writes it with streaming
# stores (real types, one pass per channel block): an output this large
# leaves the caches before it is read again, and streaming stores skip
# reading its lines before they are written.
_STREAM_BYTES = 32 << 20
# Bytes per step of the narrowest channel block that a thread streams from
# memory while the others stream the rest of the same steps: narrower runs
# stream so much worse that one thread over whole steps is faster (4096
# float32 channels on two threads, 8 KiB each: np.add split that way took
# 8.0 ms against 6.0 ms for one thread, and the scan lost as much; at
# 16 KiB, two threads and one took the same time).
_MIN_STREAM_RUN = 16 << 10

METHODS = ("sequential", "chunked", "associative")


@dataclass(frozen=True)
class ScanPlan:
    """What the kernels execute (see the module docstring).

    Attributes
    ----------
    method : str
        "sequential", "chunked" or "associative".
    layout : str
        "rows" (the scan axis contiguous, ``inner == 1``) or "cols".
    chunk : int
        Chunked: steps per chunk (rows layout; the columns layout splits
        time into spans and uses no chunks). Associative: steps per leaf.
    block_width : int
        Columns layout: channels per task.
    splits : int
        Chunked: spans each sequence (row, or channel block) is cut into,
        1 for whole sequences per thread.
    lead : float
        Chunked with ``splits > 1``, real rows and columns: the length of
        the first span relative to the others.
    threads : int
        Threads that run the plan.
    decomposition_threads : int
        Threads the decomposition was made for (`workers` capped by size).
    in_place : bool
        Whether the kernel may write its result over its `b`: it then reads
        every b_t before it writes h_t there, and never reads it after.
    stream : bool
        Columns layout, real types, sequential or chunked in one pass per
        channel block: write the output with streaming (non-temporal)
        stores. Same values either way.
    """

    method: str
    layout: str
    chunk: int
    block_width: int
    splits: int
    lead: float
    threads: int
    decomposition_threads: int
    in_place: bool
    stream: bool = False


def _odd16(x):
    """x rounded up to 16 times an odd number.

    Lanes that many elements apart never sit a multiple of 4 KiB apart, which
    would make their loads wait on each other's stores (4K aliasing).
    """
    k = max(1, -(-int(x) // 16))
    return 16 * (k + 1 - k % 2)


def _cdiv(x, y):
    return -(-x // y)


class _Shape:
    __slots__ = ("outer", "n", "inner", "itemsize", "complex")

    def __init__(self, outer, n, inner, dtype):
        self.outer, self.n, self.inner = outer, n, inner
        self.itemsize = dtype.itemsize
        self.complex = dtype.kind == "c"


def _time_split(p, nthreads):
    """Whether the columns layout splits the time axis between threads.

    It splits the channels of every step when that gives every thread a
    block of at least _MIN_BLOCK_BYTES per step (each block then streams on
    its own, and the threads share out the faulting-in of the output's
    pages); with fewer channels, and enough steps, it splits time."""
    if p.inner <= 1 or p.outer >= nthreads or p.n < _MIN_STEPS_PER_THREAD * nthreads:
        return False
    blocks = _cdiv(nthreads, max(p.outer, 1))
    return p.inner * p.itemsize < _MIN_BLOCK_BYTES * blocks


def _block_width(p, nthreads):
    """Channel block of one task in the columns layout: as wide as possible
    (long contiguous runs per step stream well), split only to give every
    thread work when the time axis is too short to split."""
    if p.inner <= 1 or p.outer >= nthreads or _time_split(p, nthreads):
        return max(p.inner, 1)
    blocks = _cdiv(nthreads, max(p.outer, 1))
    w = _cdiv(p.inner, blocks)
    return min(p.inner, max(16, _cdiv(w, 16) * 16))


def _auto_chunk(p, nthreads, block_width):
    """Default chunk length: the whole axis when the sequences alone give
    the threads independent work, else chunks of the time axis."""
    if p.n <= 4 * _MIN_CHUNK or p.inner > 1:
        # (the columns layout splits time into spans, not chunks)
        return max(p.n, 1)
    if p.complex or p.outer >= _LANES * nthreads:
        # complex rows are scanned whole: a few in lockstep per thread
        # (the chunked form of a complex row, local scans and their
        # corrections, costs more than its one pass)
        return p.n
    return _odd16(min(_ROW_CHUNK, max(_MIN_CHUNK, p.n // (_LANES * nthreads))))


def _auto_leaf(p, nthreads):
    """Leaf length of the associative scan: enough leaves for every thread
    (8 per thread in the rows layout)."""
    if p.inner == 1:
        return _odd16(min(4096, max(64, p.n // (_LANES * nthreads))))
    return max(16, _cdiv(p.n, max(8, 4 * nthreads)))


def _splits(p, nthreads, chunk, block_width):
    """Spans per sequence of the chunked scan, and the first one's length
    relative to the others."""
    if p.n == 0 or nthreads <= 1:
        return 1, 1.0
    if p.inner > 1:
        nlane = p.outer * _cdiv(p.inner, block_width)
        if nlane >= nthreads:
            return 1, 1.0
        return max(1, min(p.n, _cdiv(nthreads, nlane))), _LEAD_COLS
    nch = _cdiv(p.n, chunk)
    if p.outer >= nthreads:
        return 1, 1.0
    want = _cdiv(nthreads, p.outer)
    if p.complex:
        # equal spans of whole chunks
        span_ch = _cdiv(nch, min(nch, want))
        return _cdiv(nch, span_ch), 1.0
    return max(1, min(nch - 1, want)), _LEAD_ROWS[p.itemsize]


def make_plan(method, outer, n, inner, dtype, *, workers_threads, chunk_size=None,
              block_width=None, leaf_size=None, cap_by_size=True, cap_by_load=True):
    """The plan of `method` on a problem laid out as (outer, n, inner).

    `workers_threads` is `workers` already resolved to a thread count. With
    `cap_by_size`, fewer threads are planned for a problem too small to
    share (under MIN_PER_THREAD elements per thread); with `cap_by_load`,
    the plan runs on at most :func:`free_cores` threads. `chunk_size`,
    `block_width` and `leaf_size` override the automatic choices (None)."""
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    p = _Shape(outer, n, inner, dtype)
    layout = "rows" if inner == 1 else "cols"
    nt = max(1, int(workers_threads))
    if cap_by_size:
        nt = max(1, min(nt, (outer * n * inner) // MIN_PER_THREAD))
    if method == "sequential":
        nt = 1
    bw = _block_width(p, nt) if block_width is None else int(block_width)
    bw = max(1, min(bw, max(inner, 1)))
    splits, lead = 1, 1.0
    if method == "chunked":
        chunk = _auto_chunk(p, nt, bw) if chunk_size is None else int(chunk_size)
        chunk = max(1, min(chunk, max(n, 1)))
        splits, lead = _splits(p, nt, chunk, bw)
    elif method == "associative":
        chunk = _auto_leaf(p, nt) if leaf_size is None else int(leaf_size)
        chunk = max(1, min(chunk, max(n, 1)))
    else:
        chunk = max(n, 1)
    run = nt
    if cap_by_load and nt > 1:
        run = min(nt, free_cores())
        if run < nt and layout == "cols" and splits == 1 and block_width is None:
            # the channels of a step are independent: blocks as wide as the
            # threads that run need (narrower ones stream worse), same result
            bw = max(1, min(_block_width(p, run), max(inner, 1)))
    # in place: every kernel but the rows layout's chunked and tree scans,
    # which read the inputs of earlier steps again after writing them
    in_place = method == "sequential" or layout == "cols"
    stream = (layout == "cols" and not p.complex and method != "associative"
              and splits == 1 and outer * n * inner * p.itemsize >= _STREAM_BYTES)
    if (stream and run > 1 and block_width is None and bw < inner
            and bw * p.itemsize < _MIN_STREAM_RUN):
        # bound by memory, in runs too short to stream well: whole steps on
        # one thread (independent channels: the same result)
        run, bw = 1, max(inner, 1)
    return ScanPlan(method=method, layout=layout, chunk=chunk, block_width=bw,
                    splits=splits, lead=lead, threads=run,
                    decomposition_threads=nt, in_place=in_place, stream=stream)


def check_plan(plan, outer, n, inner):
    """(method, chunk, block width, splits, lead, threads) of `plan`,
    checked against a problem laid out as (outer, n, inner); the kernels'
    entry points call it before they run."""
    if plan.method not in METHODS:
        raise ValueError(f"plan.method must be one of {METHODS}, got {plan.method!r}")
    if plan.layout != ("rows" if inner == 1 else "cols"):
        raise ValueError(f"plan.layout {plan.layout!r} does not fit inner={inner}")
    chunk, width = int(plan.chunk), int(plan.block_width)
    splits, threads = int(plan.splits), int(plan.threads)
    lead = float(plan.lead)
    if chunk < 1 or width < 1 or splits < 1 or threads < 1:
        raise ValueError("plan.chunk, block_width, splits and threads must be >= 1, "
                         f"got {chunk}, {width}, {splits}, {threads}")
    if not 0.0 < lead <= 1.0:
        raise ValueError(f"plan.lead must be in (0, 1], got {lead}")
    if splits > 1:
        if plan.method != "chunked":
            raise ValueError(f"plan.splits must be 1 for {plan.method!r}, got {splits}")
        limit = n if inner > 1 else _cdiv(n, chunk)
        if splits > limit:
            raise ValueError(f"plan.splits must be at most {limit} here, got {splits}")
    return plan.method, chunk, width, splits, lead, threads


def kernel(plan):
    """The kernel entry point of the plan's layout."""
    if plan.layout == "rows":
        from . import _scan_rows
        return _scan_rows.scan
    from . import _scan_cols
    return _scan_cols.scan
