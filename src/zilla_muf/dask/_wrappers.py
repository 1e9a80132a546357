"""The public functions of :mod:`zilla_muf.dask`: graphs of in-memory calls.

Each function checks and lays out its operands, then builds a graph (see
:mod:`zilla_muf.dask._carry`) whose tasks call the function of the same name
in ``zilla_muf`` on one block each. Docstrings point to the in-memory
function for the mathematics and say only what the chunking changes.
"""

import functools
import math
import operator
import threading
from itertools import product

import numpy as np
import dask.array as da
from dask.array.core import unify_chunks
from dask.array.reductions import cumreduction

from .. import scan as _scan
from .. import selective as _selective
from .. import ssd as _ssd
from .. import stable_ops as _stable
from .. import structured as _structured
from ..convolution import fft_conv as _fft_conv
from .._validation import (
    broadcast_shapes,
    normalize_axis,
    positive_int,
    resolve_workers,
    result_dtype,
)
from . import _carry
from ._carry import (
    Blocks,
    Graph,
    affine_carry,
    block_key,
    independent_copies,
    lazy,
    meta_of,
    single_block,
    state_chain,
)

__all__ = [
    "associative_scan", "cauchy_matvec", "causal_conv1d", "chunked_scan",
    "fft_conv", "linear_scan", "log_softmax", "log_sum_exp", "logcumsumexp",
    "rms_norm", "selective_scan", "sequential_scan", "softmax",
    "ssd_chunk_scan_combined", "toeplitz_matvec", "vandermonde_matvec",
]

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _check_workers(workers):
    if workers is not None:
        resolve_workers(workers)
    return workers


# --------------------------------------------------------------------------
# Scans
# --------------------------------------------------------------------------


def _scan_run(fn, kw, a, b, h_in, reverse, final):
    return fn(a, b, h_in, reverse=reverse, return_final=final, **kw)


_scratch = threading.local()


def _scratch_out(shape, dtype):
    """A per-thread buffer for the states a summary computes and discards:
    a worker reuses warm memory from block to block instead of faulting in
    a fresh block-sized output every time (the pages of a new array cost
    about as much as the scan that fills them)."""
    buf = getattr(_scratch, "buf", None)
    size = math.prod(shape)
    if buf is None or buf.dtype != dtype or buf.size < size:
        buf = np.empty(max(size, 1), dtype=dtype)
        _scratch.buf = buf
    return buf[:size].reshape(shape)


# The product over a block's steps is formed from rows of this many steps,
# multiplied elementwise (vectorised) before the one row is reduced.
_PROD_ROW = 256


def _block_product(a, shape, dtype):
    """The product of `a` (broadcast to `shape`) over its last axis.

    A reduction along the contiguous axis is a chain of dependent scalar
    products; splitting the axis into rows of _PROD_ROW steps (a view) and
    multiplying the rows elementwise first runs in vector lanes (about 7x
    faster); the order of the factors changes the rounding only."""
    x = np.broadcast_to(np.asarray(a, dtype=dtype), shape)
    n = shape[-1]
    q = n // _PROD_ROW
    if q < 2:
        return np.multiply.reduce(x, axis=-1)
    head = x[..., :q * _PROD_ROW].reshape(shape[:-1] + (q, _PROD_ROW))
    prod = np.multiply.reduce(np.multiply.reduce(head, axis=-2), axis=-1)
    if q * _PROD_ROW < n:
        prod = prod * np.multiply.reduce(x[..., q * _PROD_ROW:], axis=-1)
    return np.asarray(prod, dtype=dtype)


def _scan_summary(fn, kw, a, b, reverse, dtype):
    """(P, E) of one block: the product of `a` and the end state from 0,
    in the result dtype `dtype`.

    The block's states are written to a reused per-thread buffer (they are
    not kept)."""
    shape = np.broadcast_shapes(np.shape(a), np.shape(b))
    # a zero start of the result dtype: the block is summarised in the dtype
    # the whole scan computes in (float32 blocks under a float64 h0 too)
    _, end = fn(a, b, np.zeros(shape[:-1], dtype), reverse=reverse,
                return_final=True, out=_scratch_out(shape, dtype), **kw)
    return _block_product(a, shape, dtype), end


def _scan_graph(fn, a, b, h0, axis, reverse, return_final, kw):
    a, b, h0 = lazy(a, "a"), lazy(b, "b"), lazy(h0, "h0")
    dtype = result_dtype(a=meta_of(a), b=meta_of(b), h0=meta_of(h0))
    shape = broadcast_shapes(a=np.shape(a), b=np.shape(b))
    if not shape:
        raise ValueError("`a` and `b` must not both be 0-d: the scan needs an axis")
    ndim = len(shape)
    ax = normalize_axis(axis, ndim)
    ops = {}
    for name, x in (("a", a), ("b", b)):
        if isinstance(x, da.Array):
            if x.shape != shape:
                x = da.broadcast_to(x, shape)
            ops[name] = x if ax == ndim - 1 else da.moveaxis(x, ax, -1)
        else:
            ops[name] = x
    arrays = [v for v in ops.values() if isinstance(v, da.Array)]
    if not arrays:
        ops["b"] = da.broadcast_to(da.asarray(np.asarray(b)), shape)
        arrays = [ops["b"]]
    ind = _LETTERS[:ndim]
    if len(arrays) == 2 and ops["a"].chunks != ops["b"].chunks:
        _, (ops["a"], ops["b"]) = unify_chunks(ops["a"], ind, ops["b"], ind)
    ref = ops["a"] if isinstance(ops["a"], da.Array) else ops["b"]
    lead_shape = ref.shape[:-1]
    lead_chunks = ref.chunks[:-1]
    if isinstance(h0, da.Array):
        try:
            h0 = da.broadcast_to(h0, lead_shape)
        except ValueError:
            raise ValueError(
                f"`h0` must broadcast to the result shape without `axis`, "
                f"{lead_shape}, got shape {h0.shape}"
            ) from None
        h0 = h0.rechunk(lead_chunks)
    nt = len(ref.chunks[-1])
    # The first pass (summaries) reads a clone of the inputs' graph, so that
    # no input block is held in memory from the first pass to the second.
    first = dict(ops)
    if nt > 2:
        names = [k for k, v in ops.items() if isinstance(v, da.Array)]
        first.update(zip(names, independent_copies(*(ops[k] for k in names))))
    graph = Graph("scan", *ops.values(), *first.values(), h0)
    order = list(range(nt))[::-1] if reverse else list(range(nt))
    run = functools.partial(_scan_run, fn, kw)
    summ = functools.partial(_scan_summary, fn, kw, dtype=dtype)
    lead_grid = tuple(len(c) for c in lead_chunks)
    outs = np.empty(lead_grid + (nt,), dtype=object)
    finals = np.empty(lead_grid, dtype=object)
    sources = {id(x): Blocks(x) for x in (*ops.values(), *first.values())
               if isinstance(x, da.Array)}
    for J in np.ndindex(lead_grid):
        def blk(name, k, src=ops):
            x = src[name]
            return sources[id(x)][J + (k,)] if isinstance(x, da.Array) else x
        start = block_key(h0, J) if isinstance(h0, da.Array) else h0
        if nt == 1 and not return_final:
            outs[J + (0,)] = graph.inline(run, blk("a", 0), blk("b", 0), start,
                                          reverse, False)
            continue
        k0 = order[0]
        res = graph.task(run, blk("a", k0), blk("b", k0), start, reverse, True)
        outs[J + (k0,)] = graph.task(operator.getitem, res, 0)
        if nt == 1:
            finals[J] = graph.task(operator.getitem, res, 1)
            continue
        summaries = [graph.task(summ, blk("a", k, first), blk("b", k, first), reverse)
                     for k in order[1:-1]]
        states = affine_carry(graph, summaries, graph.task(operator.getitem, res, 1),
                              dtype, _carry.TREE_MIN_BLOCKS)
        for k, state in zip(order[1:-1], states):
            outs[J + (k,)] = graph.inline(run, blk("a", k), blk("b", k), state,
                                          reverse, False)
        last = order[-1]
        if return_final:
            res = graph.task(run, blk("a", last), blk("b", last), states[-1],
                             reverse, True)
            outs[J + (last,)] = graph.task(operator.getitem, res, 0)
            finals[J] = graph.task(operator.getitem, res, 1)
        else:
            outs[J + (last,)] = graph.inline(run, blk("a", last), blk("b", last),
                                             states[-1], reverse, False)
    h = graph.array(fn.__name__, outs, ref.chunks, dtype)
    if ax != ndim - 1:
        h = da.moveaxis(h, -1, ax)
    if not return_final:
        return h
    return h, graph.array(fn.__name__ + "-final", finals, lead_chunks, dtype)


