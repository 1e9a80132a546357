"""Mamba-2's structured state space duality (SSD).

A Mamba-2 layer runs, for every head, the diagonal-decay state space model

.. math::

    h_t = e^{\\Delta_t A}\\, h_{t-1} + \\Delta_t\\, x_t B_t^\\top, \\qquad
    y_t = h_t C_t \\;(+\\, D x_t),

with a (headdim, dstate) state :math:`h_t`. Unrolled, :math:`y = M (\\Delta x)`
with the semiseparable matrix
:math:`M_{ij} = (C_i \\cdot B_j)\\, e^{\\sum_{t=j+1}^{i} \\Delta_t A}` -- masked
linear attention. This module evaluates it in three ways:

- :func:`~zilla_muf.ssd_chunk_scan_combined` -- the chunked SSD algorithm:
  matrix products inside chunks, a recurrence between them (the fast path);
  also available as its four stages :func:`~zilla_muf.ssd_chunk_cumsum`,
  :func:`~zilla_muf.ssd_chunk_state`, :func:`~zilla_muf.ssd_state_passing`,
  :func:`~zilla_muf.ssd_chunk_scan`;
- :func:`~zilla_muf.ssd_sequential` -- the recurrence step by step;
- :func:`~zilla_muf.ssd_quadratic` -- the attention ("dual") form, O(L^2);

and :func:`~zilla_muf.selective_state_update`, one decoding step.

Layouts follow ``mamba_ssm``: x (batch, seqlen, nheads, headdim), dt
(batch, seqlen, nheads), A (nheads,), B and C (batch, seqlen, ngroups,
dstate), where head h reads group ``h // (nheads // ngroups)``.
"""

import math

import numpy as np

from . import _ssd
from . import _selective
from . import _stable_ops
from ._config import running_threads
from .stable_ops import silu
from ._validation import (
    as_array,
    check_shape,
    inplace_array,
    positive_int,
    resolve_workers,
    result_dtype,
)

__all__ = [
    "selective_state_update",
    "ssd_chunk_cumsum",
    "ssd_chunk_scan",
    "ssd_chunk_scan_combined",
    "ssd_chunk_state",
    "ssd_quadratic",
    "ssd_sequential",
    "ssd_state_passing",
]

# Default chunk length: 64 keeps a chunk's operands in the first two cache
# levels and the L^2 part of the work (chunk_size per token) small next to
# the state part, which does not depend on the chunk length.
_DEFAULT_CHUNK = 64

# ---------------------------------------------------------------------------
# Argument handling
# ---------------------------------------------------------------------------


def _dt_limit(dt_limit):
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise ValueError(
            f"`dt_limit` must be a pair of numbers (low, high), got {dt_limit!r}"
        ) from None
    if not lo <= hi:
        raise ValueError(f"`dt_limit` must have low <= high, got {dt_limit!r}")
    return lo, hi


class _Problem:
    """The arguments of one SSD layer call, checked, in one dtype."""

    def __init__(self, x, dt, A, B, C, *, D=None, z=None, dt_bias=None,
                 initial_states=None, seq_idx=None, dt_softplus=False,
                 dt_limit=(0.0, math.inf), extra=None, cu_seqlens=None):
        x = as_array(x, "x")
        dt = as_array(dt, "dt")
        A = as_array(A, "A")
        B = as_array(B, "B")
        C = as_array(C, "C")
        opt = {
            "D": None if D is None else as_array(D, "D"),
            "z": None if z is None else as_array(z, "z"),
            "dt_bias": None if dt_bias is None else as_array(dt_bias, "dt_bias"),
            "initial_states": (None if initial_states is None
                               else as_array(initial_states, "initial_states")),
        }
        self.dtype = result_dtype(allow_complex=False, x=x, dt=dt, A=A, B=B,
                                  C=C, **opt, **(extra or {}))
        check_shape(x, (None,) * 4, "x")
        nb, L, H, P = x.shape
        check_shape(dt, (nb, L, H), "dt")
        check_shape(A, (H,), "A")
        check_shape(B, (nb, L, None, None), "B")
        G, N = B.shape[2:]
        check_shape(C, (nb, L, G, N), "C")
        _check_groups(H, G)
        self.nb, self.L, self.H, self.P, self.G, self.N = nb, L, H, P, G, N
        D = opt["D"]
        if D is not None and D.shape not in ((H,), (H, P)):
            raise ValueError(
                f"`D` must have shape ({H},) or ({H}, {P}), got {D.shape}"
            )
        if opt["z"] is not None:
            check_shape(opt["z"], x.shape, "z")
        if opt["dt_bias"] is not None:
            check_shape(opt["dt_bias"], (H,), "dt_bias")
        self.seq = _seq_idx(seq_idx, nb, L)
        self.cu = None
        if cu_seqlens is not None:
            self.cu, self.seq = _cu_seqlens(cu_seqlens, nb, L, self.seq)
        if opt["initial_states"] is not None:
            rows = nb if self.cu is None else len(self.cu) - 1
            check_shape(opt["initial_states"], (rows, H, P, N), "initial_states")
        self.dt_softplus = bool(dt_softplus)
        self.dt_limit = _dt_limit(dt_limit)
        cast = self.cast
        self.x, self.B, self.C = cast(x), cast(B), cast(C)
        self.dt, self.A = cast(dt), cast(A)
        self.D = None if D is None else cast(D)
        self.z = None if opt["z"] is None else cast(opt["z"])
        self.dt_bias = None if opt["dt_bias"] is None else cast(opt["dt_bias"])
        self.init = (None if opt["initial_states"] is None
                     else cast(opt["initial_states"]))

    def cast(self, arr):
        return np.ascontiguousarray(arr, dtype=self.dtype)

    @property
    def degenerate(self):
        return min(self.nb, self.L, self.H, self.P, self.N) == 0

    def processed_dt(self, chunk_size=None, nthreads=1, seq=None):
        """dt' as (batch, nheads, seqlen); with a chunk size, (dt_out,
        dA_cumsum) as (batch, nheads, nchunks * chunk_size), padded (the
        sums also restarted where `seq` changes)."""
        return _step_sizes(self.dt, self.A, self.dt_bias, self.dt_softplus,
                           self.dt_limit, chunk_size, nthreads, seq)

    def state(self):
        """A fresh (batch, nheads, headdim, dstate) state: the initial one or 0."""
        if self.init is None:
            return np.zeros((self.nb, self.H, self.P, self.N), dtype=self.dtype)
        return self.init.copy()

    @property
    def nseq(self):
        return 0 if self.cu is None else len(self.cu) - 1

    def finish(self, y):
        return _finish(y, self.x, self.D, self.z)


def _check_groups(H, G):
    if G < 1 or H % G != 0:
        raise ValueError(
            f"`B` and `C` must have ngroups dividing nheads = {H} (the third "
            f"axis), got ngroups = {G}"
        )


def _seq_idx(seq_idx, nb, L):
    if seq_idx is None:
        return None
    s = as_array(seq_idx, "seq_idx")
    if s.dtype.kind not in "iu":
        raise TypeError(f"`seq_idx` must have an integer dtype, got dtype {s.dtype}")
    check_shape(s, (nb, L), "seq_idx")
    s = np.ascontiguousarray(s, dtype=np.int64)
    if L > 1 and np.any(s[:, 1:] < s[:, :-1]):
        raise ValueError(
            "`seq_idx` must be non-decreasing along each row (the ids of "
            "packed sequences in order)"
        )
    return s


def _cu_seqlens(cu_seqlens, nb, L, seq):
    """Check `cu_seqlens` (nseq + 1,) against a (1, L) batch; return it as
    int64 and the sequence ids it implies, (1, L)."""
    cu = np.asarray(cu_seqlens)
    if cu.dtype.kind not in "iu":
        raise ValueError(
            f"`cu_seqlens` must be an array of integers, got dtype {cu.dtype}"
        )
    if cu.ndim != 1 or cu.shape[0] < 2:
        raise ValueError(
            f"`cu_seqlens` must have shape (nseq + 1,) with nseq >= 1, got "
            f"shape {cu.shape}"
        )
    if nb != 1:
        raise ValueError(
            f"`cu_seqlens` packs sequences along one row: batch must be 1, got "
            f"batch {nb}"
        )
    cu = cu.astype(np.int64)
    if cu[0] != 0 or cu[-1] != L:
        raise ValueError(
            f"`cu_seqlens` must start at 0 and end at seqlen = {L}, got "
            f"{int(cu[0])} ... {int(cu[-1])}"
        )
    lengths = np.diff(cu)
    if np.any(lengths < 0):
        raise ValueError("`cu_seqlens` must be non-decreasing")
    ids = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)[None]
    if seq is not None and L > 1 and not np.array_equal(
            np.diff(seq[0]) != 0, np.diff(ids[0]) != 0):
        raise ValueError(
            "`seq_idx` and `cu_seqlens` describe different sequence boundaries"
        )
    return cu, np.ascontiguousarray(ids)


def _process_dt(dt, dt_bias, dt_softplus, dt_limit):
    """dt' = clamp(softplus(dt + dt_bias) or dt + dt_bias, *dt_limit)."""
    d = np.array(dt, copy=True)
    if dt_bias is not None:
        d += dt_bias
    if dt_softplus:
        # log(1 + e^d), overflow-free
        np.logaddexp(d.dtype.type(0), d, out=d)
    lo, hi = dt_limit
    np.clip(d, d.dtype.type(lo), d.dtype.type(hi), out=d)
    return d


def _finish(y, x, D, z):
    """y (+ D x), then y * silu(z), in place."""
    if D is not None:
        y += x * (D[:, None] if D.ndim == 1 else D)
    if z is not None:
        y *= silu(z)        # the package's SiLU: silu(-inf) = -0
    return y


