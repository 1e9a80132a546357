"""The linear recurrence h_t = a_t * h_{t-1} + b_t.

Every state space model and every linear-attention layer evaluates this
first-order recurrence along its sequence axis. This module computes it by
three algorithms that give the same result to rounding:

- :func:`~zilla_muf.sequential_scan` -- one pass along the axis (the reference);
- :func:`~zilla_muf.chunked_scan` -- the blocked algorithm of Mamba-2's SSD: local scans
  per chunk, a carry pass over the chunk boundaries, a correction; parallel;
- :func:`~zilla_muf.associative_scan` -- a work-efficient (Blelloch) tree scan of the
  affine monoid, parallel;

and :func:`~zilla_muf.linear_scan`, which dispatches to the fastest for the shape.
Every scan takes ``out=``: an array to write the result to, `b` itself for a
scan in place.
"""

import math

import numpy as np

from . import _buffers
from ._docs import fill_doc
from ._scan_plan import kernel, make_plan
from ._validation import (
    as_array,
    broadcast_shapes,
    dtype_operand,
    normalize_axis,
    positive_int,
    resolve_workers,
    result_dtype,
)

__all__ = ["associative_scan", "chunked_scan", "linear_scan", "sequential_scan"]

_METHODS = ("auto", "sequential", "chunked", "associative")
_KERNEL_DTYPES = frozenset(np.dtype(t) for t in (np.float32, np.float64,
                                                 np.complex64, np.complex128))

class _Problem:
    """A scan's arguments, checked and laid out as (outer, n, inner)."""

    __slots__ = ("a", "b", "h0", "shape", "axis", "dtype", "outer", "n", "inner",
                 "given")

    def __init__(self, a, b, h0, axis):
        if (h0 is None and type(a) is np.ndarray and type(b) is np.ndarray
                and a.dtype in _KERNEL_DTYPES and b.dtype == a.dtype
                and a.shape == b.shape and a.ndim > 0 and type(axis) is int
                and (axis == -1 or axis == a.ndim - 1)
                and a.flags.c_contiguous and b.flags.c_contiguous):
            # the common case, laid out without copies or broadcasting
            shape = a.shape
            self.dtype = a.dtype
            self.shape = shape
            self.axis = len(shape) - 1
            self.n = shape[-1]
            self.outer = math.prod(shape[:-1])
            self.inner = 1
            self.h0 = None
            self.a = a.reshape(self.outer, self.n, 1)
            self.b = b.reshape(self.outer, self.n, 1)
            self.given = (a, b, None)
            return
        a_in, b_in, h0_in = a, b, h0
        a = as_array(a, "a")
        b = as_array(b, "b")
        h0 = None if h0 is None else as_array(h0, "h0")
        # Python numbers are weak (NEP 50): float32 data with h0=0.5 stays float32
        self.dtype = result_dtype(a=dtype_operand(a_in, a), b=dtype_operand(b_in, b),
                                  h0=None if h0 is None else dtype_operand(h0_in, h0))
        shape = broadcast_shapes(a=a.shape, b=b.shape)
        if len(shape) == 0:
            raise ValueError(
                "`a` and `b` must have at least one dimension (the scan "
                "axis), got shapes () and ()"
            )
        ax = normalize_axis(axis, len(shape))
        self.shape = shape
        self.axis = ax
        self.n = shape[ax]
        self.outer = math.prod(shape[:ax])
        self.inner = math.prod(shape[ax + 1:])
        state_shape = shape[:ax] + shape[ax + 1:]
        if h0 is None:
            self.h0 = None
        else:
            try:
                h0 = np.broadcast_to(h0, state_shape)
            except ValueError:
                raise ValueError(
                    f"`h0` must broadcast to the result shape without the scan "
                    f"axis, {state_shape}, got shape {h0.shape}"
                ) from None
            self.h0 = np.ascontiguousarray(h0, dtype=self.dtype).reshape(
                self.outer, self.inner
            )
        self.a = self._layout(a)
        self.b = self._layout(b)
        self.given = (a, b, h0)

    def _layout(self, x):
        if x.shape != self.shape:
            x = np.broadcast_to(x, self.shape)
        return np.ascontiguousarray(x, dtype=self.dtype).reshape(
            self.outer, self.n, self.inner
        )

    def plan(self, method, workers=None, chunk_size=None):
        """The plan (see _scan_plan) of `method` on this problem."""
        return make_plan(method, self.outer, self.n, self.inner, self.dtype,
                         workers_threads=1 if workers is None else resolve_workers(workers),
                         chunk_size=chunk_size)

    def _target(self, out, in_place):
        """The (outer, n, inner) array the kernel writes, for `out`.

        `out` itself when it is C-contiguous and shares no memory with the
        kernel's `b`, or when it IS the kernel's `b` and `in_place` says
        that the kernel may write over `b` (it reads every b_t before it
        writes h_t at that address, and never again after); otherwise a
        new array, copied into `out` afterwards (a strided `out`, or one
        that overlaps `b`). Returns the array and whether it is `out`."""
        shape = (self.outer, self.n, self.inner)
        if out is not None and out.flags.c_contiguous:
            view = out.reshape(shape)
            if not np.may_share_memory(view, self.b):
                return view, True
            if in_place and (view.__array_interface__["data"][0]
                             == self.b.__array_interface__["data"][0]):
                return view, True
        if self.outer * self.n * self.inner * self.dtype.itemsize >= _buffers.MIN_BYTES:
            return _buffers.empty(shape, self.dtype, self.a, self.b), False
        return np.empty(shape, dtype=self.dtype), False

    def run(self, plan, reverse, return_final, out=None):
        """The kernels on the problem, as `plan` says."""
        if out is not None:
            _check_out(out, self.shape, self.dtype, self.given)
        res, direct = self._target(out, plan.in_place)
        kernel(plan)(plan, self.a, self.b, res, self.h0, bool(reverse))
        if out is None:
            h = res.reshape(self.shape)
        else:
            if not direct:
                np.copyto(out, res.reshape(self.shape))
            h = out
        if not return_final:
            return h
        state_shape = self.shape[: self.axis] + self.shape[self.axis + 1:]
        if self.n == 0:
            final = (np.zeros(state_shape, dtype=self.dtype) if self.h0 is None
                     else self.h0.reshape(state_shape).copy())
        else:
            last = 0 if reverse else self.n - 1
            final = res[:, last, :].reshape(state_shape).copy()
        return h, final

    @property
    def channels(self):
        return self.outer * self.inner