_SCAN_DOC = """{summary}

    The same arguments and results as :func:`zilla_muf.{name}`, on Dask
    arrays (array_like inputs are wrapped), returned lazily.

    Parameters
    ----------
    a, b : dask.array.Array or array_like
        Decays and inputs; they broadcast, and may be chunked in any way,
        along `axis` too. Chunks of `a` and `b` are unified.
    h0 : dask.array.Array or array_like, optional
        The state before the first step, broadcastable to the result shape
        without `axis`; default 0.
    axis, reverse, return_final{extra_names}
        As in :func:`zilla_muf.{name}`.{extra_doc}

    Returns
    -------
    h : dask.array.Array
        Lazy, of the result dtype, chunked like the broadcast inputs.
    h_final : dask.array.Array
        Only with ``return_final=True``: the last state computed.

    Raises
    ------
    ValueError
        For the shapes and options :func:`zilla_muf.{name}` rejects, and for
        chunks of unknown size.
    TypeError
        For non-numeric dtypes.

    See Also
    --------
    zilla_muf.{name} : the in-memory function each block runs.

    Notes
    -----
    Every block runs :func:`zilla_muf.{name}`. With ``nb`` blocks along
    `axis`, the blocks after the first (in scan order) first report a
    summary, the product :math:`P_k = \\prod_{{t \\in k}} a_t` and the end
    state :math:`E_k` from a zero start; the states entering the blocks are
    :math:`s_{{k+1}} = P_k s_k + E_k` (a chain, or a prefix tree from 64
    blocks on), and each block is recomputed from its incoming state as
    ``h0``. The output is exact to rounding for every chunking; a block's
    output is never held while the carry runs. With more than two blocks
    the first pass reads a clone of the inputs' graph (a second read of a
    Zarr store, or a recomputation of whatever produced `a` and `b`), so
    that no input block stays in memory between the passes: persist an
    expensive upstream graph first if it fits in memory.

    .. versionadded:: 0.2.0

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> from zilla_muf.dask import {name}
    >>> a = da.full(6, 0.5, chunks=2)
    >>> b = da.ones(6, chunks=2)
    >>> h = {name}(a, b)
    >>> h.chunks
    ((2, 2, 2),)
    >>> np.round(h.compute(), 6)
    array([1.     , 1.5    , 1.75   , 1.875  , 1.9375 , 1.96875])
    """


def sequential_scan(a, b, h0=None, *, axis=-1, reverse=False, return_final=False):
    return _scan_graph(_scan.sequential_scan, a, b, h0, axis, reverse,
                       return_final, {})


def chunked_scan(a, b, h0=None, *, chunk_size=None, axis=-1, reverse=False,
                 return_final=False, workers=None):
    positive_int(chunk_size, "chunk_size", allow_none=True)
    kw = {"chunk_size": chunk_size, "workers": _check_workers(workers)}
    return _scan_graph(_scan.chunked_scan, a, b, h0, axis, reverse,
                       return_final, kw)


def associative_scan(a, b, h0=None, *, axis=-1, reverse=False,
                     return_final=False, workers=None):
    kw = {"workers": _check_workers(workers)}
    return _scan_graph(_scan.associative_scan, a, b, h0, axis, reverse,
                       return_final, kw)


def linear_scan(a, b, h0=None, *, method="auto", axis=-1, reverse=False,
                return_final=False, workers=None, chunk_size=None):
    if method not in ("auto", "sequential", "chunked", "associative"):
        raise ValueError(
            "`method` must be one of 'auto', 'sequential', 'chunked', "
            f"'associative', got {method!r}"
        )
    positive_int(chunk_size, "chunk_size", allow_none=True)
    kw = {"method": method, "workers": _check_workers(workers),
          "chunk_size": chunk_size}
    return _scan_graph(_scan.linear_scan, a, b, h0, axis, reverse,
                       return_final, kw)


_EXTRA = {
    "sequential_scan": ("", ""),
    "chunked_scan": (", chunk_size, workers",
                     "\n        `workers` threads run inside each block."),
    "associative_scan": (", workers",
                         "\n        `workers` threads run inside each block."),
    "linear_scan": (", method, workers, chunk_size",
                    "\n        `workers` threads run inside each block."),
}
for _f, _s in ((sequential_scan, "Sequential scan of a Dask array, block by block."),
               (chunked_scan, "Chunked scan of a Dask array, block by block."),
               (associative_scan, "Associative (tree) scan of a Dask array, block by block."),
               (linear_scan, "The linear recurrence on a Dask array, block by block.")):
    _names, _doc = _EXTRA[_f.__name__]
    _f.__doc__ = _SCAN_DOC.format(summary=_s, name=_f.__name__,
                                  extra_names=_names, extra_doc=_doc)


# --------------------------------------------------------------------------
# Softmax family: two passes along a chunked axis
# --------------------------------------------------------------------------


def _probe_dtype(fn, x, **kw):
    """The result dtype of `fn` on a tiny array of `x`'s dtype (and its checks)."""
    return fn(np.zeros((1,) * max(x.ndim, 1), dtype=x.dtype), **kw).dtype


def _lse_block(x, axis, keepdims, workers=None, computing_meta=False, **_):
    (ax,) = axis if isinstance(axis, tuple) else (axis,)
    return _stable.log_sum_exp(x, axis=ax, keepdims=keepdims, workers=workers)


def _lse_graph(x, ax, keepdims, dtype, workers):
    block = functools.partial(_lse_block, workers=workers)
    return da.reduction(x, chunk=block, aggregate=block, combine=block,
                        axis=ax, keepdims=keepdims, dtype=dtype,
                        concatenate=True,
                        meta=np.empty((0,) * (x.ndim if keepdims else x.ndim - 1),
                                      dtype=dtype))


def _x_and_axis(x, axis):
    x = lazy(x, "x")
    if not isinstance(x, da.Array):
        x = da.asarray(np.asarray(x))
    if x.ndim == 0:
        raise ValueError("`x` must have at least one dimension, got shape ()")
    return x, normalize_axis(axis, x.ndim)


def _block_max(x, dtype):
    return np.max(np.asarray(x, dtype=dtype), axis=-1, keepdims=True)


def _block_expsum(x, m, dtype):
    """Per-row sum of exp(x - m) over a block (m: the row's maximum)."""
    with np.errstate(invalid="ignore"):
        return np.sum(np.exp(np.asarray(x, dtype=dtype) - m), axis=-1, keepdims=True)


def _normalise_block(x, m, s, dtype, exp):
    """softmax (exp=True) or log_softmax of a block, given the row's maximum
    `m` and ``s = sum exp(x - m)``. A row whose maximum is not finite is nan
    throughout, as in the in-memory functions."""
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.asarray(x, dtype=dtype) - m
        out = np.exp(d) / s if exp else d - np.log(s)
    return np.where(np.isfinite(m), out, np.nan).astype(dtype, copy=False)