def _chunk_size(chunk_size, L):
    """The chunk length a layer call uses: never longer than the sequence
    (a chunk longer than the sequence is the same single chunk)."""
    cs = positive_int(chunk_size, "chunk_size", allow_none=True)
    if cs is None:
        cs = _DEFAULT_CHUNK
    return max(1, min(cs, L))


def _step_sizes(dt, A, dt_bias, dt_softplus, dt_limit, chunk_size, nthreads,
                seq=None):
    """The processed steps of C-contiguous (batch, seqlen, nheads) `dt`, as
    (batch, nheads, seqlen); with `chunk_size`, (dt_out, dA_cumsum) as
    (batch, nheads, nchunks * chunk_size), zero-padded and with the decay
    sums restarted at every chunk (and at every sequence start of `seq`)."""
    nb, L, H = dt.shape
    cs = L if chunk_size is None else chunk_size
    Lp = -(-L // cs) * cs if L else 0
    dt_out = np.empty((nb, H, Lp), dtype=dt.dtype)
    lo, hi = dt_limit
    if chunk_size is None:
        _ssd.process_dt(dt, lo, hi, max(cs, 1), dt_out, nthreads,
                        bias=dt_bias, dt_softplus=dt_softplus)
        return dt_out
    dA = np.empty_like(dt_out)
    _ssd.process_dt(dt, lo, hi, cs, dt_out, nthreads, bias=dt_bias,
                    dt_softplus=dt_softplus, A=A, dA=dA, seq=seq)
    return dt_out, dA


def _chunk_layout(dt_out, dA_cumsum, nb, H, L):
    """Check the (batch, nheads, nchunks, chunk_size) stage arrays."""
    check_shape(dt_out, (nb, H, None, None), "dt_out")
    nch, cs = dt_out.shape[2:]
    if cs < 1:
        raise ValueError(f"`dt_out` must have chunk_size >= 1 (its last axis), got {cs}")
    if nch != -(-L // cs):
        raise ValueError(
            f"`dt_out` must have nchunks = ceil(seqlen / chunk_size) = "
            f"{-(-L // cs)} for seqlen {L} and chunk_size {cs}, got {nch}"
        )
    check_shape(dA_cumsum, dt_out.shape, "dA_cumsum")
    return nch, cs


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------


def ssd_chunk_cumsum(dt, A, *, chunk_size, dt_bias=None, dt_softplus=False,
                     dt_limit=(0.0, math.inf)):
    r"""Process the step sizes and form the per-chunk cumulative decays.

    Stage 1 of the chunked SSD algorithm.

    Parameters
    ----------
    dt : array_like
        Step sizes, shape (batch, seqlen, nheads), float32 or float64.
    A : array_like
        Decay rates, shape (nheads,) (negative for a stable model).
    chunk_size : int
        Positions per chunk.
    dt_bias : array_like, optional
        Added to `dt`, shape (nheads,).
    dt_softplus : bool, optional
        Apply :math:`\log(1 + e^{x})` to ``dt + dt_bias``.
    dt_limit : (float, float), optional
        Clamp the processed step to ``[low, high]``. Default ``(0, inf)``.

    Returns
    -------
    dt_out : ndarray
        The processed steps :math:`\Delta'`, shape
        (batch, nheads, nchunks, chunk_size) with
        ``nchunks = ceil(seqlen / chunk_size)``; padding positions are 0.
    dA_cumsum : ndarray
        The inclusive cumulative sum of :math:`\Delta' A` within each chunk,
        same shape (restarted at every chunk; constant over the padding).

    Raises
    ------
    TypeError
        If an input is not real and numeric.
    ValueError
        If the shapes disagree, `chunk_size` is not a positive integer or
        `dt_limit` is not an ordered pair.

    See Also
    --------
    ssd_chunk_state, ssd_state_passing, ssd_chunk_scan
    ssd_chunk_scan_combined : the four stages in one call.

    Notes
    -----
    .. math::

        \Delta'_t = \operatorname{clamp}\bigl(\operatorname{softplus}(\Delta_t
        + b), \ell, u\bigr), \qquad
        \mathrm{cs}_{t} = \sum_{s = c_0}^{t} \Delta'_s A ,

    where :math:`c_0` is the first position of the chunk of :math:`t`.
    Restarting the sum at every chunk keeps the exponents of the later
    stages differences of nearby values, accurate in float32 whatever the
    sequence length.

    The sums know nothing of packed sequences: the later stages, given
    `seq_idx`, compute each sequence of a chunk on its own (a NaN or
    infinity in `x`, `B`, `C` stays in its sequence), but a non-finite step
    makes the sums of the rest of its chunk non-finite.
    :func:`ssd_chunk_scan_combined` restarts them at every sequence start
    and keeps every input isolated.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import ssd_chunk_cumsum
    >>> dt = np.full((1, 5, 1), 0.5)
    >>> dt_out, dA_cumsum = ssd_chunk_cumsum(dt, [-1.0], chunk_size=2)
    >>> dt_out[0, 0]
    array([[0.5, 0.5],
           [0.5, 0.5],
           [0.5, 0. ]])
    >>> dA_cumsum[0, 0]
    array([[-0.5, -1. ],
           [-0.5, -1. ],
           [-0.5, -0.5]])
    """
    cs = positive_int(chunk_size, "chunk_size")
    dt = as_array(dt, "dt")
    A = as_array(A, "A")
    dt_bias = None if dt_bias is None else as_array(dt_bias, "dt_bias")
    dtype = result_dtype(allow_complex=False, dt=dt, A=A, dt_bias=dt_bias)
    check_shape(dt, (None,) * 3, "dt")
    nb, L, H = dt.shape
    check_shape(A, (H,), "A")
    if dt_bias is not None:
        check_shape(dt_bias, (H,), "dt_bias")
        dt_bias = dt_bias.astype(dtype)
    dt_out, dA = _step_sizes(np.ascontiguousarray(dt, dtype=dtype),
                             np.ascontiguousarray(A, dtype=dtype), dt_bias,
                             bool(dt_softplus), _dt_limit(dt_limit), cs, 1)
    nch = dt_out.shape[2] // cs
    return dt_out.reshape(nb, H, nch, cs), dA.reshape(nb, H, nch, cs)


def _stage_arrays(x, B, dt_out, dA_cumsum, extra):
    """Check and cast the arrays the chunk stages share."""
    x = as_array(x, "x")
    B = as_array(B, "B")
    dt_out = as_array(dt_out, "dt_out")
    dA_cumsum = as_array(dA_cumsum, "dA_cumsum")
    dtype = result_dtype(allow_complex=False, x=x, B=B, dt_out=dt_out,
                         dA_cumsum=dA_cumsum, **extra)
    check_shape(x, (None,) * 4, "x")
    nb, L, H, P = x.shape
    check_shape(B, (nb, L, None, None), "B")
    G, N = B.shape[2:]
    _check_groups(H, G)
    nch, cs = _chunk_layout(dt_out, dA_cumsum, nb, H, L)

    def cast(a):
        return np.ascontiguousarray(a, dtype=dtype)

    return (dtype, cast, cast(x), cast(B),
            cast(dt_out).reshape(nb, H, nch * cs),
            cast(dA_cumsum).reshape(nb, H, nch * cs), nch, cs)


def ssd_chunk_state(x, B, dt_out, dA_cumsum, *, seq_idx=None, workers=None):
    r"""The state at the end of every chunk, each from a zero start.

    Stage 2 of the chunked SSD algorithm.

    Parameters
    ----------
    x : array_like
        Inputs, shape (batch, seqlen, nheads, headdim).
    B : array_like
        Input projections, shape (batch, seqlen, ngroups, dstate); head h
        uses group ``h // (nheads // ngroups)``.
    dt_out, dA_cumsum : array_like
        The outputs of :func:`ssd_chunk_cumsum`, shape
        (batch, nheads, nchunks, chunk_size).
    seq_idx : array_like of int, optional
        Sequence ids, shape (batch, seqlen), non-decreasing along each row.
        A chunk's state only collects the positions of the sequence of its
        last position.
    workers : int, optional
        Threads: None is 1, -1 all cores (as in :mod:`scipy.fft`).

    Returns
    -------
    states : ndarray
        Shape (batch, nchunks, nheads, headdim, dstate).

    Raises
    ------
    TypeError
        If an input is not real and numeric, or `seq_idx` not integer.
    ValueError
        If the shapes disagree, ngroups does not divide nheads or `seq_idx`
        decreases.

    See Also
    --------
    ssd_chunk_cumsum, ssd_state_passing, ssd_chunk_scan

    Notes
    -----
    For chunk :math:`k` with positions :math:`c_0 \dots c_1` (last real one),

    .. math::

        S_k = \sum_{l = c_0}^{c_1} e^{\mathrm{cs}_{c_1} - \mathrm{cs}_l}\,
        \Delta'_l\, x_l B_l^\top ,

    one matrix product :math:`X^\top \operatorname{diag}(w) B` per chunk and
    head.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import ssd_chunk_cumsum, ssd_chunk_state
    >>> x = np.ones((1, 4, 1, 1)); B = np.ones((1, 4, 1, 1))
    >>> dt_out, dA_cumsum = ssd_chunk_cumsum(np.ones((1, 4, 1)), [0.0], chunk_size=2)
    >>> ssd_chunk_state(x, B, dt_out, dA_cumsum)[0, :, 0, 0, 0]
    array([2., 2.])
    """
    nthreads = running_threads(resolve_workers(workers))
    dtype, cast, x, B, dt_out, dA, nch, cs = _stage_arrays(
        x, B, dt_out, dA_cumsum, {})
    nb, L, H, P = x.shape
    N = B.shape[3]
    seq = _seq_idx(seq_idx, nb, L)
    states = np.zeros((nb, nch, H, P, N), dtype=dtype)
    if min(nb, L, H, P, N) == 0:
        return states
    _ssd.chunk_state(x, dt_out, dA, B, states, cs, nthreads, seq=seq)
    return states


def ssd_state_passing(states, dA_cumsum, *, initial_states=None, seq_idx=None,
                      workers=None):
    r"""Carry the chunk states across chunks: the state entering each chunk.

    Stage 3 of the chunked SSD algorithm.

    Parameters
    ----------
    states : array_like
        The chunk states of :func:`ssd_chunk_state`, shape
        (batch, nchunks, nheads, headdim, dstate).
    dA_cumsum : array_like
        From :func:`ssd_chunk_cumsum`, shape (batch, nheads, nchunks, chunk_size).
    initial_states : array_like, optional
        The state before the first position, shape
        (batch, nheads, headdim, dstate). Default 0.
    seq_idx : array_like of int, optional
        Sequence ids, shape (batch, seqlen) with
        ``nchunks = ceil(seqlen / chunk_size)``; the state is reset to zero
        where the id changes.
    workers : int, optional
        Threads: None is 1, -1 all cores.

    Returns
    -------
    chunk_states : ndarray
        ``chunk_states[:, k]`` is the state entering chunk k (that is, the
        state before its first position, zero if a new sequence starts
        there), shape (batch, nchunks, nheads, headdim, dstate).
    final_states : ndarray
        The state after the last position, shape (batch, nheads, headdim, dstate).

    Raises
    ------
    TypeError
        If an input is not real and numeric.
    ValueError
        If the shapes disagree or `seq_idx` decreases.

    See Also
    --------
    ssd_chunk_state, ssd_chunk_scan

    Notes
    -----
    With :math:`e_k` the decay of chunk k (the last value of its cumulative
    sum), :math:`H_0 = h_{\text{init}}` and

    .. math::

        H_{k+1} = e^{e_k} H_k + S_k ,

    where the carried term is dropped when a sequence starts inside chunk k
    and :math:`H_{k+1}` is zeroed when one starts at its first position.
    The pass is sequential over chunks, parallel over (batch, head).

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import ssd_state_passing
    >>> states = np.ones((1, 3, 1, 1, 1))
    >>> dA_cumsum = np.log(np.full((1, 1, 3, 1), 0.5))
    >>> entering, final = ssd_state_passing(states, dA_cumsum)
    >>> entering[0, :, 0, 0, 0], final[0, 0, 0, 0]
    (array([0. , 1. , 1.5]), np.float64(1.75))
    """
    nthreads = running_threads(resolve_workers(workers))
    states = as_array(states, "states")
    dA_cumsum = as_array(dA_cumsum, "dA_cumsum")
    init = None if initial_states is None else as_array(initial_states, "initial_states")
    dtype = result_dtype(allow_complex=False, states=states,
                         dA_cumsum=dA_cumsum, initial_states=init)
    check_shape(states, (None,) * 5, "states")
    nb, nch, H, P, N = states.shape
    check_shape(dA_cumsum, (nb, H, nch, None), "dA_cumsum")
    cs = dA_cumsum.shape[3]
    if cs < 1:
        raise ValueError(f"`dA_cumsum` must have chunk_size >= 1 (its last axis), got {cs}")
    if seq_idx is None:
        L = nch * cs
        seq = None
    else:
        s = as_array(seq_idx, "seq_idx")
        check_shape(s, (nb, None), "seq_idx")
        L = s.shape[1]
        if nch != -(-L // cs):
            raise ValueError(
                f"`seq_idx` must have seqlen with ceil(seqlen / chunk_size) = "
                f"nchunks = {nch} (chunk_size {cs}), got seqlen {L}"
            )
        seq = _seq_idx(s, nb, L)
    if init is None:
        init = np.zeros((nb, H, P, N), dtype=dtype)
    else:
        check_shape(init, (nb, H, P, N), "initial_states")
    out = np.empty((nb, nch, H, P, N), dtype=dtype)
    final = np.empty((nb, H, P, N), dtype=dtype)
    if out.size == 0:
        final[...] = init
        return out, final
    _ssd.state_passing(
        np.ascontiguousarray(states, dtype=dtype),
        np.ascontiguousarray(dA_cumsum, dtype=dtype).reshape(nb, H, nch * cs),
        L, np.ascontiguousarray(init, dtype=dtype), out, final, cs, nthreads,
        seq=seq)
    return out, final


def ssd_chunk_scan(x, dt_out, dA_cumsum, B, C, chunk_states, *, D=None, z=None,
                   seq_idx=None, workers=None):
    r"""The output: intra-chunk (diagonal block) plus inter-chunk terms.

    Stage 4 of the chunked SSD algorithm.

    Parameters
    ----------
    x : array_like
        Inputs, shape (batch, seqlen, nheads, headdim).
    dt_out, dA_cumsum : array_like
        From :func:`ssd_chunk_cumsum`, shape (batch, nheads, nchunks, chunk_size).
    B, C : array_like
        Input and output projections, shape (batch, seqlen, ngroups, dstate).
    chunk_states : array_like
        The state entering each chunk, from :func:`ssd_state_passing`, shape
        (batch, nchunks, nheads, headdim, dstate).
    D : array_like, optional
        Skip connection, shape (nheads,) or (nheads, headdim).
    z : array_like, optional
        Gate, shape of `x`: the output is multiplied by ``silu(z)``.
    seq_idx : array_like of int, optional
        Sequence ids, shape (batch, seqlen), non-decreasing along each row.
    workers : int, optional
        Threads: None is 1, -1 all cores.

    Returns
    -------
    y : ndarray
        Shape (batch, seqlen, nheads, headdim).

    Raises
    ------
    TypeError
        If an input is not real and numeric.
    ValueError
        If the shapes disagree, ngroups does not divide nheads or `seq_idx`
        decreases.

    See Also
    --------
    ssd_chunk_cumsum, ssd_chunk_state, ssd_state_passing
    ssd_chunk_scan_combined : all four stages.

    Notes
    -----
    For position i of a chunk with entering state :math:`H`,

    .. math::

        y_i = \sum_{j \le i} (C_i \cdot B_j)\, e^{\mathrm{cs}_i - \mathrm{cs}_j}
        \Delta'_j x_j \;+\; e^{\mathrm{cs}_i} H C_i ,

    the sums restricted to positions of the sequence of i. Per chunk and
    head these are three matrix products, :math:`(E \circ C B^\top)`,
    its product with :math:`\operatorname{diag}(\Delta') X`, and
    :math:`C H^\top`.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import (ssd_chunk_cumsum, ssd_chunk_scan, ssd_chunk_state,
    ...                        ssd_chunk_scan_combined, ssd_state_passing)
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((1, 10, 2, 3)); dt = rng.uniform(0, 1, (1, 10, 2))
    >>> A = np.array([-1.0, -0.5]); B = rng.standard_normal((1, 10, 1, 4))
    >>> C = rng.standard_normal((1, 10, 1, 4))
    >>> dt_out, dA_cumsum = ssd_chunk_cumsum(dt, A, chunk_size=4)
    >>> states = ssd_chunk_state(x, B, dt_out, dA_cumsum)
    >>> entering, final = ssd_state_passing(states, dA_cumsum)
    >>> y = ssd_chunk_scan(x, dt_out, dA_cumsum, B, C, entering)
    >>> bool(np.allclose(y, ssd_chunk_scan_combined(x, dt, A, B, C, chunk_size=4)))
    True
    """
    nthreads = running_threads(resolve_workers(workers))
    C = as_array(C, "C")
    chunk_states = as_array(chunk_states, "chunk_states")
    D = None if D is None else as_array(D, "D")
    z = None if z is None else as_array(z, "z")
    dtype, cast, x, B, dt_out, dA, nch, cs = _stage_arrays(
        x, B, dt_out, dA_cumsum, {"C": C, "chunk_states": chunk_states,
                                  "D": D, "z": z})
    nb, L, H, P = x.shape
    G, N = B.shape[2:]
    check_shape(C, B.shape, "C")
    check_shape(chunk_states, (nb, nch, H, P, N), "chunk_states")
    if D is not None and D.shape not in ((H,), (H, P)):
        raise ValueError(f"`D` must have shape ({H},) or ({H}, {P}), got {D.shape}")
    if z is not None:
        check_shape(z, x.shape, "z")
    seq = _seq_idx(seq_idx, nb, L)
    y = np.zeros(x.shape, dtype=dtype)
    if min(nb, L, H, P, N) > 0:
        _ssd.chunk_scan(x, dt_out, dA, B, cast(C), cast(chunk_states), y, cs,
                        nthreads, seq=seq)
    return _finish(y, x, None if D is None else cast(D),
                   None if z is None else cast(z))


def ssd_chunk_scan_combined(x, dt, A, B, C, chunk_size=None, *, D=None, z=None,
                            dt_bias=None, initial_states=None, seq_idx=None,
                            dt_softplus=False, dt_limit=(0.0, math.inf),
                            return_final_states=False, workers=None,
                            cu_seqlens=None, return_varlen_states=False):
    r"""A Mamba-2 SSD layer by the chunked algorithm.

    Parameters
    ----------
    x : array_like
        Inputs, shape (batch, seqlen, nheads, headdim), float32 or float64.
    dt : array_like
        Step sizes, shape (batch, seqlen, nheads).
    A : array_like
        Decay rates, shape (nheads,) (negative for a stable model).
    B, C : array_like
        Input and output projections, shape (batch, seqlen, ngroups, dstate)
        with ngroups dividing nheads; head h uses group
        ``h // (nheads // ngroups)``.
    chunk_size : int, optional
        Positions per chunk. The default is 64 (or seqlen when shorter): the
        products are then at the size a single-threaded GEMM runs fastest,
        and the chunk-length part of the work stays below the state part.
    D : array_like, optional
        Skip connection, shape (nheads,) or (nheads, headdim): adds ``D x``.
    z : array_like, optional
        Gate, shape of `x`: the output is multiplied by ``silu(z)``.
    dt_bias : array_like, optional
        Added to `dt`, shape (nheads,).
    initial_states : array_like, optional
        The state before the first position, shape
        (batch, nheads, headdim, dstate). Default 0.
    seq_idx : array_like of int, optional
        Sequence ids, shape (batch, seqlen), non-decreasing along each row:
        several sequences packed in one row. The state is reset to zero where
        the id changes (`initial_states` is the state before position 0).
    dt_softplus : bool, optional
        Apply softplus to ``dt + dt_bias``.
    dt_limit : (float, float), optional
        Clamp the processed step to ``[low, high]``. Default ``(0, inf)``.
    return_final_states : bool, optional
        Also return the state after the last position.
    workers : int, optional
        Threads: None is 1, -1 all cores (as in :mod:`scipy.fft`). The work is
        split over (batch, head) pairs.
    cu_seqlens : array_like of int, optional
        Shape (nseq + 1,): the cumulative boundaries of nseq sequences packed
        in the one row of a batch of 1, starting at 0 and ending at seqlen
        (non-decreasing; a repeated value is an empty sequence). The state
        restarts at every boundary, from ``initial_states[k]`` for sequence k
        when `initial_states` is given (it then has nseq rows), else from 0.
        Equivalent to the `seq_idx` it implies (both may be given when they
        agree).
    return_varlen_states : bool, optional
        With `cu_seqlens`: also return every sequence's final state.

    Returns
    -------
    y : ndarray
        Shape (batch, seqlen, nheads, headdim), dtype of the inputs.
    final_states : ndarray
        Only with ``return_final_states=True``: the state after the last
        position, shape (batch, nheads, headdim, dstate).
    varlen_states : ndarray
        Only with ``return_varlen_states=True``: shape
        (nseq, nheads, headdim, dstate), the state after the last position
        of each sequence (its initial state, or 0, for an empty one).

    Raises
    ------
    TypeError
        If an input is not real and numeric, or `seq_idx` is not integer.
    ValueError
        If the shapes disagree (each message names the argument), ngroups
        does not divide nheads, `chunk_size` is not a positive integer,
        `seq_idx` decreases, `workers` is 0, `cu_seqlens` is not integer,
        does not run from 0 to seqlen, decreases or comes with batch != 1,
        or `return_varlen_states` comes without `cu_seqlens`.

    See Also
    --------
    ssd_sequential : the same by the recurrence.
    ssd_quadratic : the same by the attention form.
    ssd_chunk_cumsum, ssd_chunk_state, ssd_state_passing, ssd_chunk_scan :
        the four stages, which chained give this function's result.
    selective_state_update : one step, for decoding.

    Notes
    -----
    Per head, with :math:`\Delta'_t = \operatorname{clamp}(\operatorname{softplus}
    (\Delta_t + b), \ell, u)` (softplus only with ``dt_softplus=True``),

    .. math::

        h_t = e^{\Delta'_t A} h_{t-1} + \Delta'_t\, x_t B_t^\top, \qquad
        y_t = h_t C_t + D x_t, \qquad y_t \leftarrow y_t \cdot
        \operatorname{silu}(z_t).

    The chunked algorithm splits the sequence into chunks of
    :math:`Q` = `chunk_size` positions. Inside a chunk the output is the
    masked attention :math:`(E \circ C B^\top)(\Delta' x)` with
    :math:`E_{ij} = e^{\mathrm{cs}_i - \mathrm{cs}_j}`, plus the entering
    state read out by :math:`C`; between chunks the state is carried by the
    recurrence. Work per token and head is about
    :math:`2Q(\text{dstate} + \text{headdim}) + 4\,\text{headdim}\cdot\text{dstate}`
    multiply-adds, all in register-tiled matrix products that skip the
    masked upper half of the intra-chunk one (on x86-64 CPUs with AVX-512,
    a build of them on 64-byte vectors, picked once per process; results
    may differ from the other build's in the last bits).
    Each (batch, head) pair is one parallel task that walks its chunks in
    order, so only one state per task is kept and no per-chunk states are
    stored: the working memory is O(workers * Q^2) plus, when several heads
    share a group, the (batch, ngroups, nchunks, Q, Q) products
    :math:`C B^\top` formed once for all of them (about Q / (headdim *
    heads per group) times the size of `x`).

    All exponents are differences of cumulative sums within one chunk, and
    are clamped to <= 0 when the decays are (:math:`\Delta' A \le 0`): float32
    keeps its accuracy at any sequence length. A decay below the square root
    of the smallest normal number (about :math:`10^{-19}` in float32,
    :math:`10^{-154}` in float64) is taken as zero: its products would be
    subnormal numbers, which slow the arithmetic several times over (heads
    with a large :math:`|\Delta' A|` put many decays there), and what is
    dropped is below that fraction of the terms it scales. float32
    inputs are computed in float32, float64 in float64.

    A NaN or infinity in a chunk's input can reach the outputs of that chunk's
    earlier positions through the (zero) masked entries of the products, as in
    every matrix-product formulation of SSD; :func:`ssd_sequential` keeps
    them causal. Packed sequences (`seq_idx`, `cu_seqlens`) never share
    arithmetic: a chunk holding a sequence boundary is computed as separate
    pieces, one per sequence, so a NaN or infinity in one sequence (or in
    its initial state) never reaches another, and every sequence equals its
    lone call to rounding.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       `cu_seqlens` and `return_varlen_states`; isolation of packed
       sequences.

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import ssd_chunk_scan_combined, ssd_sequential
    >>> rng = np.random.default_rng(0)
    >>> batch, seqlen, nheads, headdim, ngroups, dstate = 2, 100, 4, 8, 2, 16
    >>> x = rng.standard_normal((batch, seqlen, nheads, headdim))
    >>> dt = rng.uniform(-4, -1, (batch, seqlen, nheads))
    >>> A = -rng.uniform(1, 16, nheads)
    >>> B = rng.standard_normal((batch, seqlen, ngroups, dstate))
    >>> C = rng.standard_normal((batch, seqlen, ngroups, dstate))
    >>> y, last = ssd_chunk_scan_combined(x, dt, A, B, C, chunk_size=32,
    ...                                   dt_softplus=True, D=np.ones(nheads),
    ...                                   return_final_states=True, workers=2)
    >>> y.shape, last.shape
    ((2, 100, 4, 8), (2, 4, 8, 16))
    >>> y_ref = ssd_sequential(x, dt, A, B, C, dt_softplus=True, D=np.ones(nheads))
    >>> bool(np.allclose(y, y_ref))
    True
    """
    # the result is the same on any number of threads: run on the free
    # cores only
    nthreads = running_threads(resolve_workers(workers))
    p = _Problem(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                 initial_states=initial_states, seq_idx=seq_idx,
                 dt_softplus=dt_softplus, dt_limit=dt_limit,
                 cu_seqlens=cu_seqlens)
    _check_varlen_request(p, return_varlen_states)
    cs = _chunk_size(chunk_size, p.L)
    last = np.zeros((p.nb, p.H, p.P, p.N), dtype=p.dtype)
    live, ends = _varlen_rows(p)
    if p.degenerate:
        y = p.finish(np.zeros(p.x.shape, dtype=p.dtype))
        if p.init is not None and p.cu is None:
            last[...] = p.init
        elif p.init is not None and p.L == 0:
            last[...] = p.init[-1]
    else:
        dt_out, dA = p.processed_dt(cs, nthreads, p.seq)
        y = np.empty(p.x.shape, dtype=p.dtype)
        D2 = (None if p.D is None else np.ascontiguousarray(np.broadcast_to(
            p.D[:, None] if p.D.ndim == 1 else p.D, (p.H, p.P))))
        init = p.init
        if init is not None and p.cu is not None:
            init = np.ascontiguousarray(init[live])
        # D and the gate are applied in the kernel, chunk by chunk
        _ssd.combined(p.x, dt_out, dA, p.B, p.C, y, last, cs, nthreads,
                      seq=p.seq, init=init,
                      init_per_seq=p.cu is not None and init is not None,
                      ends=ends, D=D2, z=p.z)
    return _packed_results(p, y, last, live, ends, return_final_states,
                           return_varlen_states)


def _check_varlen_request(p, return_varlen_states):
    if return_varlen_states and p.cu is None:
        raise ValueError(
            "`return_varlen_states=True` needs `cu_seqlens` (the sequences "
            "whose final states to return)"
        )


def _varlen_rows(p):
    """With `cu_seqlens`: the indices of the non-empty sequences and a
    buffer for their end states (the kernels count sequences that have
    positions). Otherwise (None, None)."""
    if p.cu is None:
        return None, None
    live = np.flatnonzero(np.diff(p.cu) > 0)
    return live, np.zeros((len(live), p.H, p.P, p.N), dtype=p.dtype)


def _packed_results(p, y, last, live, ends, return_final_states,
                    return_varlen_states):
    """y, then the final states, then every sequence's end state, as asked;
    an empty sequence ends in its initial state (zero without one)."""
    out = [y]
    if return_final_states:
        out.append(last)
    if return_varlen_states:
        varlen = (np.zeros((p.nseq, p.H, p.P, p.N), dtype=p.dtype)
                  if p.init is None else p.init.copy())
        varlen[live] = ends
        out.append(varlen)
    return out[0] if len(out) == 1 else tuple(out)


def ssd_sequential(x, dt, A, B, C, chunk_size=None, *, D=None, z=None,
                   dt_bias=None, initial_states=None, seq_idx=None,
                   dt_softplus=False, dt_limit=(0.0, math.inf),
                   return_final_states=False, workers=None, cu_seqlens=None,
                   return_varlen_states=False):
    r"""A Mamba-2 SSD layer by the plain recurrence, one position at a time.

    The reference for the chunked algorithm, and the fastest method for
    short sequences.

    Parameters
    ----------
    x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_limit, return_final_states, cu_seqlens, return_varlen_states
        As in :func:`ssd_chunk_scan_combined`.
    chunk_size : int, optional
        Accepted (and checked) for a signature identical to
        :func:`ssd_chunk_scan_combined`; unused.
    workers : int, optional
        Threads: None is 1, -1 all cores; the work is split over
        (batch, head) pairs.

    Returns
    -------
    y : ndarray
        Shape (batch, seqlen, nheads, headdim).
    final_states : ndarray
        Only with ``return_final_states=True``: shape
        (batch, nheads, headdim, dstate).
    varlen_states : ndarray
        Only with ``return_varlen_states=True``: shape
        (nseq, nheads, headdim, dstate).

    Raises
    ------
    TypeError
        If an input is not real and numeric, or `seq_idx` is not integer.
    ValueError
        As :func:`ssd_chunk_scan_combined`.

    See Also
    --------
    ssd_chunk_scan_combined, ssd_quadratic, selective_state_update

    Notes
    -----
    For every position t, in order, with the state reset to zero where
    `seq_idx` changes:

    .. math::

        h_t = e^{\Delta'_t A} h_{t-1} + \Delta'_t\, x_t B_t^\top, \qquad
        y_t = h_t C_t \;(+ D x_t), \quad y_t \leftarrow y_t\,
        \operatorname{silu}(z_t).

    :math:`2\,\text{headdim}\cdot\text{dstate}` multiply-adds per token and
    head, with one state per (batch, head) held in cache, but as vector
    operations rather than matrix products: faster than the chunked
    algorithm for very short sequences only. On a 2-core x86-64 machine
    with batch 1, 8 heads and a 64 x 64 state per head, it was faster up to
    seqlen 4 or 8 and slower from seqlen 8 or 16 on, depending on the run
    (``bench/bench_ssd.py`` measures the crossover on a given machine);
    decoding one token at a time (:func:`selective_state_update`) is where
    it belongs.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import ssd_sequential
    >>> x = np.ones((1, 3, 1, 1)); dt = np.full((1, 3, 1), np.log(2.0))
    >>> B = np.ones((1, 3, 1, 1)); C = np.ones((1, 3, 1, 1))
    >>> y = ssd_sequential(x, dt, [-1.0], B, C)   # h_t = h_{t-1} / 2 + log 2
    >>> np.round(y[0, :, 0, 0] / np.log(2.0), 6)
    array([1.  , 1.5 , 1.75])
    """
    nthreads = running_threads(resolve_workers(workers))
    p = _Problem(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                 initial_states=initial_states, seq_idx=seq_idx,
                 dt_softplus=dt_softplus, dt_limit=dt_limit,
                 cu_seqlens=cu_seqlens)
    _check_varlen_request(p, return_varlen_states)
    _chunk_size(chunk_size, p.L)
    y = np.zeros(p.x.shape, dtype=p.dtype)
    live, ends = _varlen_rows(p)
    if p.cu is None:
        last = p.state()
        if not p.degenerate:
            _ssd.sequential(p.x, p.processed_dt(), p.A, p.B, p.C, last, y,
                            nthreads, seq=p.seq)
    else:
        # the reference: every sequence on its own, from its own state
        last = np.zeros((1, p.H, p.P, p.N), dtype=p.dtype)
        if p.init is not None and p.L == 0:
            last[0] = p.init[-1]
        dtp = p.processed_dt() if not p.degenerate else None
        for i, k in enumerate(live):
            lo, hi = p.cu[k], p.cu[k + 1]
            st = (np.zeros((1, p.H, p.P, p.N), dtype=p.dtype)
                  if p.init is None else p.init[k:k + 1].copy())
            if not p.degenerate:
                yk = np.zeros((1, hi - lo, p.H, p.P), dtype=p.dtype)
                _ssd.sequential(
                    np.ascontiguousarray(p.x[:, lo:hi]),
                    np.ascontiguousarray(dtp[:, :, lo:hi]), p.A,
                    np.ascontiguousarray(p.B[:, lo:hi]),
                    np.ascontiguousarray(p.C[:, lo:hi]), st, yk, nthreads)
                y[:, lo:hi] = yk
            ends[i] = st[0]
            last[...] = st
    y = p.finish(y)
    return _packed_results(p, y, last, live, ends, return_final_states,
                           return_varlen_states)


def _segsum(a):
    """out[..., i, j] = sum_{t=j+1..i} a[..., t] (j <= i), -inf above.

    Accumulated down the columns of the strictly lower masked a_i, so every
    entry is a direct sum of its own terms (no prefix-sum differences).
    """
    n = a.shape[-1]
    below = np.tril(np.ones((n, n), dtype=bool), -1)
    s = np.cumsum(np.where(below, a[..., :, None], a.dtype.type(0)), axis=-2)
    return np.where(np.tril(np.ones((n, n), dtype=bool)), s,
                    a.dtype.type(-np.inf))


def ssd_quadratic(x, dt, A, B, C, *, D=None, z=None, dt_bias=None,
                  dt_softplus=False, dt_limit=(0.0, math.inf)):
    r"""A Mamba-2 SSD layer by its attention (quadratic, "dual") form.

    Forms the masked (seqlen, seqlen) attention matrix of every head:
    O(seqlen^2) time and memory, meant as a reference for short sequences.

    Parameters
    ----------
    x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit
        As in :func:`ssd_chunk_scan_combined`.

    Returns
    -------
    y : ndarray
        Shape (batch, seqlen, nheads, headdim).

    Raises
    ------
    TypeError
        If an input is not real and numeric.
    ValueError
        If the shapes disagree or ngroups does not divide nheads.

    See Also
    --------
    ssd_chunk_scan_combined, ssd_sequential

    Notes
    -----
    .. math::

        y = (L \circ C B^\top)(\Delta' x), \qquad
        L_{ij} = \exp\Bigl(\sum_{t=j+1}^{i} \Delta'_t A\Bigr) \ (j \le i),
        \quad L_{ij} = 0 \ (j > i),

    per head, where the segment sums are accumulated directly (never as a
    difference of prefix sums, which would cancel).

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import ssd_quadratic, ssd_sequential
    >>> rng = np.random.default_rng(1)
    >>> x = rng.standard_normal((1, 20, 2, 4)); dt = rng.uniform(0, 0.5, (1, 20, 2))
    >>> B = rng.standard_normal((1, 20, 1, 3)); C = rng.standard_normal((1, 20, 1, 3))
    >>> y = ssd_quadratic(x, dt, [-1.0, -2.0], B, C)
    >>> bool(np.allclose(y, ssd_sequential(x, dt, [-1.0, -2.0], B, C)))
    True
    """
    p = _Problem(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                 dt_softplus=dt_softplus, dt_limit=dt_limit)
    y = np.zeros(p.x.shape, dtype=p.dtype)
    if not p.degenerate:
        dtp = _process_dt(p.dt, p.dt_bias, p.dt_softplus,
                          p.dt_limit).transpose(0, 2, 1)  # (batch, nheads, seqlen)
        rep = p.H // p.G
        for b in range(p.nb):
            for h in range(p.H):
                g = h // rep
                Lmat = np.exp(_segsum(dtp[b, h] * p.A[h]))
                M = Lmat * (p.C[b, :, g] @ p.B[b, :, g].T)
                y[b, :, h] = M @ (dtp[b, h][:, None] * p.x[b, :, h])
    return p.finish(y)


def _state_buffer(state, name, dtypes=None):
    """The caller's memory of an in-place state, as an ndarray (never a copy).

    An ndarray is checked as it is; another library's CPU array (a torch
    tensor, ...) is viewed zero-copy through DLPack, so that the update
    lands in its memory. Read-only, non-contiguous or non-float memory is
    refused by name (an update written to a copy would be lost).
    """
    if not isinstance(state, np.ndarray) and hasattr(state, "__dlpack__"):
        try:
            view = np.from_dlpack(state, copy=False)
        except (TypeError, ValueError, RuntimeError, BufferError) as exc:
            raise TypeError(
                f"`{name}` is updated in place and must expose its memory "
                f"zero-copy (a CPU array through DLPack); it could not be "
                f"viewed: {exc}"
            ) from None
        if not view.flags.writeable:
            raise ValueError(
                f"`{name}` must be writeable (it is updated in place); its "
                f"DLPack view is read-only"
            )
        state = view
    if dtypes is None:
        return inplace_array(state, name)
    return inplace_array(state, name, dtypes)


def _batch_indices(indices, nb, pool, name):
    """Rows of a state pool for the batch: (batch,) distinct ints in range."""
    if indices is None:
        return None
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"`{name}` must have an integer dtype, got dtype {idx.dtype}")
    check_shape(idx, (nb,), name)
    idx = np.ascontiguousarray(idx, dtype=np.intp)
    if nb and (idx.min() < 0 or idx.max() >= pool):
        raise ValueError(
            f"`{name}` must index the {pool} rows of the state, got values in "
            f"[{int(idx.min())}, {int(idx.max())}]"
        )
    if len(np.unique(idx)) != nb:
        raise ValueError(f"`{name}` must not name a state row twice")
    return idx


# below this many state elements times tokens a decode call runs on the
# calling thread
_DECODE_PARALLEL_MIN = 1 << 16


def selective_state_update(state, x, dt, A, B, C, *, D=None, z=None,
                           dt_bias=None, dt_softplus=False,
                           dt_limit=(0.0, math.inf), state_batch_indices=None,
                           return_intermediate_states=False, workers=None):
    r"""Advance a Mamba-2 state by one token or T tokens, in place.

    Parameters
    ----------
    state : ndarray or DLPack array
        Shape (batch, nheads, headdim, dstate), or (pool, nheads, headdim,
        dstate) with `state_batch_indices`; float32 or float64, writeable
        and C-contiguous; updated in place (the documented exception to
        "inputs are never modified"). Its dtype must be the result dtype of
        the other inputs (a float32 state takes float32 inputs). A CPU
        array of another library (a torch tensor) is updated in its own
        memory through ``__dlpack__``.
    x : array_like
        The token's inputs, shape (batch, nheads, headdim), or
        (batch, T, nheads, headdim) for T tokens.
    dt : array_like
        Step sizes, shape (batch, nheads), or (batch, T, nheads).
    A : array_like
        Decay rates, shape (nheads,).
    B, C : array_like
        Projections, shape (batch, ngroups, dstate), or (batch, T, ngroups,
        dstate); ngroups divides nheads.
    D : array_like, optional
        Skip connection, shape (nheads,) or (nheads, headdim).
    z : array_like, optional
        Gate, shape of `x`.
    dt_bias : array_like, optional
        Added to `dt`, shape (nheads,).
    dt_softplus : bool, optional
        Apply softplus to ``dt + dt_bias``.
    dt_limit : (float, float), optional
        Clamp the processed step, as in :func:`ssd_chunk_scan_combined`
        (whose default, ``(0, inf)``, it shares, so that token-by-token
        updates reproduce it).
    state_batch_indices : array_like of int, optional
        Shape (batch,): batch row b advances ``state[state_batch_indices[b]]``
        of a larger state pool (continuous batching); the other rows are
        untouched. Distinct, in ``[0, pool)``.
    return_intermediate_states : bool, optional
        Also return the state after every token (speculative decoding: the
        state to roll back to when a draft token is rejected).
    workers : int, optional
        Threads over the (batch, head) pairs: None is 1, -1 all cores (as in
        :mod:`scipy.fft`). A call whose state rows times tokens number fewer
        than 65536 elements runs on the calling thread (waking another costs
        more than the work). The result is the same for every value.

    Returns
    -------
    y : ndarray
        Shape of `x`.
    intermediate_states : ndarray
        Only with ``return_intermediate_states=True``: shape
        (batch, T, nheads, headdim, dstate) (T = 1 without a token axis);
        ``intermediate_states[:, -1]`` equals the updated state rows.

    Raises
    ------
    TypeError
        If `state` is neither an ndarray nor a zero-copy DLPack array of
        float32/float64, its dtype is not the inputs' result dtype, an input
        is not real and numeric, or `state_batch_indices` is not integer.
    ValueError
        If `state` is read-only or not C-contiguous, the shapes disagree, or
        `state_batch_indices` is out of range or repeats a row.

    See Also
    --------
    ssd_chunk_scan_combined : the same over a whole sequence.
    selective_scan_update : the Mamba-1 step.

    Notes
    -----
    Per token, the step of the recurrence of :func:`ssd_sequential`,
    :math:`h \leftarrow e^{\Delta' A} h + \Delta'\, x B^\top`,
    :math:`y = h C \;(+ D x)`, then :math:`y \cdot \operatorname{silu}(z)`.
    The T tokens of a call run in one kernel call (no Python loop over
    tokens), parallel over (batch, head) with `workers`; a block of state
    rows stays in cache through all T tokens.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       The token axis, `state_batch_indices`,
       `return_intermediate_states` and `workers`; DLPack states.

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import selective_state_update
    >>> state = np.zeros((1, 1, 1, 1))
    >>> for _ in range(3):
    ...     y = selective_state_update(state, np.ones((1, 1, 1)), [[np.log(2.0)]],
    ...                                [-1.0], np.ones((1, 1, 1)), np.ones((1, 1, 1)))
    >>> float(np.round(state[0, 0, 0, 0] / np.log(2.0), 6))
    1.75

    Three tokens at once, keeping the state after each:

    >>> state = np.zeros((1, 1, 1, 1))
    >>> y, steps = selective_state_update(
    ...     state, np.ones((1, 3, 1, 1)), np.full((1, 3, 1), np.log(2.0)), [-1.0],
    ...     np.ones((1, 3, 1, 1)), np.ones((1, 3, 1, 1)),
    ...     return_intermediate_states=True)
    >>> np.round(steps[0, :, 0, 0, 0] / np.log(2.0), 6)
    array([1.  , 1.5 , 1.75])
    """
    state = _state_buffer(state, "state")
    nthreads = resolve_workers(workers)
    x = as_array(x, "x")
    dt = as_array(dt, "dt")
    B = as_array(B, "B")
    C = as_array(C, "C")
    if x.ndim not in (3, 4):
        raise ValueError(
            f"`x` must have shape (batch, nheads, headdim) or (batch, T, "
            f"nheads, headdim), got {x.shape}"
        )
    tokens = x.ndim == 4
    check_shape(dt, (None,) * (3 if tokens else 2), "dt")
    check_shape(B, (None,) * (4 if tokens else 3), "B")
    check_shape(C, (None,) * (4 if tokens else 3), "C")
    if z is not None:
        z = as_array(z, "z")
        check_shape(z, x.shape, "z")
    if not tokens:
        x, dt, B, C = x[:, None], dt[:, None], B[:, None], C[:, None]
        z = None if z is None else z[:, None]
    p = _Problem(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                 dt_softplus=dt_softplus, dt_limit=dt_limit,
                 extra={"state": state})
    rows = _batch_indices(state_batch_indices, p.nb, state.shape[0] if
                          state.ndim else 0, "state_batch_indices")
    check_shape(state, (p.nb if rows is None else None, p.H, p.P, p.N), "state")
    if p.dtype != state.dtype:
        raise TypeError(
            f"`state` has dtype {state.dtype} but the inputs compute in "
            f"{p.dtype}; pass inputs of dtype {state.dtype} or a {p.dtype} state"
        )
    inter = (_empty((p.nb, p.L, p.H, p.P, p.N), p.dtype)
             if return_intermediate_states else None)
    if np.may_share_memory(state, p.x) or np.may_share_memory(state, p.B) \
            or np.may_share_memory(state, p.C):
        raise ValueError("`state` must not share memory with the other inputs")
    if p.degenerate:
        # an empty axis: the kernel has nothing to do, y is D x (gated), the
        # states stay as they are (and `inter` is empty)
        y = p.finish(np.zeros(p.x.shape, dtype=p.dtype))
    else:
        # the kernel writes every output, adds D x and applies the gate
        y = np.empty(p.x.shape, dtype=p.dtype)
        D2 = None if p.D is None else np.ascontiguousarray(np.broadcast_to(
            p.D[:, None] if p.D.ndim == 1 else p.D, (p.H, p.P)))
        if nthreads > 1:
            nthreads = (1 if p.nb * p.L * p.H * p.P * p.N < _DECODE_PARALLEL_MIN
                        else running_threads(min(nthreads, p.nb * p.H)))
        _ssd.decode(p.x, p.processed_dt(), p.A, p.B, p.C, state, y, nthreads,
                    rows=rows, inter=inter, D=D2, z=p.z)
    if not tokens:
        y = y[:, 0]
    return (y, inter) if return_intermediate_states else y


def _mamba2_step_params(conv_weight, conv_bias, dt_bias, A, D, norm_weight, *,
                        dtype, headdim):
    """A Mamba-2 layer's parameters as :func:`_mamba2_mixer_step` takes them:
    C-contiguous arrays of `dtype`, the bias 0 where absent, D as (nheads,
    headdim) or None. A caller stepping many tokens prepares them once."""
    def cast(a):
        return None if a is None else np.ascontiguousarray(a, dtype=dtype)

    W = cast(conv_weight)
    bias = np.zeros(W.shape[0], dtype) if conv_bias is None else cast(conv_bias)
    D = cast(D)
    if D is not None and D.ndim == 1:
        D = np.ascontiguousarray(np.broadcast_to(D[:, None], (D.shape[0], headdim)))
    return W, bias, cast(dt_bias), cast(A), D, cast(norm_weight)


def _mamba2_mixer_step(zxbcdt, conv_state, state, params, *, ngroups, eps,
                       dt_limit=(0.0, math.inf)):
    """One decoding token of a Mamba-2 mixer between its two projections.

    The step of transformers' ``Mamba2Mixer`` (and of mamba_ssm's ``Mamba2``
    with the norm after the gate), from the input projection's output to
    the output projection's input, in one compiled call: the causal
    convolution's update with SiLU, the state update with D x, and the RMS
    norm of ``y * silu(z)`` in `ngroups` groups, scaled by the norm's
    weight.

    zxbcdt (batch, d_inner + conv_dim + nheads) is read as z, the
    convolution's input (x, B, C) and dt; conv_state (batch, conv_dim, >=
    width - 1) and state (batch, nheads, headdim, dstate) are advanced in
    place and must have the dtype of zxbcdt (float32 or float64), be
    C-contiguous and writeable. `params` comes from
    :func:`_mamba2_step_params` with that dtype. Returns (batch, d_inner).
    For callers that hold a layer's arrays: the kernel checks that the
    shapes agree, not which argument is wrong.
    """
    zxbcdt = np.asarray(zxbcdt)
    dtype = zxbcdt.dtype
    if dtype not in (np.float32, np.float64) or zxbcdt.ndim != 2:
        raise TypeError("`zxbcdt` must be a float32 or float64 (batch, channels) array")
    for name, s, nd in (("conv_state", conv_state, 3), ("state", state, 4)):
        if (not isinstance(s, np.ndarray) or s.dtype != dtype or s.ndim != nd
                or not s.flags.c_contiguous or not s.flags.writeable):
            raise TypeError(f"`{name}` must be a writeable C-contiguous {dtype} "
                            f"array of {nd} dimensions")
    for a in params:
        if a is not None and (a.dtype != dtype or not a.flags.c_contiguous):
            raise TypeError(f"`params` must be {dtype} (from _mamba2_step_params)")
    out = np.empty((zxbcdt.shape[0], state.shape[1] * state.shape[2]), dtype)
    lo, hi = dt_limit
    _ssd.mixer_step(np.ascontiguousarray(zxbcdt), conv_state, *params, state, out,
                    ngroups, eps, lo, hi)
    return out


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------

from . import _ssd_backward as _bwd  # noqa: E402
from .stable_ops import _silu_pullback  # noqa: E402
from ._vjp import defvjp  # noqa: E402

_SSD_DIFF = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")

# The backward holds the adjoints of the chunk states for one block of
# chunks at a time, about this many bytes (at least one chunk's); on one
# thread, blocks of about _BLOCK_BYTES_ONE: the block's adjoints and rows
# of the gated cotangent are then read back from cache by the gradient
# pass (about 10% less time for the backward at b1 L4096 h8 p64 n64). On
# several threads each block costs a barrier, which waits for a thread
# that another process has descheduled: one block up to _BLOCK_BYTES.
_BLOCK_BYTES = 1 << 24
_BLOCK_BYTES_ONE = 1 << 20


# Arrays of at least this many bytes are placed on huge-page boundaries.
_HUGE = 1 << 21


def _empty(shape, dtype):
    """np.empty(shape, dtype), placed at a 2 MB boundary when it takes at
    least 1 MB. NumPy asks the system for huge pages for blocks of 4 MB or
    more, but only whole aligned 2 MB pages can be huge: the rest of a
    block is mapped 4 KB at a time on first touch, a page fault each (for
    the arrays here about as costly as a pass that writes them). The slack
    in front is never touched, so never mapped."""
    dtype = np.dtype(dtype)
    n = math.prod(shape) * dtype.itemsize
    if n < _HUGE // 2:
        return np.empty(shape, dtype)
    raw = np.empty(max(n, 2 * _HUGE) + _HUGE, dtype=np.uint8)
    off = -raw.ctypes.data % _HUGE
    return raw[off:off + n].view(dtype).reshape(shape)


def _skip_weights(p):
    """D as (nheads, headdim), C-contiguous, or None."""
    if p.D is None:
        return None
    return np.ascontiguousarray(np.broadcast_to(
        p.D[:, None] if p.D.ndim == 1 else p.D, (p.H, p.P)))


def _chunk_states(p, cs, nthreads, with_output):
    """The chunked scan's forward pass that keeps the state entering every
    chunk: (dt', decay sums, states) and, `with_output`, the output before
    the gate y0, the gated output (y0 itself without z) and the final
    states. The output is the one ssd_chunk_scan_combined gives."""
    dt_out, dA = p.processed_dt(cs, nthreads, p.seq)
    nc = -(-p.L // cs)
    Pp = _bwd.padded(p.P, p.dtype == np.float32)
    states = _empty((p.nb, p.H, nc, p.N, Pp), p.dtype)
    last = np.empty((p.nb, p.H, p.P, p.N), dtype=p.dtype)
    if not with_output:
        _bwd.forward(p.x, dt_out, dA, p.B, p.C, None, None, last,
                              states, cs, nthreads, seq=p.seq, init=p.init)
        return (dt_out, dA, states), None
    y0 = _empty(p.x.shape, p.dtype)
    y = None if p.z is None else _empty(p.x.shape, p.dtype)
    _bwd.forward(p.x, dt_out, dA, p.B, p.C, y0, y, last, states, cs,
                          nthreads, seq=p.seq, init=p.init, D=_skip_weights(p),
                          z=p.z)
    return (dt_out, dA, states), (y0, y0 if y is None else y, last)


def _degenerate_backward(p, y0, gy, gfinal):
    """Gradients when an axis is empty: only D, z and the initial states'
    (from the final states' cotangent) can be nonzero."""
    dt_ = p.dtype
    H = p.H
    grads = {"x": np.zeros(p.x.shape, dt_), "dt": np.zeros(p.dt.shape, dt_),
             "A": np.zeros(H, dt_), "B": np.zeros(p.B.shape, dt_),
             "C": np.zeros(p.C.shape, dt_)}
    dY = gy
    if p.z is not None:
        grads["z"] = _silu_pullback(p.z, gy * y0, p.z.shape, dt_, 1)
        dY = gy * silu(p.z)
    if p.D is not None:
        Dm = p.D[:, None] if p.D.ndim == 1 else p.D
        gDm = np.einsum("blhp,blhp->hp", dY, p.x)
        grads["D"] = gDm.sum(axis=1) if p.D.ndim == 1 else gDm
        grads["x"] = grads["x"] + dY * Dm
    if p.dt_bias is not None:
        grads["dt_bias"] = np.zeros(H, dt_)
    if p.init is not None:
        grads["initial_states"] = (np.zeros(p.init.shape, dt_) if gfinal is None
                                   else np.asarray(gfinal, dtype=dt_))
    return grads


def _ssd_backward(p, cs, y0, gy, gfinal, nthreads=1, kept=None, donate=False):
    """Gradients of an SSD layer call (see the user guide's page on the
    layers' gradients for the derivation; the compiled passes are
    described in _ssd_backward.pyx).

    `p` is the checked problem, `cs` the chunk length, `y0` the output
    before the gate (None without `z`), `gy` and `gfinal` the cotangents of
    the output and of the final state (None for zeros), `kept` what
    _chunk_states kept in the forward (None: recomputed here). With
    `donate`, z's gradient is written over `y0`. Memory: the chunk states
    (batch, nheads, nchunks, dstate, headdim) and a block of their adjoints,
    besides arrays of the inputs' sizes.
    """
    dt_ = p.dtype
    nb, L, H, P, G, N = p.nb, p.L, p.H, p.P, p.G, p.N
    rep = H // G
    gy = np.ascontiguousarray(gy, dtype=dt_)
    if p.degenerate:
        return _degenerate_backward(p, y0, gy, gfinal)
    # -- the compiled passes
    if kept is None:
        kept, _ = _chunk_states(p, cs, nthreads, False)
    dt_out, dA, states = kept
    nc = states.shape[2]
    gx = _empty(p.x.shape, dt_)
    gB = _empty(p.B.shape, dt_)
    gC = _empty(p.C.shape, dt_)
    ddt = _empty((nb, L, H), dt_)
    gA = np.zeros((nb, G, nc, rep), dtype=dt_)
    gD = None if p.D is None else np.zeros((nb, G, nc, rep, P), dtype=dt_)
    gz = None if p.z is None else (y0 if donate else _empty(p.x.shape, dt_))
    gbias = None if p.dt_bias is None else np.zeros(gA.shape, dtype=dt_)
    ginit = None if p.init is None else np.empty(p.init.shape, dtype=dt_)
    if gfinal is not None:
        gfinal = np.ascontiguousarray(gfinal, dtype=dt_)
    lo, hi = p.dt_limit
    # ddt: the gradient of dt as given (the chain rule through the bias,
    # softplus and the clamp is applied where the kernel forms it)
    _bwd.backward(
        p.x, dt_out, dA, p.A, p.B, p.C, gy, states, gx, gB, gC, ddt,
        gA, cs, nthreads, seq=p.seq, has_init=p.init is not None,
        gfinal=gfinal, ginit=ginit, D=_skip_weights(p), gD=gD, z=p.z,
        y0=None if p.z is None else y0, gz=gz,
        block_bytes=min(_BLOCK_BYTES, _BLOCK_BYTES_ONE) if nthreads == 1
        else _BLOCK_BYTES,
        dt_raw=p.dt, dt_bias=p.dt_bias, dt_softplus=p.dt_softplus, lo=lo,
        hi=hi, gdt_bias=gbias)
    grads = {"x": gx, "B": gB, "C": gC, "A": gA.sum(axis=(0, 2)).reshape(H),
             "dt": ddt}
    if gbias is not None:
        grads["dt_bias"] = gbias.sum(axis=(0, 2)).reshape(H)
    if gD is not None:
        gDm = gD.sum(axis=(0, 2)).reshape(H, P)
        grads["D"] = gDm.sum(axis=1) if p.D.ndim == 1 else gDm
    if gz is not None:
        grads["z"] = gz
    if ginit is not None:
        grads["initial_states"] = ginit
    return grads


class _SplitLayer:
    """A Mamba-2 layer between its two projections, as a training step runs
    it: mamba_ssm's ``mamba_split_conv1d_scan_combined`` without the MLP
    part, sequence index, initial or final states, and without the output
    projection, which the caller applies.

    ``zxbcdt`` (batch, seqlen, dim + conv_dim + nheads), dim = nheads
    headdim and conv_dim = dim + 2 ngroups dstate, is read as the gate z,
    the convolution's input and dt; the convolution (with SiLU) runs on its
    slice in place, time-major, and the gradient of ``zxbcdt`` is written
    into one array of its shape: no transposing copies, no concatenation.
    The forward keeps what the backward needs (`saved`): the SSD output
    before the norm, the convolution's pre-activation, the SSD's inputs
    x, B, C as it read them, and the chunk states with their step sizes
    (dt', decay sums), so that the backward runs no part of the forward
    but the SiLU.
    """

    def __init__(self, zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D,
                 rmsnorm_weight, *, chunk_size, headdim, ngroups, eps,
                 norm_before_gate=False,
                 dt_limit=(0.0, math.inf), nthreads=1):
        args = {"zxbcdt": zxbcdt, "conv1d_weight": conv1d_weight,
                "conv1d_bias": conv1d_bias, "dt_bias": dt_bias, "A": A, "D": D,
                "rmsnorm_weight": rmsnorm_weight}
        args = {k: None if v is None else as_array(v, k) for k, v in args.items()}
        self.dtype = dtype = result_dtype(allow_complex=False, **args)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"the layer computes in float32 or float64, got {dtype}")
        zx = args["zxbcdt"]
        check_shape(zx, (None, None, None), "zxbcdt")
        check_shape(args["A"], (None,), "A")
        check_shape(args["conv1d_weight"], (None, None), "conv1d_weight")
        self.nb, self.L, tot = zx.shape
        self.H = args["A"].shape[0]
        self.P = positive_int(headdim, "headdim")
        self.G = positive_int(ngroups, "ngroups")
        self.dim = dim = self.H * self.P
        self.conv_dim, self.W = args["conv1d_weight"].shape
        self.N = (self.conv_dim - dim) // (2 * self.G)
        if self.N < 1 or self.conv_dim != dim + 2 * self.G * self.N:
            raise ValueError(
                f"`conv1d_weight` must have shape (dim + 2 ngroups dstate, width) with "
                f"dim = {dim}, ngroups = {self.G}, got {args['conv1d_weight'].shape}")
        if tot != dim + self.conv_dim + self.H:
            raise ValueError(
                f"`zxbcdt` must have {dim + self.conv_dim + self.H} channels (z, xBC, "
                f"dt), got {tot}")
        if self.W < 1:
            raise ValueError("`conv1d_weight` must have at least one tap")
        if args["conv1d_bias"] is not None:
            check_shape(args["conv1d_bias"], (self.conv_dim,), "conv1d_bias")
        check_shape(args["rmsnorm_weight"], (dim,), "rmsnorm_weight")
        zx = np.asarray(zx, dtype=dtype)
        if zx.strides[2] != zx.itemsize:
            zx = np.ascontiguousarray(zx)
        self.zx = zx
        self.wt = np.ascontiguousarray(np.asarray(args["conv1d_weight"], dtype).T)
        self.bias = (np.zeros(self.conv_dim, dtype) if args["conv1d_bias"] is None
                     else np.ascontiguousarray(args["conv1d_bias"], dtype=dtype))
        self.args = args
        self.cs = _chunk_size(chunk_size, self.L)
        self.eps = eps
        self.norm_before_gate = bool(norm_before_gate)
        self.dt_limit = dt_limit
        self.nthreads = nthreads

    def _activated(self, pre):
        """x, B and C: silu of the convolution's output `pre`, each its own
        C-contiguous array (the SSD's kernels take them so), in one pass."""
        nb, L, dim, GN = self.nb, self.L, self.dim, self.G * self.N
        rows = pre.reshape(nb * L, self.conv_dim)
        x = _empty((nb, L, self.H, self.P), self.dtype)
        B = np.empty((nb, L, self.G, self.N), self.dtype)
        C = np.empty((nb, L, self.G, self.N), self.dtype)
        for lo, width, out in ((0, dim, x), (dim, GN, B), (dim + GN, GN, C)):
            _stable_ops.silu_rows(rows[:, lo:lo + width], out.reshape(nb * L, width),
                                  self.nthreads)
        return x, B, C

    def _problem(self, x, B, C):
        a = self.args
        return _Problem(x, self.zx[..., self.dim + self.conv_dim:], a["A"], B, C,
                        D=a["D"], dt_bias=a["dt_bias"], dt_softplus=True,
                        dt_limit=self.dt_limit)

    def _norm_args(self, y):
        return {"x": y.reshape(self.nb, self.L, self.dim),
                "weight": self.args["rmsnorm_weight"], "z": self.zx[..., :self.dim],
                "eps": self.eps, "group_size": self.dim // self.G,
                "norm_before_gate": self.norm_before_gate, "workers": self.nthreads}

    def forward(self, keep):
        """The output (batch, seqlen, dim), and with `keep` the tuple `saved`
        (y, pre, x, B, C, dt', decay sums, chunk states)."""
        from .stable_ops import rms_norm

        nb, L = self.nb, self.L
        pre = _empty((nb, L, self.conv_dim), self.dtype)
        init = np.zeros((nb, self.W - 1, self.conv_dim), self.dtype)
        _selective.causal_conv1d_time_major(
            self.zx[..., self.dim:self.dim + self.conv_dim], self.wt, self.bias, init,
            pre, False, self.nthreads)
        p = self._problem(*self._activated(pre))
        if keep:
            kept, (y, _, _) = _chunk_states(p, self.cs, self.nthreads, True)
        else:
            y = ssd_chunk_scan_combined(p.x, p.dt, p.A, p.B, p.C, self.cs, D=p.D,
                                        dt_bias=p.dt_bias, dt_softplus=True,
                                        dt_limit=self.dt_limit, workers=self.nthreads)
        out = rms_norm(**self._norm_args(y))
        if not keep:
            return out
        return out, (y, pre, p.x, p.B, p.C) + tuple(kept)

    @staticmethod
    def saved_shapes(nb, L, H, P, G, N, chunk_size, single):
        """The shapes of `saved` (`single`: computed in float32)."""
        cs = _chunk_size(chunk_size, L)
        nc = -(-L // cs)
        Pp = _bwd.padded(P, single)
        return [(nb, L, H, P), (nb, L, P * H + 2 * G * N), (nb, L, H, P),
                (nb, L, G, N), (nb, L, G, N), (nb, H, nc * cs), (nb, H, nc * cs),
                (nb, H, nc, N, Pp)]

    def backward(self, saved, gout):
        """The gradients of the arguments (by name; None for absent ones)
        for the cotangent `gout` of the output."""
        from . import _vjp_kernels
        from .stable_ops import _rms_norm_backward

        y, pre, x, B, C, dt_out, dA, states = saved
        nb, L, dim, cd, H = self.nb, self.L, self.dim, self.conv_dim, self.H
        dtype = self.dtype
        gzx = _empty(self.zx.shape, dtype)
        gn = _rms_norm_backward(self._norm_args(y), dtype, (nb, L, dim))(
            gout, z_out=gzx[..., :dim])
        p = self._problem(x, B, C)
        gs = _ssd_backward(p, self.cs, None, gn["x"].reshape(x.shape), None,
                           self.nthreads, kept=(dt_out, dA, states))
        GN = self.G * self.N
        gpost = _empty((nb, L, cd), dtype)
        gpost[..., :dim] = gs["x"].reshape(nb, L, dim)
        gpost[..., dim:dim + GN] = gs["B"].reshape(nb, L, GN)
        gpost[..., dim + GN:] = gs["C"].reshape(nb, L, GN)
        del gs["x"], gs["B"], gs["C"]
        gzx[..., dim + cd:] = gs["dt"]
        gwt = np.empty((self.W, cd), dtype)
        gb = np.empty(cd, dtype)
        _vjp_kernels.causal_conv1d_backward_time_major(
            gpost, pre, True, self.zx[..., dim:dim + cd], self.wt,
            gzx[..., dim:dim + cd], gwt, gb, self.nthreads)
        a = self.args
        return {"zxbcdt": gzx, "conv1d_weight": gwt.T,
                "conv1d_bias": None if a["conv1d_bias"] is None else gb,
                "dt_bias": gs.get("dt_bias"), "A": gs["A"], "D": gs.get("D"),
                "rmsnorm_weight": gn["weight"]}


def _ssd_rule(fun, kind):
    """The vjp rule of `fun`: kind "combined" (the chunked scan, whose
    forward here also keeps the chunk states), "sequential" or "quadratic"
    (their own forward; the backward is the chunked one, with the call's
    chunk length or the default one)."""
    def rule(args):
        ret = bool(args.get("return_final_states", False))
        if args.get("cu_seqlens") is not None and (
                args.get("return_varlen_states") or args.get("initial_states") is not None):
            raise NotImplementedError(
                "the gradient of a packed SSD call with per-sequence states "
                "(`cu_seqlens` with `initial_states` or `return_varlen_states`) is "
                "not implemented; pass the packing as `seq_idx`, or differentiate "
                "each sequence's call"
            )
        extra = {k: args[k] for k in ("initial_states", "seq_idx", "cu_seqlens")
                 if k in args}
        p = _Problem(args["x"], args["dt"], args["A"], args["B"], args["C"],
                     D=args["D"], z=args["z"], dt_bias=args["dt_bias"],
                     dt_softplus=args["dt_softplus"], dt_limit=args["dt_limit"],
                     **extra)
        cs = _chunk_size(args["chunk_size"] if kind != "quadratic" else None, p.L)
        nthreads = running_threads(resolve_workers(args.get("workers")))
        y0 = kept = None
        if kind == "combined" and not p.degenerate:
            kept, (y0, y, last) = _chunk_states(p, cs, nthreads, True)
            out = (y, last) if ret else y
            if p.z is None:
                y0 = None
        elif p.z is None:
            out = fun(**args)
        else:
            # keep the output before the gate; gate it as the forward does
            res = fun(**dict(args, z=None))
            y0 = res[0] if ret else res
            y = y0 * silu(p.z)
            out = (y, res[1]) if ret else y

        pre = [y0]

        def backward(ct):
            gy, gfinal = ct if ret else (ct, None)
            if p.z is None or p.degenerate:
                return _ssd_backward(p, cs, pre[0], gy, gfinal, nthreads, kept)
            # the output before the gate becomes z's gradient (one array of
            # x's size less to allocate); a second call forms it again
            y0_ = pre[0]
            pre[0] = None
            if y0_ is None:
                if kind == "combined":
                    y0_ = _chunk_states(p, cs, nthreads, True)[1][0]
                else:
                    res = fun(**dict(args, z=None))
                    y0_ = res[0] if ret else res
            return _ssd_backward(p, cs, y0_, gy, gfinal, nthreads, kept,
                                 donate=True)

        return out, backward
    return rule


defvjp(ssd_chunk_scan_combined, *_SSD_DIFF)(_ssd_rule(ssd_chunk_scan_combined,
                                                      "combined"))
defvjp(ssd_sequential, *_SSD_DIFF)(_ssd_rule(ssd_sequential, "sequential"))
defvjp(ssd_quadratic, *_SSD_DIFF[:-1])(_ssd_rule(ssd_quadratic, "quadratic"))