def _check_out(out, shape, dtype, given):
    """Raise unless `out` can take a scan's result of `shape` and `dtype`.

    `given` holds the caller's `a`, `b` and `h0` (None where absent):
    `out` may overlap `b` (the scan in place), not `a` or `h0`."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"`out` must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(
            f"`out` must have the result's shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise ValueError(
            f"`out` must have the result's dtype {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("`out` must be writable, got a read-only array")
    for name, x in zip(("a", "h0"), (given[0], given[2])):
        if x is not None and _overlaps(out, x):
            raise ValueError(
                f"`out` must not overlap `{name}` (only `b` may be scanned in place)")


def _overlaps(x, y):
    """Whether two arrays share memory; True when that is too hard to tell."""
    if not np.may_share_memory(x, y):
        return False
    try:
        return bool(np.shares_memory(x, y, max_work=1 << 12))
    except np.exceptions.TooHardError:
        return True


@fill_doc
def sequential_scan(a, b, h0=None, *, axis=-1, reverse=False, return_final=False,
                    out=None):
    r"""Scan :math:`h_t = a_t h_{t-1} + b_t` in one pass along `axis`.

    Parameters
    ----------
    %(scan_inputs)s
    %(scan_axis)s
    %(scan_out)s

    Returns
    -------
    %(scan_returns)s

    Raises
    ------
    TypeError
        If `out` is not an ndarray, or an input is not numeric (object, str,
        datetime, ...).
    ValueError
        If `a`, `b` and `h0` do not broadcast, or `axis` is out of range, or
        `out` has the wrong shape or dtype, is read-only or overlaps `a` or `h0`.

    See Also
    --------
    chunked_scan, associative_scan : parallel algorithms, same result.
    linear_scan : picks the fastest algorithm.
    buffer_cache : the reuse of the memory of large outputs.
    scipy.signal.lfilter : the constant-decay case, ``lfilter([1], [1, -a], b)``.

    Notes
    -----
    The recurrence, for :math:`t = 0, \dots, n-1`,

    .. math::

        h_t = a_t \, h_{t-1} + b_t, \qquad h_{-1} = h_0 ,

    is evaluated left to right in the input dtype, in one pass on one
    thread. Along a contiguous time axis, real dtypes advance four steps
    per link of the dependent chain: the maps of steps t..t+1, t..t+2 and
    t..t+3 are formed off the chain, e.g.
    :math:`h_{t+1} = (a_{t+1} a_t) h_{t-1} + (a_{t+1} b_t + b_{t+1})`, which
    shortens the chain of dependent multiply-adds fourfold and changes the
    rounding, not its size. Along a strided axis every step is one
    elementwise operation over the channels.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import sequential_scan
    >>> sequential_scan([0.5, 0.5, 0.5], [1.0, 1.0, 1.0])
    array([1.  , 1.5 , 1.75])
    >>> h, last = sequential_scan([0.5, 0.5], [1.0, 1.0], h0=2.0, return_final=True)
    >>> h, last
    (array([2., 2.]), array(2.))

    The time axis can be any axis; here the steps run down the rows:

    >>> sequential_scan(np.full((3, 2), 0.5), np.ones((3, 2)), axis=0)
    array([[1.  , 1.  ],
           [1.5 , 1.5 ],
           [1.75, 1.75]])
    """
    p = _Problem(a, b, h0, axis)
    return p.run(p.plan("sequential"), reverse, return_final, out=out)


@fill_doc
def chunked_scan(a, b, h0=None, *, chunk_size=None, axis=-1, reverse=False,
                 return_final=False, workers=None, out=None):
    r"""Scan :math:`h_t = a_t h_{t-1} + b_t` by chunks, in parallel.

    The blocked algorithm of Mamba-2's state space duality: each chunk is
    scanned from zero independently, a carry pass over the chunk boundaries
    gives the state entering each chunk, and a correction adds it, carried by
    the chunk's decays.

    Parameters
    ----------
    %(scan_inputs)s
    chunk_size : int, optional
        Steps per chunk. The default uses the whole axis (no carry pass) when
        the channels alone give every thread enough independent work, or
        the dtype is complex, and otherwise splits the axis into a few
        chunks per thread.
    %(scan_axis)s
    %(scan_workers)s
    %(scan_out)s

    Returns
    -------
    %(scan_returns)s

    Raises
    ------
    TypeError
        If `out` is not an ndarray, or an input is not numeric.
    ValueError
        If the shapes do not broadcast, `axis` is out of range, `chunk_size`
        is not a positive integer or `workers` is 0, or `out` has
        the wrong shape or dtype, is read-only or overlaps `a` or `h0`.

    See Also
    --------
    sequential_scan, associative_scan, linear_scan

    Notes
    -----
    With chunks :math:`[s_k, e_k)`, the local scans give
    :math:`\tilde h_t` (from 0, or from :math:`h_0` in the first chunk) and
    the decay products :math:`P_k = \prod_{t \in k} a_t`. The carry pass
    computes the state entering each chunk,
    :math:`c_{k+1} = P_k c_k + \tilde h_{e_k - 1}`, and the correction adds
    :math:`\left(\prod_{u=s_k}^{t} a_u\right) c_k` to :math:`\tilde h_t`.
    With at least as many sequences (or channel blocks) as threads, each
    thread scans whole sequences in one pass and `chunk_size` does not
    matter. Otherwise, along a contiguous time axis, every sequence is cut
    at chunk boundaries into spans. For complex dtypes (only with a
    `chunk_size` shorter than the axis: by default complex sequences are
    scanned whole, a few in lockstep per thread, which is faster than their
    chunked form) there is one span per thread: each is scanned in one pass
    (the first from :math:`h_0`, the others from zero) recording its
    chunks' products, and the carry and correction above run over the
    chunks of the later spans, in parallel.
    For real dtypes, T threads share a sequence cut into T + 1 spans: the
    first is scanned from :math:`h_0` while spans 1 to T - 1 are reduced to
    their affine maps (the carry pass's :math:`P_k` and
    :math:`\tilde h_{e_k - 1}`, by a tree over vector lanes that costs
    about half a scan, which is why the first span is about half as long),
    and after the carry pass spans 1 to T - 1 and the last are each scanned
    once from the state entering them: the local scan and its correction
    in one pass. The real-dtype scans of this layout keep 8 (float32) or 4
    (float64) consecutive steps in the lanes of a vector register; each
    lane advances by the affine map of the last 8 (or 4) steps, formed off
    the dependent chain. Along a strided time axis (channels contiguous),
    the channels of every step are split into one block per thread when
    each block is at least 512 bytes wide; the threads then also share out
    the faulting-in of the fresh output's pages. With fewer channels the
    time axis is cut into spans as for real sequences above (here
    `chunk_size` does not matter). Decay products that fall below the
    smallest normal number are flushed to zero, which changes a state by
    less than that number times the state it scales.

    The result does not depend on `workers` when every sequence stays on
    one thread; where one is split, the split points, and so the rounding,
    depend on `workers` (the threads that `workers` asks for, capped by
    size), never on how many cores are free to run them.

    Rounding differs from :func:`sequential_scan` only in the order of the
    operations; for :math:`|a_t| \le 1` the error is of the same size.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import chunked_scan, sequential_scan
    >>> rng = np.random.default_rng(0)
    >>> a = rng.uniform(0.9, 1.0, size=(4, 10_000))
    >>> b = rng.standard_normal((4, 10_000))
    >>> h = chunked_scan(a, b, chunk_size=1000, workers=2)
    >>> bool(np.allclose(h, sequential_scan(a, b)))
    True
    """
    chunk_size = positive_int(chunk_size, "chunk_size", allow_none=True)
    resolve_workers(workers)
    p = _Problem(a, b, h0, axis)
    return p.run(p.plan("chunked", workers, chunk_size), reverse, return_final,
                 out=out)


@fill_doc
def associative_scan(a, b, h0=None, *, axis=-1, reverse=False,
                     return_final=False, workers=None, out=None):
    r"""Scan :math:`h_t = a_t h_{t-1} + b_t` as a parallel prefix (tree) scan.

    The recurrence is the prefix product of the affine maps
    :math:`x \mapsto a_t x + b_t` under the associative operation
    :math:`(a_1, b_1) \circ (a_2, b_2) = (a_1 a_2,\ a_2 b_1 + b_2)`,
    evaluated by a work-efficient (Blelloch) tree scan.

    Parameters
    ----------
    %(scan_inputs)s
    %(scan_axis)s
    %(scan_workers)s
    %(scan_out)s

    Returns
    -------
    %(scan_returns)s

    Raises
    ------
    TypeError
        If `out` is not an ndarray, or an input is not numeric.
    ValueError
        If the shapes do not broadcast, `axis` is out of range or `workers`
        is 0, or `out` has
        the wrong shape or dtype, is read-only or overlaps `a` or `h0`.

    See Also
    --------
    sequential_scan, chunked_scan, linear_scan

    Notes
    -----
    The sequence is cut into leaf blocks. Each leaf is reduced, in parallel,
    to its map :math:`(A, B) = (\prod a_t,\ \text{scan of } b \text{ from } 0)`
    (the first from :math:`h_0`). An up-sweep and a down-sweep over the leaf
    maps (:math:`O(m)` combines in :math:`2 \log_2 m` levels, each level in
    parallel) give the exclusive prefix, the state entering each leaf; every
    leaf is then scanned from it, in parallel. Total work is :math:`O(n)`.
    Along a strided time axis the first leaf is scanned from :math:`h_0`
    during the reductions instead (its map is the state it ends in), and
    the last is not reduced (its map enters no other leaf's state), so
    their inputs are read once, the others' twice.

    .. versionadded:: 0.1.0

    References
    ----------
    .. [1] G. E. Blelloch, "Prefix sums and their applications", CMU-CS-90-190,
       1990.

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import associative_scan
    >>> associative_scan([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])
    array([ 1.,  3.,  6., 10.])
    >>> associative_scan([2.0, 2.0, 2.0], [0.0, 0.0, 1.0], reverse=True)
    array([4., 2., 1.])
    """
    resolve_workers(workers)
    p = _Problem(a, b, h0, axis)
    return p.run(p.plan("associative", workers), reverse, return_final, out=out)


@fill_doc
def linear_scan(a, b, h0=None, *, method="auto", axis=-1, reverse=False,
                return_final=False, workers=None, chunk_size=None, out=None):
    r"""Scan :math:`h_t = a_t h_{t-1} + b_t` with a chosen or automatic method.

    Parameters
    ----------
    %(scan_inputs)s
    method : {"auto", "sequential", "chunked", "associative"}, optional
        The algorithm. "auto" (default) chooses as described in the Notes.
    %(scan_axis)s
    workers : int, optional
        Threads to use (ignored by "sequential"): None is 1, -1 all cores.
    chunk_size : int, optional
        Steps per chunk for "chunked" (and "auto" when it picks it).
    %(scan_out)s

    Returns
    -------
    %(scan_returns)s

    Raises
    ------
    TypeError
        If `out` is not an ndarray, or an input is not numeric.
    ValueError
        If `method` is unknown, the shapes do not broadcast, `axis` is out of
        range, `chunk_size` is not a positive integer or `workers` is 0, or `out` has
        the wrong shape or dtype, is read-only or overlaps `a` or `h0`.

    See Also
    --------
    sequential_scan, chunked_scan, associative_scan

    Notes
    -----
    ``method="auto"`` uses :func:`chunked_scan`. Its single-thread pass is
    the fastest of the three algorithms on one thread as well: along a
    contiguous time axis it advances blocks of steps in vector registers
    (float32, float64), and along a strided one it advances a wide block of
    channels per step. With several threads it splits the work over rows
    or channel blocks when there are enough of them, and over spans of the
    time axis when there are not (complex sequences along a contiguous
    axis are not split); it uses at most one thread per 32768
    elements, since starting a thread costs more than it saves on less. The
    tree scan does strictly more memory traffic than the chunked scan, so
    "auto" never picks it; it is there for its :math:`O(\log n)`-depth
    structure and as an independent check.

    Every method writes to `out` when it is given, and otherwise returns a
    new array. A new array's pages are fresh memory, which the system
    zeroes on first touch: for tens of megabytes that takes as long again
    as the scan itself. A repeated call that passes the same `out` (or
    ``out=b``) avoids it; so does :func:`~zilla_muf.buffer_cache`, when
    turned on, by reusing the memory of freed outputs of 1 MiB or more.

    .. versionchanged:: 0.2.0
       The `out` argument.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> from zilla_muf import linear_scan
    >>> linear_scan([0.5, 0.5, 0.5], [1.0, 1.0, 1.0], method="associative")
    array([1.  , 1.5 , 1.75])
    """
    if method not in _METHODS:
        raise ValueError(
            f"`method` must be one of {', '.join(map(repr, _METHODS))}, got {method!r}"
        )
    kwargs = dict(axis=axis, reverse=reverse, return_final=return_final, out=out)
    if method == "sequential":
        return sequential_scan(a, b, h0, **kwargs)
    if method == "associative":
        return associative_scan(a, b, h0, workers=workers, **kwargs)
    return chunked_scan(a, b, h0, chunk_size=chunk_size, workers=workers, **kwargs)


# Gradients
#
# The adjoint of h_t = a_t h_{t-1} + b_t (h_{-1} = h0) is the reverse scan
# g_t = c_t + conj(a_{t+1}) g_{t+1}, g_{n-1} = c_{n-1} + c_final: the same
# recurrence run the other way over the cotangent, with the decays shifted
# by one step and conjugated. Then db = g, da_t = g_t conj(h_{t-1}) and
# dh0 = conj(a_0) g_0. A reverse scan's adjoint is the forward scan, mirrored.
# The pullback keeps a, h0 and the states h (the output).

from . import _vjp_kernels  # noqa: E402
from ._vjp import defvjp  # noqa: E402


def _conj(x):
    return x.conj() if x.dtype.kind == "c" else x


def _real_scan_backward(a, h, c, cf, h0, ax, workers):
    """The real forward scan's pullback in one compiled reverse pass
    (_vjp_kernels.scan_backward) on the (P, n, Q) view, time in the middle."""
    shape, dtype = h.shape, h.dtype
    n = shape[ax]
    P = int(np.prod(shape[:ax], dtype=np.int64))
    Q = int(np.prod(shape[ax + 1:], dtype=np.int64))

    def view3(x):
        return np.ascontiguousarray(x, dtype=dtype).reshape(P, n, Q)

    def view2(x):
        if x is None:
            return np.empty((0, 0), dtype)
        x = np.broadcast_to(np.asarray(x, dtype=dtype), shape[:ax] + shape[ax + 1:])
        return np.ascontiguousarray(x).reshape(P, Q)

    ga, gb = _pair_empty(shape, dtype)
    gh0 = np.empty(shape[:ax] + shape[ax + 1:], dtype)
    _vjp_kernels.scan_backward(view3(a), h.reshape(P, n, Q),
                               view3(np.broadcast_to(c, shape)),
                               view2(cf), view2(h0), cf is not None, h0 is not None,
                               ga.reshape(P, n, Q), gb.reshape(P, n, Q),
                               gh0.reshape(P, Q), resolve_workers(workers))
    return {"a": ga, "b": gb, "h0": gh0}


# Bytes of the two outputs of the complex rows pullback from which they are
# written with streaming stores (_scanback.h). Measured in one process,
# alternating: at (8, 16384) complex128 (4 MiB of outputs) and beyond,
# 15-25% faster than plain stores; at 1 MiB the same; in the caches,
# slower. The real rows gained nothing from streaming at 8 to 128 MiB of
# outputs, and do not stream.
_STREAM_BYTES = 4 << 20


def _pair_empty(shape, dtype, a=None, b=None):
    """Two uninitialised arrays of `shape` that share one allocation: from
    the allocator of the scans' own outputs when large (as the forward's;
    placed off the pages' offsets of the inputs `a` and `b`)."""
    shape = (2,) + tuple(shape)
    if math.prod(shape) * np.dtype(dtype).itemsize >= _buffers.MIN_BYTES:
        both = _buffers.empty(shape, dtype, a, b)
    else:
        both = np.empty(shape, dtype)
    return both[0], both[1]


def _rows_scan_backward(a, h, c, cf, h0, reverse, workers):
    """The pullback along contiguous rows, time last, in one compiled pass
    per row (real) or per group of four rows (complex): the adjoint scan and
    da together (_vjp_kernels.scan_backward_rows, cscan_backward_rows)."""
    shape, dtype = h.shape, h.dtype
    n = shape[-1]
    P = h.size // n
    complex_ = dtype.kind == "c"
    rdt = np.empty(0, dtype).real.dtype

    def rows(x):
        x = np.ascontiguousarray(np.broadcast_to(x, shape), dtype=dtype).reshape(P, n)
        return x.view(rdt) if complex_ else x

    def states(x):
        if x is None:
            return np.empty((0, 2) if complex_ else 0, rdt)
        x = np.ascontiguousarray(np.broadcast_to(np.asarray(x, dtype=dtype), shape[:-1]),
                                 dtype=dtype).reshape(P, 1)
        return x.view(rdt) if complex_ else x.reshape(P)

    # ga and gb in one block: two large blocks allocated and freed on every
    # call can make the C allocator return and re-map their pages each time
    # ga and gb placed half a page off h, whose loads run beside their
    # stores (streaming stores wait on loads that alias them in the page)
    a, c = rows(a), rows(c)
    hv = h.reshape(P, n)
    ga, gb = _pair_empty(shape, dtype, hv, a)
    gh0 = np.empty(shape[:-1], dtype)
    stream = complex_ and 2 * ga.nbytes >= _STREAM_BYTES
    if complex_:
        kern = _vjp_kernels.cscan_backward_rows
        out2 = (ga.reshape(P, n).view(rdt), gb.reshape(P, n).view(rdt),
                gh0.reshape(P, 1).view(rdt))
    else:
        kern = _vjp_kernels.scan_backward_rows
        out2 = (ga.reshape(P, n), gb.reshape(P, n), gh0.reshape(P))
    kern(a, hv.view(rdt) if complex_ else hv,
         c, states(cf), states(h0), cf is not None, h0 is not None,
         bool(reverse), *out2, workers, *((stream,) if complex_ else ()))
    return {"a": ga, "b": gb, "h0": gh0}


def _scan_rule(fun):
    def rule(args):
        out = fun(**args)
        h = out[0] if args["return_final"] else out
        shape, dtype = h.shape, h.dtype
        ax = normalize_axis(args["axis"], h.ndim)
        n = shape[ax]
        reverse = bool(args["reverse"])
        a = np.broadcast_to(np.asarray(args["a"]), shape)
        h0 = args["h0"]
        state_shape = shape[:ax] + shape[ax + 1:]
        h0 = (None if h0 is None
              else np.broadcast_to(np.asarray(h0, dtype=dtype), state_shape))
        # the adjoint scan takes the forward's method, chunk and workers,
        # never its output buffer (`out`, where a scan has one)
        options = {k: v for k, v in args.items()
                   if k not in ("a", "b", "h0", "reverse", "return_final", "out")}

        def at(i):
            return (slice(None),) * ax + (i,)

        def backward(ct):
            c, cf = ct if args["return_final"] else (ct, None)
            if n == 0:
                zeros = np.zeros(shape, dtype=dtype)
                return {"a": zeros, "b": zeros,
                        "h0": np.zeros(state_shape, dtype) if cf is None else cf}
            # time not last (rows of Q > 1 values per step): one compiled
            # pass, vectorised across the row
            if (dtype.kind == "f" and not reverse and ax < h.ndim - 1
                    and h.flags.c_contiguous):
                return _real_scan_backward(a, h, c, cf, h0, ax, args.get("workers"))
            # time last: one fused pass per row (real) or per four rows
            # (complex), when there are rows enough for the threads; else
            # (a few long rows, strided or other layouts) the forward's own
            # scan run backwards and two elementwise passes
            if ax == h.ndim - 1 and h.flags.c_contiguous and dtype in _KERNEL_DTYPES:
                threads = resolve_workers(args.get("workers"))
                rows = h.size // n
                if (rows if dtype.kind == "f" else rows // 4) >= threads:
                    return _rows_scan_backward(a, h, c, cf, h0, reverse, threads)
            # decays of the adjoint: conj(a) shifted one step towards the start
            # (forward) or the end (reverse), 1 where the final cotangent enters
            ad = np.empty(shape, dtype=dtype)
            first, rest = (n - 1, slice(0, n - 1)) if not reverse else (0, slice(1, n))
            src = slice(1, n) if not reverse else slice(0, n - 1)
            ad[at(rest)] = _conj(a[at(src)])
            ad[at(first)] = 1
            g = fun(ad, c, cf, reverse=not reverse, **options)
            # the state before each step: h shifted the other way, h0 at the
            # start; written over the adjoint's decays (no longer needed: no
            # second allocation)
            ga = ad
            np.multiply(g[at(src)], _conj(h[at(rest)]), out=ga[at(src)])
            start = 0 if not reverse else n - 1
            one = at(slice(start, start + 1))
            if h0 is None:
                ga[one] = 0
            else:
                np.multiply(g[one], _conj(np.expand_dims(h0, ax)), out=ga[one])
            gh0 = (_conj(a[one]) * g[one]).astype(dtype, copy=False)
            gh0 = gh0.reshape(state_shape)
            return {"a": ga, "b": g, "h0": gh0}

        return out, backward

    return rule


for _fun in (sequential_scan, chunked_scan, associative_scan, linear_scan):
    defvjp(_fun, "a", "b", "h0")(_scan_rule(_fun))
del _fun