def _normalised(fn, exp, x, axis, workers):
    x, ax = _x_and_axis(x, axis)
    _check_workers(workers)
    dtype = _probe_dtype(fn, x)
    meta = np.empty((0,) * x.ndim, dtype)
    if len(x.chunks[ax]) == 1:
        return x.map_blocks(functools.partial(fn, axis=ax, workers=workers),
                            dtype=dtype, meta=meta)
    # two passes over the rows: their maximum m and s = sum exp(x - m)
    # (tree reductions), then each block is normalised by (m, s)
    xl = x if ax == x.ndim - 1 else da.moveaxis(x, ax, -1)
    m = da.max(xl.astype(dtype), axis=-1, keepdims=True)
    s = da.map_blocks(functools.partial(_block_expsum, dtype=dtype), xl, m,
                      dtype=dtype, chunks=xl.chunks[:-1] + ((1,) * len(xl.chunks[-1]),),
                      meta=meta).sum(axis=-1, keepdims=True)
    out = da.map_blocks(functools.partial(_normalise_block, dtype=dtype, exp=exp),
                        xl, m, s, dtype=dtype, meta=meta)
    return out if ax == x.ndim - 1 else da.moveaxis(out, -1, ax)


_NORM_DOC = """{summary}

    The same arguments and result as :func:`zilla_muf.{name}`, on a Dask
    array, returned lazily.

    Parameters
    ----------
    x : dask.array.Array or array_like
        The input, chunked in any way.
    axis : int, optional
        The axis to normalise along; it may be split into several blocks.
    workers : int, optional
        Threads inside each block, as in :func:`zilla_muf.{name}`.

    Returns
    -------
    out : dask.array.Array
        Lazy, shaped and chunked like `x`, of the result dtype.

    Raises
    ------
    ValueError
        An `axis` out of range, chunks of unknown size.
    TypeError
        A dtype :func:`zilla_muf.{name}` rejects.

    See Also
    --------
    zilla_muf.{name} : the in-memory function.
    zilla_muf.dask.log_sum_exp : the same rows reduced.

    Notes
    -----
    When `axis` is one block, each block runs :func:`zilla_muf.{name}`.
    Otherwise two passes, as the in-memory function shifts by the maximum:
    tree reductions give each row's maximum :math:`m` and
    :math:`s = \\sum_t e^{{x_t - m}}` (block sums added), then each block
    returns {formula}. Equal to the in-memory result to rounding, with no
    cancellation for large :math:`|x|`; a row holding ``inf`` or ``nan``, or
    only ``-inf``, is ``nan``, as in memory.

    .. versionadded:: 0.2.0

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> from zilla_muf.dask import {name}
    >>> x = da.from_array(np.log([1.0, 1.0, 2.0, 4.0]), chunks=2)
    >>> {example}
    array([0.125, 0.125, 0.25 , 0.5  ])
    """


def softmax(x, axis=-1, *, workers=None):
    return _normalised(_stable.softmax, True, x, axis, workers)


def log_softmax(x, axis=-1, *, workers=None):
    return _normalised(_stable.log_softmax, False, x, axis, workers)


softmax.__doc__ = _NORM_DOC.format(
    summary="Softmax along `axis` of a Dask array.", name="softmax",
    formula=":math:`e^{x_t - m} / s`",
    example="np.round(softmax(x).compute(), 6)")
log_softmax.__doc__ = _NORM_DOC.format(
    summary="Log-softmax along `axis` of a Dask array.", name="log_softmax",
    formula=":math:`x_t - m - \\log s`",
    example="np.round(np.exp(log_softmax(x).compute()), 6)")


def log_sum_exp(x, axis=-1, keepdims=False, *, workers=None):
    r"""Log-sum-exp along `axis` of a Dask array, by a tree reduction.

    The same arguments and result as :func:`zilla_muf.log_sum_exp`.

    Parameters
    ----------
    x : dask.array.Array or array_like
        The input, chunked in any way.
    axis : int, optional
        The axis to reduce; it may be split into several blocks.
    keepdims : bool, optional
        Keep `axis` with length 1.
    workers : int, optional
        Threads inside each block.

    Returns
    -------
    out : dask.array.Array
        Lazy; `x`'s shape without `axis` (or with length 1 there).

    Raises
    ------
    ValueError
        An `axis` out of range, chunks of unknown size.
    TypeError
        A dtype :func:`zilla_muf.log_sum_exp` rejects.

    See Also
    --------
    zilla_muf.log_sum_exp : the in-memory function each block runs.

    Notes
    -----
    Each block reduces to its own log-sum-exp (kept as a length-1 axis);
    those are concatenated and reduced again by the same function, in a
    tree (``dask.array.reduction``), since
    :math:`\log\sum_k e^{\log\sum_{t\in k} e^{x_t}} = \log\sum_t e^{x_t}`.
    All ``-inf`` along the axis gives ``-inf``.

    .. versionadded:: 0.2.0

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> from zilla_muf.dask import log_sum_exp
    >>> x = da.from_array(np.log([1.0, 2.0, 3.0, 4.0]), chunks=1)
    >>> float(np.round(np.exp(log_sum_exp(x).compute()), 12))
    10.0
    """
    x, ax = _x_and_axis(x, axis)
    _check_workers(workers)
    dtype = _probe_dtype(_stable.log_sum_exp, x)
    return _lse_graph(x, ax, bool(keepdims), dtype, workers)


def _lcse_block(x, axis, dtype=None, workers=None):
    return _stable.logcumsumexp(x, axis=axis, workers=workers)


def _lcse_total(x, axis, dtype=None, keepdims=True, workers=None):
    return _stable.log_sum_exp(x, axis=axis, keepdims=keepdims, workers=workers)


def _logaddexp(carry, block):
    with np.errstate(invalid="ignore"):
        return np.logaddexp(carry, block)


def _named(fn, name):
    fn.__name__ = name
    return fn


def logcumsumexp(x, axis=-1, *, workers=None):
    r"""Running log-sum-exp along `axis` of a Dask array, with a carry.

    The same arguments and result as :func:`zilla_muf.logcumsumexp`.

    Parameters
    ----------
    x : dask.array.Array or array_like
        The input, chunked in any way.
    axis : int, optional
        The axis to accumulate along; it may be split into several blocks.
    workers : int, optional
        Threads inside each block.

    Returns
    -------
    out : dask.array.Array
        Lazy, shaped and chunked like `x`.

    Raises
    ------
    ValueError
        An `axis` out of range, chunks of unknown size.
    TypeError
        A dtype :func:`zilla_muf.logcumsumexp` rejects.

    See Also
    --------
    zilla_muf.logcumsumexp : the in-memory function each block runs.

    Notes
    -----
    Each block runs :func:`zilla_muf.logcumsumexp` from an empty prefix; the
    carry :math:`c_k = \log\sum_{t < \text{start}_k} e^{x_t}` is the
    running log-sum-exp of the blocks' last values (a chain, or dask's
    Blelloch tree from 64 blocks on, whose block totals are
    :func:`zilla_muf.log_sum_exp`), and each block is corrected as
    :math:`\operatorname{logaddexp}(c_k, \text{local}_t)`.

    .. versionadded:: 0.2.0

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> from zilla_muf.dask import logcumsumexp
    >>> x = da.from_array(np.log([1.0, 2.0, 3.0, 4.0]), chunks=3)
    >>> np.round(np.exp(logcumsumexp(x).compute()), 12)
    array([ 1.,  3.,  6., 10.])
    """
    x, ax = _x_and_axis(x, axis)
    _check_workers(workers)
    dtype = _probe_dtype(_stable.logcumsumexp, x)
    if dtype != x.dtype:
        x = x.astype(dtype)
    block = functools.partial(_lcse_block, workers=workers)
    _named(block, "logcumsumexp")  # dask names the graph layer after it
    if len(x.chunks[ax]) == 1:
        return x.map_blocks(functools.partial(block, axis=ax), dtype=dtype,
                            meta=np.empty((0,) * x.ndim, dtype))
    tree = len(x.chunks[ax]) >= _carry.TREE_MIN_BLOCKS
    return cumreduction(block, _logaddexp, -np.inf, x, axis=ax, dtype=dtype,
                        method="blelloch" if tree else "sequential",
                        preop=_named(functools.partial(_lcse_total, workers=workers),
                                     "log_sum_exp"))


def _rms_block(x, weight, z, *, eps, group_size, norm_before_gate, workers):
    return _stable.rms_norm(x, weight, eps=eps, z=z, group_size=group_size,
                            norm_before_gate=norm_before_gate, workers=workers)


def rms_norm(x, weight=None, *, eps=1e-6, z=None, group_size=None,
             norm_before_gate=True, workers=None):
    r"""RMS normalisation over the last axis of a Dask array.

    The same arguments and result as :func:`zilla_muf.rms_norm`.

    Parameters
    ----------
    x : dask.array.Array or array_like
        The input; its leading axes may be chunked freely, its last axis (the
        normalised channels) must be one block.
    weight : dask.array.Array or array_like, optional
        Per-channel scale, shape (channels,).
    eps, group_size, norm_before_gate
        As in :func:`zilla_muf.rms_norm`.
    z : dask.array.Array or array_like, optional
        The gate, shaped like `x`; rechunked to `x`'s chunks.
    workers : int, optional
        Threads inside each block.

    Returns
    -------
    out : dask.array.Array
        Lazy, shaped and chunked like `x`.

    Raises
    ------
    ValueError
        The last axis of `x` split (the message names the ``rechunk``), or
        what :func:`zilla_muf.rms_norm` rejects.
    TypeError
        A dtype :func:`zilla_muf.rms_norm` rejects.

    See Also
    --------
    zilla_muf.rms_norm : the in-memory function each block runs.

    Notes
    -----
    :math:`x / \sqrt{\overline{x^2} + \epsilon} \cdot w` is row-wise: every
    block of rows runs :func:`zilla_muf.rms_norm` unchanged.

    .. versionadded:: 0.2.0

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> from zilla_muf.dask import rms_norm
    >>> x = da.from_array(np.array([[3.0, 4.0], [1.0, 1.0]]), chunks=(1, 2))
    >>> np.round(rms_norm(x, eps=0.0).compute(), 6)
    array([[0.848528, 1.131371],
           [1.      , 1.      ]])
    """
    x = lazy(x, "x")
    if not isinstance(x, da.Array):
        x = da.asarray(np.asarray(x))
    weight, z = lazy(weight, "weight"), lazy(z, "z")
    _check_workers(workers)
    if x.ndim == 0:
        raise ValueError("`x` must have at least one dimension, got shape ()")
    single_block(x, [x.ndim - 1], "x", "its last (channel) axis")
    probe = np.zeros((1,) * (x.ndim - 1) + (x.shape[-1],), dtype=x.dtype)
    dtype = _stable.rms_norm(
        probe, None if weight is None else np.ones(np.shape(weight), getattr(weight, "dtype", float)),
        eps=eps, z=None if z is None else np.zeros(probe.shape, getattr(z, "dtype", float)),
        group_size=group_size, norm_before_gate=norm_before_gate).dtype
    ind = _LETTERS[:x.ndim]
    args = [x, ind]
    if isinstance(weight, da.Array):
        if weight.ndim != 1:
            raise ValueError(f"`weight` must have shape ({x.shape[-1]},), got {weight.shape}")
        args += [weight.rechunk(-1), ind[-1]]
    else:
        args += [weight, None]
    if isinstance(z, da.Array):
        if z.shape != x.shape:
            raise ValueError(f"`z` must have the shape of `x`, {x.shape}, got {z.shape}")
        args += [z.rechunk(x.chunks), ind]
    else:
        args += [z, None]
    fn = functools.partial(_rms_block, eps=eps, group_size=group_size,
                           norm_before_gate=norm_before_gate, workers=workers)
    return da.blockwise(fn, ind, *args, dtype=dtype,
                        meta=np.empty((0,) * x.ndim, dtype))


# --------------------------------------------------------------------------
# Operands named by index letters (blockwise-style layouts)
# --------------------------------------------------------------------------


class _Operands:
    """Named operands, each with an index string, chunks unified per letter.

    `whole` letters (e.g. ``dstate``) must be one block in every operand;
    otherwise ``ValueError`` names the ``rechunk``.
    """

    def __init__(self, operands, whole):
        self.values = {}
        self.index = {}
        pairs = []
        for name, (value, ind) in operands.items():
            self.index[name] = ind
            if isinstance(value, da.Array):
                if value.ndim != len(ind):
                    raise ValueError(
                        f"`{name}` must have {len(ind)} dimensions, got shape "
                        f"{value.shape}"
                    )
                axes = [i for i, c in enumerate(ind) if c in whole]
                for i in axes:
                    if len(value.chunks[i]) > 1:
                        single_block(value, axes, name, whole[ind[i]])
                pairs.append((name, value, ind))
            self.values[name] = value
        if pairs:
            args = [v for _, value, ind in pairs for v in (value, ind)]
            self.chunks, arrays = unify_chunks(*args)
            for (name, _, _), arr in zip(pairs, arrays):
                self.values[name] = arr
        else:
            self.chunks = {}
        self.blocks = {}

    def nblocks(self, letter):
        return len(self.chunks[letter])

    def block(self, name, where):
        """The key of `name`'s block at block indices `where` (letter -> i),
        or the value itself when it is not a dask array."""
        x = self.values[name]
        if not isinstance(x, da.Array):
            return x
        if name not in self.blocks:
            self.blocks[name] = Blocks(x)
        return self.blocks[name][tuple(where.get(c, 0) for c in self.index[name])]

    def arrays(self):
        return [v for v in self.values.values() if isinstance(v, da.Array)]


def _probe(x, shape):
    """A small zero array of `x`'s dtype (or `x` itself when not an array)."""
    if not isinstance(x, da.Array):
        return x
    return np.zeros(shape, dtype=x.dtype)


# --------------------------------------------------------------------------
# Causal convolutions along a chunked axis: block Toeplitz, overlap-add
# --------------------------------------------------------------------------


def _conv_diag(conv, kernel, x):
    return conv(kernel[..., : x.shape[-1]], x)


def _conv_pair(conv, kernel, x, off, out_len):
    """The part of a later output block that one earlier input block makes.

    With ``kseg[m] = kernel[off + m]``, output ``u`` of the block is
    ``sum_v kseg[len(x) - 1 + u - v] x[v]``: the causal product of `kseg`
    with `x` zero-padded, read from position ``len(x) - 1``.
    """
    lx = x.shape[-1]
    kseg = kernel[..., off: off + lx + out_len - 1]
    pad = np.zeros(x.shape[:-1] + (out_len - 1,), dtype=x.dtype)
    w = np.concatenate([x, pad], axis=-1)
    return conv(kseg, w)[..., lx - 1:]


def _add(*parts):
    out = parts[0].copy()
    for p in parts[1:]:
        out += p
    return out


def _block_toeplitz(conv, kernel, x, axis, kname, xname):
    kernel, x = lazy(kernel, kname), lazy(x, xname)
    for v, n in ((kernel, kname), (x, xname)):
        if not isinstance(v, da.Array):
            raise TypeError(f"`{n}` must be array_like, got {type(v).__name__}")
        if v.ndim == 0:
            raise ValueError(f"`{n}` must have at least one dimension, got shape ()")
    dtype = result_dtype(**{kname: meta_of(kernel), xname: meta_of(x)})
    ax = normalize_axis(axis, x.ndim)
    out_axis = ax - x.ndim
    if out_axis != -1:
        x = da.moveaxis(x, ax, -1)
    if kernel.ndim > 1:
        if kernel.ndim < -out_axis:
            raise ValueError(
                f"`{kname}` must be 1-D or have its taps along axis {axis} "
                f"like `{xname}`, got shape {kernel.shape}"
            )
        kernel = da.moveaxis(kernel, kernel.ndim + out_axis, -1)
    n = x.shape[-1]
    lead = broadcast_shapes(**{kname: kernel.shape[:-1], xname: x.shape[:-1]})
    kernel = kernel[..., :n]
    if x.shape != lead + (n,):
        x = da.broadcast_to(x, lead + (n,))
    K = kernel.shape[-1]
    if kernel.ndim > 1:
        if kernel.shape != lead + (K,):
            kernel = da.broadcast_to(kernel, lead + (K,))
        kernel = kernel.rechunk(x.chunks[:-1] + ((K,) if K else (0,),))
    else:
        kernel = kernel.rechunk(-1)
    tchunks = x.chunks[-1]
    starts = np.concatenate([[0], np.cumsum(tchunks)]).astype(int)
    graph = Graph("block-toeplitz", x, kernel)
    diag = functools.partial(_conv_diag, conv)
    pair = functools.partial(_conv_pair, conv)
    lead_grid = tuple(len(c) for c in x.chunks[:-1])
    outs = np.empty(lead_grid + (len(tchunks),), dtype=object)
    for J in np.ndindex(lead_grid):
        kb = block_key(kernel, J + (0,) if kernel.ndim > 1 else (0,))
        for k in range(len(tchunks)):
            parts = []
            for j in range(k - 1, -1, -1):
                off = int(starts[k] - starts[j + 1] + 1)
                if off >= K:
                    break
                if tchunks[j] == 0:
                    continue
                parts.append(graph.task(pair, kb, block_key(x, J + (j,)), off,
                                        int(tchunks[k])))
            if parts:
                d = graph.task(diag, kb, block_key(x, J + (k,)))
                outs[J + (k,)] = graph.inline(_add, d, *parts)
            else:
                outs[J + (k,)] = graph.inline(diag, kb, block_key(x, J + (k,)))
    y = graph.array(conv.func.__name__.strip("_"), outs, x.chunks, dtype)
    return y if out_axis == -1 else da.moveaxis(y, -1, out_axis)


def _toeplitz_conv(method, workers, kernel, x):
    return _structured.toeplitz_matvec(kernel, x, method=method, workers=workers)


def _fft_conv_conv(workers, kernel, x):
    return _fft_conv(x, kernel, workers=workers)


_CONV_NOTES = r"""
    Notes
    -----
    Along a chunked axis the causal Toeplitz matrix is cut into blocks:
    output block :math:`k` is the sum over input blocks :math:`j \le k`
    within the kernel's reach of :math:`T_{kj} x_j`. The diagonal block is
    the in-memory function on block :math:`k`; an off-diagonal block is the
    in-memory function applied to the kernel taps
    :math:`K[s_k - e_j + 1 \ldots]` and :math:`x_j` zero-padded, read from
    position :math:`|x_j| - 1` (overlap-add). Tasks: one per block pair
    within reach, plus one sum per output block; a kernel as long as the
    sequence makes :math:`n_b (n_b + 1) / 2` pair tasks. The kernel is
    rechunked to one block along its taps. Exact to rounding.

    .. versionadded:: 0.2.0
"""


def toeplitz_matvec(kernel, x, *, axis=-1, method="auto", workers=None):
    if method not in ("auto", "direct", "fft"):
        raise ValueError(
            f"`method` must be one of 'auto', 'direct', 'fft', got {method!r}"
        )
    _check_workers(workers)
    return _block_toeplitz(functools.partial(_toeplitz_conv, method, workers),
                           kernel, x, axis, "kernel", "x")


def fft_conv(signal, kernel, *, axis=-1, workers=None):
    _check_workers(workers)
    return _block_toeplitz(functools.partial(_fft_conv_conv, workers),
                           kernel, signal, axis, "kernel", "signal")


toeplitz_matvec.__doc__ = r"""Causal Toeplitz product of a Dask array, by blocks.

    The same arguments and result as :func:`zilla_muf.toeplitz_matvec`.

    Parameters
    ----------
    kernel : dask.array.Array or array_like
        The first column, 1-D or with its taps along `axis`.
    x : dask.array.Array or array_like
        The vector(s); chunked in any way, along `axis` too.
    axis, method, workers
        As in :func:`zilla_muf.toeplitz_matvec` (`workers` threads inside
        each block).

    Returns
    -------
    y : dask.array.Array
        Lazy, of the broadcast shape, chunked like `x` along `axis`.

    Raises
    ------
    ValueError
        Shapes that do not broadcast, an `axis` out of range, a bad
        `method`, chunks of unknown size.
    TypeError
        Non-numeric dtypes.

    See Also
    --------
    zilla_muf.toeplitz_matvec : the in-memory function each task runs.
    zilla_muf.dask.fft_conv : the same product by FFT.
""" + _CONV_NOTES + r"""
    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> from zilla_muf.dask import toeplitz_matvec
    >>> x = da.ones(6, chunks=2)
    >>> toeplitz_matvec(np.array([1.0, 1.0, 1.0]), x).compute()
    array([1., 2., 3., 3., 3., 3.])
"""

fft_conv.__doc__ = r"""Causal convolution of a Dask array by FFT, by blocks.

    The same arguments and result as :func:`zilla_muf.fft_conv`.

    Parameters
    ----------
    signal : dask.array.Array or array_like
        The signal(s); chunked in any way, along `axis` too.
    kernel : dask.array.Array or array_like
        The taps, 1-D or along `axis`.
    axis, workers
        As in :func:`zilla_muf.fft_conv` (`workers` threads inside each
        block).

    Returns
    -------
    y : dask.array.Array
        Lazy, of the broadcast shape, chunked like `signal` along `axis`.

    Raises
    ------
    ValueError
        Shapes that do not broadcast, an `axis` out of range, chunks of
        unknown size.
    TypeError
        Non-numeric dtypes.

    See Also
    --------
    zilla_muf.fft_conv : the in-memory function each task runs.
    zilla_muf.dask.toeplitz_matvec : the same product, direct or FFT.
""" + _CONV_NOTES + r"""
    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> from zilla_muf.dask import fft_conv
    >>> x = da.ones(6, chunks=4)
    >>> np.round(fft_conv(x, np.array([0.5, 0.5])).compute(), 12)
    array([0.5, 1. , 1. , 1. , 1. , 1. ])
"""


# --------------------------------------------------------------------------
# Cauchy and Vandermonde products: the pole axis concatenated per task
# --------------------------------------------------------------------------


def _lead_letters(n):
    return _LETTERS[:n]


def cauchy_matvec(nodes, poles, weights, *, conj_pairs=False, workers=None):
    r"""Cauchy product of Dask arrays, blockwise over nodes and batches.

    The same arguments and result as :func:`zilla_muf.cauchy_matvec`.

    Parameters
    ----------
    nodes : dask.array.Array or array_like
        Shape (..., L); chunked in any way.
    poles, weights : dask.array.Array or array_like
        Shape (..., N); each task receives the whole pole axis (its blocks
        are concatenated), leading axes follow `nodes`.
    conj_pairs, workers
        As in :func:`zilla_muf.cauchy_matvec`.

    Returns
    -------
    out : dask.array.Array
        Lazy, complex, shape (..., L), chunked like `nodes`.

    Raises
    ------
    ValueError
        Shapes that do not broadcast, chunks of unknown size.
    TypeError
        Non-numeric dtypes.

    See Also
    --------
    zilla_muf.cauchy_matvec : the in-memory function each task runs.

    Notes
    -----
    :math:`\sum_i w_i / (z_k - \lambda_i)` is independent per node, so
    each block of nodes (and of leading axes) is one in-memory call.

    .. versionadded:: 0.2.0

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> from zilla_muf.dask import cauchy_matvec
    >>> z = da.from_array(np.array([2.0, 3.0, 5.0]), chunks=1)
    >>> cauchy_matvec(z, np.array([1.0]), np.array([1.0])).compute()
    array([1.  +0.j, 0.5 +0.j, 0.25+0.j])
    """
    nodes, poles = lazy(nodes, "nodes"), lazy(poles, "poles")
    weights = lazy(weights, "weights")
    _check_workers(workers)
    ops = {"nodes": nodes, "poles": poles, "weights": weights}
    for name, v in ops.items():
        if not isinstance(v, da.Array):
            v = ops[name] = da.asarray(np.asarray(v))
        if v.ndim == 0:
            raise ValueError(f"`{name}` must have at least one dimension, got shape ()")
    nodes, poles, weights = ops.values()
    lead = broadcast_shapes(nodes=nodes.shape[:-1], poles=poles.shape[:-1],
                            weights=weights.shape[:-1])
    dtype = _structured.cauchy_matvec(
        _probe(nodes, (1,)), _probe(poles, (1,)), _probe(weights, (1,)),
        conj_pairs=conj_pairs).dtype
    li = _lead_letters(len(lead))
    nodes = da.broadcast_to(nodes, lead + nodes.shape[-1:])
    poles = da.broadcast_to(poles, lead + poles.shape[-1:])
    weights = da.broadcast_to(weights, lead + weights.shape[-1:])
    fn = functools.partial(_structured.cauchy_matvec, conj_pairs=conj_pairs,
                           workers=workers)
    return da.blockwise(fn, li + "y", nodes, li + "y", poles, li + "z",
                        weights, li + "z", concatenate=True, dtype=dtype,
                        meta=np.empty((0,) * (len(lead) + 1), dtype))


def _vander_block(poles, weights, *, length, conj_pairs, workers):
    return _structured.vandermonde_matvec(poles, weights, length,
                                          conj_pairs=conj_pairs, workers=workers)


def vandermonde_matvec(poles, weights, length, *, conj_pairs=False, workers=None):
    r"""Vandermonde product of Dask arrays, blockwise over batches.

    The same arguments and result as :func:`zilla_muf.vandermonde_matvec`.

    Parameters
    ----------
    poles, weights : dask.array.Array or array_like
        Shape (..., N); leading axes chunked freely, the pole axis is
        concatenated per task.
    length : int
        Output length; the output's last axis is one block.
    conj_pairs, workers
        As in :func:`zilla_muf.vandermonde_matvec`.

    Returns
    -------
    K : dask.array.Array
        Lazy, shape (..., length): complex, or real with ``conj_pairs=True``.

    Raises
    ------
    ValueError
        Shapes that do not broadcast, a bad `length`, chunks of unknown size.
    TypeError
        Non-numeric dtypes.

    See Also
    --------
    zilla_muf.vandermonde_matvec : the in-memory function each task runs.

    Notes
    -----
    :math:`K_l = \sum_i w_i \lambda_i^l` is independent per leading index;
    each block of leading axes is one in-memory call with the full
    `length` (the result is the size of the kernel a model needs, not of
    the data).

    .. versionadded:: 0.2.0

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> from zilla_muf.dask import vandermonde_matvec
    >>> p = da.from_array(np.array([[0.5], [1.0]]), chunks=1)
    >>> vandermonde_matvec(p, np.ones(1), 3).compute().real
    array([[1.  , 0.5 , 0.25],
           [1.  , 1.  , 1.  ]])
    """
    poles, weights = lazy(poles, "poles"), lazy(weights, "weights")
    _check_workers(workers)
    ops = {"poles": poles, "weights": weights}
    for name, v in ops.items():
        if not isinstance(v, da.Array):
            v = ops[name] = da.asarray(np.asarray(v))
        if v.ndim == 0:
            raise ValueError(f"`{name}` must have at least one dimension, got shape ()")
    poles, weights = ops.values()
    length = _structured._length(length)
    dtype = _structured.vandermonde_matvec(
        _probe(poles, (1,)), _probe(weights, (1,)), 1, conj_pairs=conj_pairs).dtype
    lead = broadcast_shapes(poles=poles.shape[:-1], weights=weights.shape[:-1])
    li = _lead_letters(len(lead))
    poles = da.broadcast_to(poles, lead + poles.shape[-1:])
    weights = da.broadcast_to(weights, lead + weights.shape[-1:])
    fn = functools.partial(_vander_block, length=length, conj_pairs=conj_pairs,
                           workers=workers)
    return da.blockwise(fn, li + "y", poles, li + "z", weights, li + "z",
                        new_axes={"y": length}, concatenate=True, dtype=dtype,
                        meta=np.empty((0,) * (len(lead) + 1), dtype))


# --------------------------------------------------------------------------
# SSD and selective scan: states chained through initial_states
# --------------------------------------------------------------------------


def _ssd_block(x, dt, A, B, C, D, z, dt_bias, state, seq, prev_seq, *, kw):
    if seq is not None and prev_seq is not None and state is not None:
        # a sequence id that changes at the block boundary resets the state
        same = seq[:, 0] == prev_seq[:, -1]
        state = np.where(same[:, None, None, None], state, 0).astype(state.dtype)
    return _ssd.ssd_chunk_scan_combined(
        x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, initial_states=state,
        seq_idx=seq, return_final_states=True, **kw)


def ssd_chunk_scan_combined(x, dt, A, B, C, chunk_size=None, *, D=None, z=None,
                            dt_bias=None, initial_states=None, seq_idx=None,
                            dt_softplus=False, dt_limit=(0.0, math.inf),
                            return_final_states=False, workers=None):
    r"""A Mamba-2 SSD layer on Dask arrays, block by block along the sequence.

    The same arguments and results as
    :func:`zilla_muf.ssd_chunk_scan_combined`.

    Parameters
    ----------
    x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx
        As in :func:`zilla_muf.ssd_chunk_scan_combined`, as dask arrays or
        array_like. The batch and seqlen axes may be chunked in any way
        (chunks are unified across the operands); the nheads, headdim,
        ngroups and dstate axes must be one block each.
    chunk_size : int, optional
        The SSD chunk inside each block; it need not divide the blocks.
    dt_softplus, dt_limit
        As in :func:`zilla_muf.ssd_chunk_scan_combined`.
    return_final_states : bool, optional
        Also return the state after the last position.
    workers : int, optional
        Threads inside each block.

    Returns
    -------
    y : dask.array.Array
        Lazy, (batch, seqlen, nheads, headdim), chunked like `x`.
    final_states : dask.array.Array
        With ``return_final_states=True``: (batch, nheads, headdim, dstate).

    Raises
    ------
    ValueError
        A split head/state axis (the message names the ``rechunk``), and
        whatever :func:`zilla_muf.ssd_chunk_scan_combined` rejects.
    TypeError
        Non-numeric or complex dtypes.

    See Also
    --------
    zilla_muf.ssd_chunk_scan_combined : the in-memory function each block runs.
    zilla_muf.dask.selective_scan : the Mamba-1 scan, chained the same way.

    Notes
    -----
    Block :math:`k` along the sequence runs the in-memory layer with
    ``initial_states`` = the final states of block :math:`k-1` (the user's
    `initial_states` for block 0): the recurrence
    :math:`h_t = e^{\Delta_t A} h_{t-1} + \Delta_t x_t B_t^T` crosses the
    boundary exactly, so the output equals the in-memory one to rounding for
    every chunking. With `seq_idx`, a state is reset where the id changes
    across a boundary. The chain runs the sequence blocks one after another
    (batch blocks in parallel), holding one block at a time.

    .. versionadded:: 0.2.0

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> import zilla_muf
    >>> from zilla_muf.dask import ssd_chunk_scan_combined
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((1, 10, 2, 3))
    >>> dt = rng.uniform(0.1, 0.5, (1, 10, 2))
    >>> A = -np.ones(2)
    >>> B = rng.standard_normal((1, 10, 1, 4))
    >>> C = rng.standard_normal((1, 10, 1, 4))
    >>> y = ssd_chunk_scan_combined(da.from_array(x, chunks=(1, 3, 2, 3)),
    ...                             dt, A, B, C, chunk_size=4)
    >>> bool(np.allclose(y.compute(),
    ...                  zilla_muf.ssd_chunk_scan_combined(x, dt, A, B, C)))
    True
    """
    _check_workers(workers)
    positive_int(chunk_size, "chunk_size", allow_none=True)
    names = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states",
             "seq_idx")
    vals = dict(zip(names, (x, dt, A, B, C, D, z, dt_bias, initial_states,
                            seq_idx)))
    for name in names:
        v = lazy(vals[name], name)
        if v is not None and not isinstance(v, da.Array):
            v = da.asarray(np.asarray(v))
        vals[name] = v
    x = vals["x"]
    if x.ndim != 4:
        raise ValueError(
            f"`x` must have shape (batch, seqlen, nheads, headdim), got {x.shape}"
        )
    kw = {"chunk_size": chunk_size, "dt_softplus": dt_softplus,
          "dt_limit": dt_limit, "workers": workers}
    # the in-memory function checks shapes and dtypes on a one-step probe
    nb, L, H, P = x.shape
    step = {}
    for name, v in vals.items():
        if v is None:
            step[name] = None
        elif name in ("x", "dt", "B", "C", "z", "seq_idx"):
            if v.ndim < 2 or v.shape[:2] != (nb, L):
                raise ValueError(
                    f"`{name}` must have (batch, seqlen) = {(nb, L)} as its first "
                    f"two axes, got shape {v.shape}"
                )
            step[name] = np.zeros((1, 1) + v.shape[2:], dtype=v.dtype)
        elif name == "initial_states":
            if v.ndim < 1 or v.shape[0] != nb:
                raise ValueError(
                    f"`initial_states` must have shape ({nb}, {H}, {P}, dstate), "
                    f"got {v.shape}"
                )
            step[name] = np.zeros((1,) + v.shape[1:], dtype=v.dtype)
        else:
            step[name] = np.zeros(v.shape, dtype=v.dtype)
    p = step
    y_probe = _ssd.ssd_chunk_scan_combined(
        p["x"], p["dt"], p["A"], p["B"], p["C"], D=p["D"], z=p["z"],
        dt_bias=p["dt_bias"], initial_states=p["initial_states"],
        seq_idx=p["seq_idx"], **kw)
    dtype = y_probe.dtype
    D_ind = "h" if vals["D"] is None or vals["D"].ndim == 1 else "hp"
    whole = {"h": "the nheads axis", "p": "the headdim axis",
             "g": "the ngroups axis", "n": "the dstate axis"}
    ops = _Operands({
        "x": (vals["x"], "blhp"), "dt": (vals["dt"], "blh"),
        "A": (vals["A"], "h"), "B": (vals["B"], "blgn"),
        "C": (vals["C"], "blgn"), "D": (vals["D"], D_ind),
        "z": (vals["z"], "blhp"), "dt_bias": (vals["dt_bias"], "h"),
        "initial_states": (vals["initial_states"], "bhpn"),
        "seq_idx": (vals["seq_idx"], "bl"),
    }, whole)
    graph = Graph("ssd", *ops.arrays())
    run = functools.partial(_ssd_block, kw=kw)
    nbb, nlb = ops.nblocks("b"), ops.nblocks("l")
    outs = np.empty((nbb, nlb, 1, 1), dtype=object)
    finals = np.empty((nbb, 1, 1, 1), dtype=object)
    for bi in range(nbb):
        def step_k(k, state, bi=bi):
            w = {"b": bi, "l": k}
            prev = (ops.block("seq_idx", {"b": bi, "l": k - 1})
                    if k > 0 and vals["seq_idx"] is not None else None)
            args = [ops.block(n, w) for n in
                    ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")]
            return graph.task(run, *args, state, ops.block("seq_idx", w), prev)
        keys = state_chain(step_k, nlb, ops.block("initial_states", {"b": bi}))
        for k, key in enumerate(keys):
            outs[bi, k, 0, 0] = key
        finals[bi, 0, 0, 0] = keys[-1]
    y = graph.array("ssd_chunk_scan_combined", outs, ops.values["x"].chunks,
                    dtype, item=0)
    if not return_final_states:
        return y
    N = vals["B"].shape[-1]
    fchunks = (ops.chunks["b"], (H,), (P,), (N,))
    return y, graph.array("ssd_final_states", finals, fchunks, dtype, item=1)


def _sel_block(u, delta, A, B, C, D, z, delta_bias, state, *, kw):
    return _selective.selective_scan(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
        initial_state=state, return_last_state=True, **kw)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                   delta_softplus=False, return_last_state=False,
                   initial_state=None, workers=None):
    r"""Mamba-1's selective scan on Dask arrays, block by block along seqlen.

    The same arguments and results as :func:`zilla_muf.selective_scan`.

    Parameters
    ----------
    u, delta, A, B, C, D, z, delta_bias, initial_state
        As in :func:`zilla_muf.selective_scan`, as dask arrays or
        array_like. The batch, dim and seqlen axes may be chunked in any way
        (chunks are unified across the operands); dstate must be one block,
        and with grouped B or C (batch, ngroups, dstate, seqlen) so must
        ngroups and dim.
    delta_softplus : bool, optional
        As in :func:`zilla_muf.selective_scan`.
    return_last_state : bool, optional
        Also return the state after the last step.
    workers : int, optional
        Threads inside each block.

    Returns
    -------
    y : dask.array.Array
        Lazy, (batch, dim, seqlen), chunked like `u`.
    last_state : dask.array.Array
        With ``return_last_state=True``: (batch, dim, dstate).

    Raises
    ------
    ValueError
        A split dstate/ngroups axis (the message names the ``rechunk``),
        and whatever :func:`zilla_muf.selective_scan` rejects.
    TypeError
        Non-numeric dtypes.

    See Also
    --------
    zilla_muf.selective_scan : the in-memory function each block runs.
    zilla_muf.dask.ssd_chunk_scan_combined : the Mamba-2 layer, chained the same way.

    Notes
    -----
    Block :math:`k` along seqlen runs the in-memory scan with
    ``initial_state`` = the last state of block :math:`k-1`, so
    :math:`h_t = e^{\delta_t A} h_{t-1} + \delta_t B_t u_t` crosses each
    boundary exactly; batch and channel blocks run in parallel.

    .. versionadded:: 0.2.0

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> import zilla_muf
    >>> from zilla_muf.dask import selective_scan
    >>> rng = np.random.default_rng(0)
    >>> u = rng.standard_normal((1, 2, 9))
    >>> delta = rng.uniform(0.1, 0.5, (1, 2, 9))
    >>> A = -np.ones((2, 3))
    >>> B = rng.standard_normal((1, 3, 9))
    >>> C = rng.standard_normal((1, 3, 9))
    >>> y = selective_scan(da.from_array(u, chunks=(1, 1, 4)), delta, A, B, C)
    >>> bool(np.allclose(y.compute(), zilla_muf.selective_scan(u, delta, A, B, C)))
    True
    """
    _check_workers(workers)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias",
             "initial_state")
    vals = dict(zip(names, (u, delta, A, B, C, D, z, delta_bias, initial_state)))
    for name in names:
        v = lazy(vals[name], name)
        if v is not None and not isinstance(v, da.Array):
            v = da.asarray(np.asarray(v))
        vals[name] = v
    u = vals["u"]
    if u.ndim != 3:
        raise ValueError(f"`u` must have shape (batch, dim, seqlen), got {u.shape}")
    nb, dim, L = u.shape
    kw = {"delta_softplus": delta_softplus, "workers": workers}
    layout = {"u": "bdl", "delta": "bdl", "z": "bdl", "A": "dn", "D": "d",
              "delta_bias": "d", "initial_state": "bdn"}
    probe = {}
    for name in ("B", "C"):
        v = vals[name]
        layout[name] = {2: "dn", 3: "bnl", 4: "bgnl"}.get(v.ndim)
        if layout[name] is None:
            raise ValueError(
                f"`{name}` must have shape (dim, dstate), (batch, dstate, seqlen) "
                f"or (batch, ngroups, dstate, seqlen), got {v.shape}"
            )
    grouped = 4 in (vals["B"].ndim, vals["C"].ndim)
    # a probe of one batch row and one step: the in-memory checks and dtype
    for name, v in vals.items():
        if v is None:
            probe[name] = None
            continue
        shape = list(v.shape)
        for i, c in enumerate(layout[name]):
            if c in "bl":
                want = nb if c == "b" else L
                if shape[i] != want:
                    raise ValueError(
                        f"`{name}` must have {'batch' if c == 'b' else 'seqlen'} "
                        f"= {want} on axis {i}, got shape {v.shape}"
                    )
                shape[i] = 1
        probe[name] = np.zeros(shape, dtype=v.dtype)
    y_probe = _selective.selective_scan(
        probe["u"], probe["delta"], probe["A"], probe["B"], probe["C"],
        D=probe["D"], z=probe["z"], delta_bias=probe["delta_bias"],
        initial_state=probe["initial_state"], return_last_state=True, **kw)
    dtype, sdtype = y_probe[0].dtype, y_probe[1].dtype
    whole = {"n": "the dstate axis", "g": "the ngroups axis"}
    if grouped:
        whole["d"] = "the dim axis (B or C are grouped)"
    ops = _Operands({name: (vals[name], layout[name]) for name in names}, whole)
    graph = Graph("selective", *ops.arrays())
    run = functools.partial(_sel_block, kw=kw)
    nbb, ndb, nlb = ops.nblocks("b"), ops.nblocks("d"), ops.nblocks("l")
    outs = np.empty((nbb, ndb, nlb), dtype=object)
    finals = np.empty((nbb, ndb, 1), dtype=object)
    for bi, di in product(range(nbb), range(ndb)):
        def step_k(k, state, bi=bi, di=di):
            w = {"b": bi, "d": di, "l": k}
            return graph.task(run, *[ops.block(n, w) for n in names[:-1]], state)
        keys = state_chain(step_k, nlb,
                           ops.block("initial_state", {"b": bi, "d": di}))
        for k, key in enumerate(keys):
            outs[bi, di, k] = key
        finals[bi, di, 0] = keys[-1]
    y = graph.array("selective_scan", outs,
                    (ops.chunks["b"], ops.chunks["d"], ops.chunks["l"]), dtype, item=0)
    if not return_last_state:
        return y
    N = vals["A"].shape[-1]
    return y, graph.array("selective_last_state", finals,
                          (ops.chunks["b"], ops.chunks["d"], (N,)), sdtype, item=1)


# --------------------------------------------------------------------------
# Causal depthwise convolution: a width-1 halo from the preceding blocks
# --------------------------------------------------------------------------


def _conv1d_block(x, weight, bias, init, *prev, halo, final, kw):
    if halo == 0:
        state = None
    else:
        head = [np.zeros(x.shape[:2] + (halo,), dtype=x.dtype) if init is None
                else init]
        state = np.concatenate(head + list(prev), axis=-1)[..., -halo:]
    return _selective.causal_conv1d(x, weight, bias, initial_states=state,
                                    return_final_states=final, **kw)


def causal_conv1d(x, weight, bias=None, *, activation=None, initial_states=None,
                  return_final_states=False, workers=None):
    r"""Depthwise causal 1-D convolution of a Dask array, with a halo.

    The same arguments and results as :func:`zilla_muf.causal_conv1d`.

    Parameters
    ----------
    x : dask.array.Array or array_like
        (batch, dim, seqlen); every axis may be chunked in any way.
    weight, bias, activation, initial_states
        As in :func:`zilla_muf.causal_conv1d`; `weight` (dim, width) must be
        one block along width.
    return_final_states : bool, optional
        Also return the last width-1 inputs.
    workers : int, optional
        Threads inside each block.

    Returns
    -------
    out : dask.array.Array
        Lazy, (batch, dim, seqlen), chunked like `x`.
    final_states : dask.array.Array
        With ``return_final_states=True``: (batch, dim, width-1).

    Raises
    ------
    ValueError
        Whatever :func:`zilla_muf.causal_conv1d` rejects, chunks of unknown
        size.
    TypeError
        Non-numeric dtypes.

    See Also
    --------
    zilla_muf.causal_conv1d : the in-memory function each block runs.

    Notes
    -----
    :math:`y_t = \sum_{j<w} W_{j}\, x_{t-w+1+j}` needs the :math:`w-1`
    inputs before a block: each block's task also reads the preceding
    blocks that hold them (one block, unless blocks are shorter than
    :math:`w-1`) and passes their tail as ``initial_states`` (the user's
    `initial_states` before the first block). No carry runs: every block is
    independent once its halo is read.

    .. versionadded:: 0.2.0

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> from zilla_muf.dask import causal_conv1d
    >>> x = da.ones((1, 1, 5), chunks=(1, 1, 2))
    >>> causal_conv1d(x, np.array([[1.0, 1.0, 1.0]])).compute()
    array([[[1., 2., 3., 3., 3.]]])
    """
    _check_workers(workers)
    names = ("x", "weight", "bias", "initial_states")
    vals = dict(zip(names, (x, weight, bias, initial_states)))
    for name in names:
        v = lazy(vals[name], name)
        if v is not None and not isinstance(v, da.Array):
            v = da.asarray(np.asarray(v))
        vals[name] = v
    x = vals["x"]
    if x.ndim != 3 or vals["weight"].ndim != 2:
        raise ValueError(
            f"`x` must have shape (batch, dim, seqlen) and `weight` (dim, width), "
            f"got {x.shape} and {vals['weight'].shape}"
        )
    nb, dim, L = x.shape
    kw = {"activation": activation, "workers": workers}
    probe = {n: None if v is None else np.zeros(
        (1,) + v.shape[1:] if n in ("x", "initial_states") else v.shape, v.dtype)
        for n, v in vals.items()}
    probe["x"] = np.zeros((1, dim, 1), dtype=x.dtype)
    for n in ("initial_states",):
        v = vals[n]
        if v is not None and (v.ndim != 3 or v.shape[0] != nb):
            raise ValueError(
                f"`initial_states` must have shape ({nb}, {dim}, width-1), got {v.shape}"
            )
    dtype = _selective.causal_conv1d(
        probe["x"], probe["weight"], probe["bias"],
        initial_states=probe["initial_states"], **kw).dtype
    halo = vals["weight"].shape[1] - 1
    ops = _Operands({"x": (x, "bdl"), "weight": (vals["weight"], "dw"),
                     "bias": (vals["bias"], "d"),
                     "initial_states": (vals["initial_states"], "bdh")},
                    {"w": "the width axis", "h": "the width-1 axis"})
    lens = ops.chunks["l"]
    graph = Graph("causal-conv1d", *ops.arrays())
    run = functools.partial(_conv1d_block, halo=halo, final=False, kw=kw)
    run_last = functools.partial(_conv1d_block, halo=halo, final=True, kw=kw)
    nbb, ndb, nlb = ops.nblocks("b"), ops.nblocks("d"), len(lens)
    outs = np.empty((nbb, ndb, nlb), dtype=object)
    finals = np.empty((nbb, ndb, 1), dtype=object)
    for bi, di, k in product(range(nbb), range(ndb), range(nlb)):
        w = {"b": bi, "d": di, "l": k}
        prev, have, j = [], 0, k - 1
        while have < halo and j >= 0:
            prev.insert(0, ops.block("x", {"b": bi, "d": di, "l": j}))
            have += lens[j]
            j -= 1
        init = (ops.block("initial_states", w) if have < halo else None)
        args = (ops.block("x", w), ops.block("weight", w), ops.block("bias", w),
                init, *prev)
        if k == nlb - 1 and return_final_states:
            res = graph.task(run_last, *args)
            outs[bi, di, k] = graph.task(operator.getitem, res, 0)
            finals[bi, di, 0] = graph.task(operator.getitem, res, 1)
        else:
            outs[bi, di, k] = graph.inline(run, *args)
    y = graph.array("causal_conv1d", outs, (ops.chunks["b"], ops.chunks["d"], lens),
                    dtype)
    if not return_final_states:
        return y
    return y, graph.array("causal_conv1d_final_states", finals,
                          (ops.chunks["b"], ops.chunks["d"], (halo,)), dtype)
