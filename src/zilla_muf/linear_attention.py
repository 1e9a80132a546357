r"""The gated linear-attention family: GLA and the gated delta rule.

Both functions use the layouts of flash-linear-attention (FLA): queries and
keys ``(batch, T, H, K)``, values ``(batch, T, H, V)``, log-space gates, a
state ``S`` of shape ``(batch, H, K, V)`` per head, and ``scale`` defaulting
to ``K**-0.5``.

- :func:`~zilla_muf.linear_attention.linear_attention` -- ``S_t = exp(g_t) S_{t-1} + k_t v_t^T``,
  ``o_t = scale q_t^T S_t``, with no gate, a scalar gate per head and step
  (simple GLA, RetNet, Mamba-2) or a gate per key channel (GLA).
- :func:`~zilla_muf.linear_attention.gated_delta_rule` -- Gated DeltaNet: the state decays, then is
  corrected towards ``v_t`` along ``k_t`` with the step size ``beta_t``.

Design: the forwards of linear attention with a scalar gate (or none) and
of the gated delta rule are compiled chunk kernels (``_src/_lachunk.h``,
driven by ``_linear_attention.pyx``): one task per (sequence, head) walks
its chunks with the state in per-thread scratch, reading q, k, v and
writing o in their ``(batch, T, H, .)`` layouts, the chunk products on
register tiles (an AVX-512, AVX2 or baseline build, picked at run time),
``workers`` OpenMP threads without the GIL. Within a chunk every decay is
``exp`` of a *difference* of cumulative log-gates, formed only on and below
the diagonal, so the forms are exact at ``g = 0`` and do not overflow or
divide at very negative ``g``. Per-key-channel gates and the forward kept
for the gradients run on ``(batch*H, T, ...)`` rows with NumPy's batched
products (the per-channel scores and the delta rule's unit triangular
solves are compiled kernels too), ``workers`` splitting the rows between
threads. The gradients are recurrent, in reverse order, from the states
kept at the chunk boundaries by that forward (see ``# Gradients`` below).

The module is callable: ``zilla_muf.linear_attention(q, k, v, g)`` calls
the function :func:`~zilla_muf.linear_attention.linear_attention`.

>>> import numpy as np
>>> import zilla_muf
>>> q = k = np.ones((1, 2, 1, 1))
>>> v = np.array([1.0, 2.0]).reshape(1, 2, 1, 1)
>>> zilla_muf.linear_attention(q, k, v, np.log(np.full((1, 2, 1), 0.5)))[0, :, 0, 0]
array([1. , 2.5])
"""

import contextlib
import math
import sys
import threading
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _buffers
from . import _linear_attention as _kernels
from ._validation import as_array, positive_int, resolve_workers, result_dtype
from ._vjp import defvjp

__all__ = ["gated_delta_rule", "linear_attention"]

# the compiled chunk kernels measured fastest at 32 positions per chunk
# (K = V = 128): the state products dominate, the intra-chunk part is small
_DEFAULT_CHUNK = 32
# per-key-channel gates build a (chunk, chunk, K) block of decays row by row:
# a shorter chunk keeps that part of the work small
_DEFAULT_CHUNK_PER_CHANNEL = 16
# the l2 normalisation of q and k: x / sqrt(sum(x**2) + eps), as FLA and
# transformers write it
_L2NORM_EPS = 1e-6


# ---------------------------------------------------------------------------
# Validation: one place for both functions
# ---------------------------------------------------------------------------

def _check_4d(arr, name, what):
    if arr.ndim != 4:
        raise ValueError(
            f"`{name}` must have 4 dimensions {what}, got shape {arr.shape}"
        )


def _prepare(q, k, v, g, beta, scale, initial_state, cu_seqlens, chunk_size,
             workers, *, delta):
    """Check every argument; return arrays in the computation dtype."""
    q = as_array(q, "q")
    k = as_array(k, "k")
    v = as_array(v, "v")
    g = None if g is None else as_array(g, "g")
    beta = None if beta is None else as_array(beta, "beta")
    h0 = None if initial_state is None else as_array(initial_state, "initial_state")
    dtype = result_dtype(allow_complex=False, q=q, k=k, v=v, g=g, beta=beta,
                         initial_state=h0)
    _check_4d(q, "q", "(batch, T, H, K)")
    _check_4d(k, "k", "(batch, T, H, K)")
    _check_4d(v, "v", "(batch, T, H, V)")
    B, T, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f"`k` must have the shape of `q` {q.shape}, got {k.shape}")
    if v.shape[:3] != (B, T, H):
        raise ValueError(
            f"`v` must have shape (batch, T, H, V) = ({B}, {T}, {H}, V), "
            f"got {v.shape}"
        )
    V = v.shape[3]
    if K == 0 or V == 0 or H == 0:
        raise ValueError(f"`q` and `v` must have K, V, H >= 1, got q {q.shape}, v {v.shape}")
    gate = None
    if g is not None:
        if g.shape == (B, T, H):
            gate = "scalar"
        elif g.shape == (B, T, H, K) and not delta:
            gate = "channel"
        else:
            want = "(batch, T, H)" if delta else "(batch, T, H) or (batch, T, H, K)"
            raise ValueError(f"`g` must have shape {want}, got {g.shape}")
    if delta and beta.shape != (B, T, H):
        raise ValueError(f"`beta` must have shape (batch, T, H) = {(B, T, H)}, "
                         f"got {beta.shape}")
    if scale is None:
        scale = K ** -0.5
    else:
        if isinstance(scale, (bool, np.bool_)) or not isinstance(
                scale, (int, float, np.integer, np.floating)):
            raise TypeError(f"`scale` must be a real number or None, got {scale!r}")
        scale = float(scale)
        if not math.isfinite(scale):
            raise ValueError(f"`scale` must be finite, got {scale}")
    bounds = None
    if cu_seqlens is not None:
        cu = np.asarray(cu_seqlens)
        if cu.dtype.kind not in "iu":
            raise TypeError(f"`cu_seqlens` must be an integer array, got dtype {cu.dtype}")
        if cu.ndim != 1 or cu.size < 2:
            raise ValueError(f"`cu_seqlens` must be 1-D with at least 2 entries, got shape {cu.shape}")
        if B != 1:
            raise ValueError(f"`cu_seqlens` needs batch 1 (packed sequences), got batch {B}")
        if cu[0] != 0 or cu[-1] != T or np.any(np.diff(cu) < 0):
            raise ValueError(
                f"`cu_seqlens` must start at 0, end at T = {T} and not decrease, "
                f"got {cu.tolist()}"
            )
        bounds = [(int(a), int(b)) for a, b in zip(cu[:-1], cu[1:])]
    nstate = B if bounds is None else len(bounds)
    if h0 is not None and h0.shape != (nstate, H, K, V):
        rows = "batch" if bounds is None else "one per sequence of `cu_seqlens`"
        raise ValueError(
            f"`initial_state` must have shape {(nstate, H, K, V)} ({rows}, H, K, V), "
            f"got {h0.shape}"
        )
    default = _DEFAULT_CHUNK_PER_CHANNEL if gate == "channel" else _DEFAULT_CHUNK
    chunk = positive_int(chunk_size, "chunk_size", allow_none=True) or default
    nworkers = resolve_workers(workers)
    arrays = {
        "q": q.astype(dtype, copy=False), "k": k.astype(dtype, copy=False),
        "v": v.astype(dtype, copy=False),
        "g": None if g is None else g.astype(dtype, copy=False),
        "beta": None if beta is None else beta.astype(dtype, copy=False),
        "h0": None if h0 is None else h0.astype(dtype, copy=False),
    }
    return arrays, dict(scale=scale, gate=gate, bounds=bounds, chunk=chunk,
                        workers=nworkers, dtype=dtype, shape=(B, T, H, K, V))


def _rows(x):
    """(batch, T, H, ...) -> (batch*H, T, ...) C-contiguous."""
    if x.ndim == 3:
        return np.ascontiguousarray(x.transpose(0, 2, 1)).reshape(-1, x.shape[1])
    b, t, h, d = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(b * h, t, d)


def _unrows(x, B, H):
    """(batch*H, T, ...) -> (batch, T, H, ...)."""
    if x.ndim == 2:
        return np.ascontiguousarray(x.reshape(B, H, -1).transpose(0, 2, 1))
    return np.ascontiguousarray(x.reshape(B, H, x.shape[1], x.shape[2]).transpose(0, 2, 1, 3))


def _l2norm(x):
    """x / sqrt(sum(x**2, over K) + eps) and the inverse norms."""
    r = 1.0 / np.sqrt(np.einsum("...k,...k->...", x, x) + x.dtype.type(_L2NORM_EPS))
    r = r.astype(x.dtype, copy=False)
    return x * r[..., None], r


def _l2norm_backward(x, r, dy):
    """The gradient through :func:`_l2norm` (x its input, r its inverse norm)."""
    xdy = np.einsum("...k,...k->...", x, dy)
    return r[..., None] * dy - (r ** 3 * xdy)[..., None] * x


# ---------------------------------------------------------------------------
# Chunked forward kernels on rows: q, k (Z, T, K), v (Z, T, V)
# ---------------------------------------------------------------------------

def _pad_chunks(x, T, C):
    """Zero-pad the time axis (axis 1) to a multiple of C and split it."""
    N = -(-T // C)
    pad = N * C - T
    if pad:
        width = [(0, 0)] * x.ndim
        width[1] = (0, pad)
        x = np.pad(x, width)
    return x.reshape(x.shape[0], N, C, *x.shape[2:])


def _decays(d):
    """exp(d) for log-decays d, set to 0 below the square root of the
    smallest normal number, as the compiled kernels set them (_vmath.h's
    ZM_DECAY_TINY_*): their products would be subnormal, which slows the
    matrix products several times over."""
    e = np.exp(d)
    e[e < np.sqrt(np.finfo(e.dtype).tiny)] = 0
    return e


def _decay_matrix(gc):
    """exp(gc_i - gc_j) for i >= j, 0 above the diagonal; gc (..., C)."""
    C = gc.shape[-1]
    d = gc[..., :, None] - gc[..., None, :]
    d = np.where(np.tri(C, dtype=bool), d, -np.inf)
    return _decays(d)


def _la_rows(q, k, v, g, h0, scale, gate, C):
    """Chunked linear attention; returns o (Z, T, V), the entering state of
    every chunk (Z, N, K, V) and the final state (Z, K, V)."""
    Z, T, K = q.shape
    V = v.shape[2]
    dt = q.dtype
    qc, kc, vc = (_pad_chunks(x, T, C) for x in (q, k, v))
    N = qc.shape[1]
    kT = kc.swapaxes(-1, -2)
    if gate is None:
        A = qc @ kT
        A *= np.tri(C, dtype=dt)
        qd, kd, last = qc, kc, None
    elif gate == "scalar":
        gc = np.cumsum(_pad_chunks(g, T, C), axis=-1)
        A = (qc @ kT) * _decay_matrix(gc)
        qd = qc * _decays(gc)[..., None]
        kd = kc * _decays(gc[..., -1:] - gc)[..., None]
        last = _decays(gc[..., -1])[..., None, None]            # (Z, N, 1, 1)
    else:
        gc = np.cumsum(_pad_chunks(g, T, C), axis=2)           # (Z, N, C, K)
        # A_ij = sum_k q_ik k_jk exp(gc_ik - gc_jk), j <= i (exponent <= 0)
        A = np.empty((Z, N, C, C), dtype=dt)
        _kernels.channel_gate_scores(qc.reshape(Z * N, C, K), kc.reshape(Z * N, C, K),
                                     gc.reshape(Z * N, C, K), A.reshape(Z * N, C, C), 1)
        qd = qc * _decays(gc)
        kd = kc * _decays(gc[:, :, -1:] - gc)
        last = _decays(gc[:, :, -1])[..., None]                  # (Z, N, K, 1)
    o = A @ vc
    local = kd.swapaxes(-1, -2) @ vc                            # (Z, N, K, V)
    states = np.empty((Z, N, K, V), dtype=dt)
    S = np.zeros((Z, K, V), dtype=dt) if h0 is None else h0.copy()
    for n in range(N):
        states[:, n] = S
        if last is not None:
            S *= last[:, n]
        S += local[:, n]
    o += qd @ states
    o *= dt.type(scale)
    return o.reshape(Z, N * C, V)[:, :T], states, S


def _gdr_rows(q, k, v, g, beta, h0, scale, C):
    """Chunked gated delta rule (WY / UT form); returns o, the entering state
    of every chunk and the final state."""
    Z, T, K = q.shape
    V = v.shape[2]
    dt = q.dtype
    qc, kc, vc = (_pad_chunks(x, T, C) for x in (q, k, v))
    bc = _pad_chunks(beta, T, C)[..., None]
    N = qc.shape[1]
    if g is None:
        gc = np.zeros((Z, N, C), dtype=dt)
    else:
        gc = np.cumsum(_pad_chunks(g, T, C), axis=-1)
    L = _decay_matrix(gc)
    kT = kc.swapaxes(-1, -2)
    kb = kc * bc
    # (I + M) U = [beta v, beta exp(gc) k], M strictly lower: M_ij =
    # beta_i k_i.k_j exp(gc_i - gc_j), j < i (the UT transform of the chunk)
    M = (kb @ kT) * L
    rhs = np.concatenate([vc * bc, kb * _decays(gc)[..., None]], axis=-1)
    _kernels.unit_lower_solve(M.reshape(Z * N, C, C), rhs.reshape(Z * N, C, V + K), 1)
    U = rhs[..., :V]
    W = rhs[..., V:]
    Aqk = (qc @ kT) * L
    qd = qc * _decays(gc)[..., None]
    kdT = (kc * _decays(gc[..., -1:] - gc)[..., None]).swapaxes(-1, -2)
    last = _decays(gc[..., -1])
    o = np.empty((Z, N, C, V), dtype=dt)
    states = np.empty((Z, N, K, V), dtype=dt)
    S = np.zeros((Z, K, V), dtype=dt) if h0 is None else h0.copy()
    for n in range(N):
        states[:, n] = S
        vn = U[:, n] - W[:, n] @ S
        o[:, n] = qd[:, n] @ S + Aqk[:, n] @ vn
        S = S * last[:, n, None, None] + kdT[:, n] @ vn
    o *= dt.type(scale)
    return o.reshape(Z, N * C, V)[:, :T], states, S


def _split_rows(Z, workers):
    """Contiguous groups of rows, one per worker."""
    n = max(1, min(workers, Z))
    edges = np.linspace(0, Z, n + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


_BLAS_LOCK = threading.Lock()
_BLAS_STATE = {"depth": 0, "limiter": None}


@contextlib.contextmanager
def _blas_one_thread():
    """A context in which BLAS runs on the calling thread only.

    The chunk products are small (C x K by K x V); a threaded BLAS then
    spends more time synchronising its threads than computing, and the
    thread pool of ``workers`` would oversubscribe the cores. threadpoolctl
    (optional) sets the limit; without it BLAS keeps its own setting. The
    limit is process-wide: concurrent calls share one, set by the first to
    enter and restored by the last to leave, so that the original setting
    always comes back.
    """
    with _BLAS_LOCK:
        if _BLAS_STATE["depth"] == 0:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:
                _BLAS_STATE["limiter"] = None
            else:
                _BLAS_STATE["limiter"] = threadpool_limits(1, user_api="blas")
        _BLAS_STATE["depth"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_STATE["depth"] -= 1
            if _BLAS_STATE["depth"] == 0 and _BLAS_STATE["limiter"] is not None:
                _BLAS_STATE["limiter"].restore_original_limits()
                _BLAS_STATE["limiter"] = None


def _run_rows(kernel, workers, rows, extra):
    """Run `kernel` over row groups of the (Z, ...) arrays in `rows` in a
    thread pool, BLAS single-threaded; concatenate its outputs along the rows."""
    Z = next(x for x in rows if x is not None).shape[0]
    groups = _split_rows(Z, workers)

    def one(ab):
        a, b = ab
        return kernel(*[None if x is None else x[a:b] for x in rows], *extra)

    with _blas_one_thread():
        if len(groups) == 1:
            return one(groups[0])
        with ThreadPoolExecutor(len(groups)) as pool:
            parts = list(pool.map(one, groups))
    return tuple(np.concatenate(p, axis=0) for p in zip(*parts))


def _segments(plan):
    """(batch slice, time slice, state rows) of each independent sequence."""
    B, T, H, K, V = plan["shape"]
    if plan["bounds"] is None:
        return [(slice(0, B), slice(0, T), slice(0, B))]
    return [(slice(0, 1), slice(a, b), slice(i, i + 1))
            for i, (a, b) in enumerate(plan["bounds"])]


def _forward(arrays, plan, delta):
    """Both forwards: o (B, T, H, V), final states, and per segment the rows
    used by the backward (the chunk-entering states included)."""
    B, T, H, K, V = plan["shape"]
    dt = plan["dtype"]
    o = np.zeros((B, T, H, V), dtype=dt)
    nstate = B if plan["bounds"] is None else len(plan["bounds"])
    final = np.zeros((nstate, H, K, V), dtype=dt)
    saved = []
    for bs, ts, ss in _segments(plan):
        if ts.stop == ts.start or bs.stop == bs.start:
            if arrays["h0"] is not None:
                final[ss] = arrays["h0"][ss]
            saved.append(None)
            continue
        seg = {n: None if x is None or n == "h0" else _rows(x[bs, ts])
               for n, x in arrays.items()}
        nb = bs.stop - bs.start
        h0 = (None if arrays["h0"] is None
              else arrays["h0"][ss].reshape(nb * H, K, V))
        q, k = seg["q"], seg["k"]
        rq = rk = None
        if delta and plan["l2norm"]:
            q, rq = _l2norm(q)
            k, rk = _l2norm(k)
        if delta:
            out, states, S = _run_rows(
                _gdr_rows, plan["workers"], [q, k, seg["v"], seg["g"], seg["beta"], h0],
                (plan["scale"], plan["chunk"]))
        else:
            out, states, S = _run_rows(
                _la_rows, plan["workers"], [q, k, seg["v"], seg["g"], h0],
                (plan["scale"], plan["gate"], plan["chunk"]))
        o[bs, ts] = _unrows(out, nb, H)
        final[ss] = S.reshape(nb, H, K, V)
        saved.append(dict(seg, qn=q, kn=k, rq=rq, rk=rk, states=states))
    return o, final, saved


def _forward_compiled(arrays, plan, delta):
    """The forward of linear attention with a scalar gate (or none) and of
    the gated delta rule on the compiled chunk kernels: o (B, T, H, V) and
    the final states. One task per (sequence, head), run by `workers`
    OpenMP threads without the GIL."""
    B, T, H, K, V = plan["shape"]
    dt = plan["dtype"]
    q, k = arrays["q"], arrays["k"]
    if delta and plan["l2norm"]:
        q = _l2norm(q)[0]
        k = _l2norm(k)[0]
    q, k, v = (np.ascontiguousarray(x) for x in (q, k, arrays["v"]))
    g, beta, h0 = (None if arrays[n] is None else np.ascontiguousarray(arrays[n])
                   for n in ("g", "beta", "h0"))
    if plan["bounds"] is None:
        seq_batch = np.arange(B, dtype=np.intp)
        seq_start = np.zeros(B, dtype=np.intp)
        seq_stop = np.full(B, T, dtype=np.intp)
    else:
        seq_batch = np.zeros(len(plan["bounds"]), dtype=np.intp)
        seq_start = np.array([a for a, _ in plan["bounds"]], dtype=np.intp)
        seq_stop = np.array([b for _, b in plan["bounds"]], dtype=np.intp)
    if B * T * H * V * dt.itemsize >= _buffers.MIN_BYTES:
        # large: memory the buffer cache may hand back (when it is on)
        o = _buffers.empty((B, T, H, V), dt, v, q)
    else:
        o = np.empty((B, T, H, V), dtype=dt)
    final = np.empty((len(seq_batch), H, K, V), dtype=dt)
    _kernels.chunk_forward(q, k, v, o, g, beta if delta else None, h0, final,
                           seq_batch, seq_start, seq_stop, plan["scale"],
                           plan["chunk"], plan["workers"])
    return o, final


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------

def linear_attention(q, k, v, g=None, *, scale=None, initial_state=None,
                     output_final_state=False, cu_seqlens=None, chunk_size=None,
                     workers=None):
    r"""Gated linear attention (GLA, simple GLA, RetNet, plain linear attention).

    Parameters
    ----------
    q, k : array_like
        Queries and keys, shape (batch, T, H, K), float32 or float64.
    v : array_like
        Values, shape (batch, T, H, V).
    g : array_like, optional
        The log-space decay (usually <= 0): shape (batch, T, H) for one gate
        per head and step (simple GLA, RetNet, Mamba-2), or (batch, T, H, K)
        for one per key channel (GLA). None (default) is no decay.
    scale : float, optional
        The factor of the output; default ``K**-0.5``.
    initial_state : array_like, optional
        The state before the first step, shape (batch, H, K, V) (with
        `cu_seqlens`: one row per sequence). Default 0.
    output_final_state : bool, optional
        Also return the state after the last step.
    cu_seqlens : array_like of int, optional
        Packed sequences: shape (nseq + 1,), the cumulative boundaries of the
        sequences packed along T (batch must be 1), 0 first and T last. The
        state restarts (from `initial_state`'s row, or 0) at every boundary.
    chunk_size : int, optional
        Positions per chunk of the chunked algorithm: 32 by default, 16 with
        per-channel gates. The result does not depend on it beyond rounding.
    workers : int, optional
        Threads (None is 1, -1 all cores); the rows ``batch*H`` are split
        between them.

    Returns
    -------
    o : ndarray
        Shape (batch, T, H, V), the result dtype of the inputs.
    final_state : ndarray
        Only with ``output_final_state=True``: shape (batch, H, K, V), or
        (nseq, H, K, V) with `cu_seqlens`.

    Raises
    ------
    ValueError
        If a shape does not fit (each argument is named), `cu_seqlens` is not
        a valid boundary list or is given with batch > 1, or `chunk_size` is
        not a positive integer.
    TypeError
        For complex or non-numeric inputs, a `scale` that is not a real
        number, or non-integer `cu_seqlens`.

    See Also
    --------
    gated_delta_rule : The delta-rule update of the same state.
    zilla_muf.ssd_chunk_scan_combined : The same computation with the
        Mamba-2 parametrisation (see Notes).

    Notes
    -----
    For each batch row and head, with a state :math:`S_t \in \mathbb{R}^{K
    \times V}`:

    .. math::

        S_t = \operatorname{diag}(e^{g_t}) S_{t-1} + k_t v_t^\top, \qquad
        o_t = \mathrm{scale} \cdot S_t^\top q_t,

    with :math:`g_t` the same for every key channel when `g` is scalar per
    head (and :math:`S_0` the initial state). The chunked algorithm splits T
    into chunks of C positions; with :math:`G_i` the cumulative sum of
    :math:`g` inside the chunk, position i of the chunk gets

    .. math::

        o_i = \mathrm{scale}\Big(\sum_{j \le i} (q_i \odot e^{G_i - G_j})
        \cdot k_j\, v_j + (q_i \odot e^{G_i})^\top S_{\mathrm{in}}\Big),

    and the state leaving the chunk is :math:`e^{G_C} S_{\mathrm{in}} +
    \sum_j (k_j \odot e^{G_C - G_j}) v_j^\top`. Every exponent is a
    difference of cumulative gates that is never positive, so there is no
    division by a decay: the result is exact at ``g = 0`` and has no
    overflow for very negative ``g``. A decay below the square root of the
    smallest normal number (about :math:`10^{-19}` in float32,
    :math:`10^{-154}` in float64) is taken as zero, as in the SSD: its
    products would be subnormal numbers, which slow the arithmetic many
    times over (strongly decaying heads put many decays there), and what is
    dropped is below that fraction of the terms it scales.

    With a scalar gate this is Mamba-2's SSD: ``ssd_chunk_scan_combined(x,
    dt, A, B, C)`` (one group per head, no D, z or dt_bias) equals
    ``linear_attention(q=C, k=B, v=x*dt[..., None], g=A*dt, scale=1)``, the
    SSD's state (batch, H, headdim, dstate) being this state transposed.

    .. versionadded:: 0.2.0

    References
    ----------
    S. Yang, B. Wang, Y. Shen, R. Panda, Y. Kim, "Gated Linear Attention
    Transformers with Hardware-Efficient Training", ICML 2024.

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import linear_attention
    >>> q = np.ones((1, 3, 1, 2)); k = np.ones((1, 3, 1, 2))
    >>> v = np.arange(3.0).reshape(1, 3, 1, 1)
    >>> g = np.log(np.full((1, 3, 1), 0.5))
    >>> o, S = linear_attention(q, k, v, g, scale=1.0, output_final_state=True)
    >>> o[0, :, 0, 0]            # 2 * (0, 0*0.5 + 1, (0*0.5 + 1)*0.5 + 2)
    array([0., 2., 5.])
    >>> S[0, 0]
    array([[2.5],
           [2.5]])
    """
    arrays, plan = _prepare(q, k, v, g, None, scale, initial_state, cu_seqlens,
                            chunk_size, workers, delta=False)
    if plan["gate"] == "channel":
        o, final, _ = _forward(arrays, plan, delta=False)
    else:
        o, final = _forward_compiled(arrays, plan, delta=False)
    return (o, final) if output_final_state else o


def gated_delta_rule(q, k, v, g, beta, *, scale=None, initial_state=None,
                     output_final_state=False, cu_seqlens=None, use_qk_l2norm=False,
                     chunk_size=None, workers=None):
    r"""The gated delta rule (Gated DeltaNet, as in Qwen3-Next).

    Parameters
    ----------
    q, k : array_like
        Queries and keys, shape (batch, T, H, K), float32 or float64.
    v : array_like
        Values, shape (batch, T, H, V).
    g : array_like or None
        The log-space decay per head and step, shape (batch, T, H); None is
        no decay (the plain delta rule).
    beta : array_like
        The step sizes, shape (batch, T, H) (usually in (0, 1)).
    scale : float, optional
        The factor of the output; default ``K**-0.5``.
    initial_state : array_like, optional
        The state before the first step, shape (batch, H, K, V) (with
        `cu_seqlens`: one row per sequence). Default 0.
    output_final_state : bool, optional
        Also return the state after the last step.
    cu_seqlens : array_like of int, optional
        Packed sequences (batch 1): shape (nseq + 1,), 0 first, T last; the
        state restarts at every boundary.
    use_qk_l2norm : bool, optional
        Normalise q and k over K first: ``x / sqrt(sum(x**2) + 1e-6)``.
    chunk_size : int, optional
        Positions per chunk, default 32.
    workers : int, optional
        Threads (None is 1, -1 all cores), splitting the rows ``batch*H``.

    Returns
    -------
    o : ndarray
        Shape (batch, T, H, V), the result dtype of the inputs.
    final_state : ndarray
        Only with ``output_final_state=True``: shape (batch, H, K, V), or
        (nseq, H, K, V) with `cu_seqlens`.

    Raises
    ------
    ValueError
        If a shape does not fit (each argument is named), `cu_seqlens` is not
        a valid boundary list or is given with batch > 1, or `chunk_size` is
        not a positive integer.
    TypeError
        For complex or non-numeric inputs, a `scale` that is not a real
        number, or non-integer `cu_seqlens`.

    See Also
    --------
    linear_attention : The additive update of the same state.

    Notes
    -----
    For each batch row and head, with the state :math:`S_t \in
    \mathbb{R}^{K \times V}`:

    .. math::

        S'_t = e^{g_t} S_{t-1}, \qquad
        S_t = S'_t + \beta_t k_t (v_t - S_t'^\top k_t)^\top, \qquad
        o_t = \mathrm{scale} \cdot S_t^\top q_t.

    The chunked form (the WY / UT representation) writes the state inside a
    chunk as :math:`S_i = e^{G_i} S_{\mathrm{in}} + \sum_{j \le i}
    e^{G_i - G_j} k_j u_j^\top` (G the cumulative gate in the chunk). The
    new values :math:`u` solve one unit lower-triangular system per chunk,

    .. math::

        (I + M) [\tilde U, W] = [\beta \odot V, \beta e^{G} \odot K],
        \qquad M_{ij} = \beta_i\, k_i \cdot k_j\, e^{G_i - G_j} \ (j < i),

    and :math:`U = \tilde U - W S_{\mathrm{in}}`; the output and the next
    state follow as in :func:`linear_attention` with U in place of V. The
    compiled forward evaluates :math:`U = (I + M)^{-1}(\beta \odot V -
    \beta e^{G} \odot K S_{\mathrm{in}})`, inverting the C x C unit
    triangular matrix of each chunk. No exponent is positive and nothing is
    divided by a decay. Decays below the square root of the smallest normal
    number are taken as zero, as in :func:`linear_attention`, and so are
    the entries of :math:`(I + M)^{-1}` below it.

    .. versionadded:: 0.2.0

    References
    ----------
    S. Yang, J. Kautz, A. Hatamizadeh, "Gated Delta Networks: Improving
    Mamba2 with Delta Rule", ICLR 2025.

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import gated_delta_rule
    >>> q = k = np.array([1.0, 0.0]).reshape(1, 1, 1, 2).repeat(2, axis=1)
    >>> v = np.array([3.0, 5.0]).reshape(1, 2, 1, 1)
    >>> beta = np.full((1, 2, 1), 0.5)
    >>> o = gated_delta_rule(q, k, v, None, beta, scale=1.0)
    >>> o[0, :, 0, 0]            # 0.5*3, then 1.5 + 0.5*(5 - 1.5)
    array([1.5 , 3.25])
    """
    if beta is None:
        raise TypeError("`beta` must be an array of shape (batch, T, H), got None")
    arrays, plan = _prepare(q, k, v, g, beta, scale, initial_state, cu_seqlens,
                            chunk_size, workers, delta=True)
    plan["l2norm"] = bool(use_qk_l2norm)
    o, final = _forward_compiled(arrays, plan, delta=True)
    return (o, final) if output_final_state else o



# Gradients
# ---------------------------------------------------------------------------
# Reverse mode by the recurrence, one time step at a time in reverse order
# (vectorised over the rows batch*H). The forward keeps the inputs and the
# state entering every chunk, (batch*H, T/C, K, V); the backward recomputes
# the C states inside one chunk from it, then walks that chunk backwards.
# Memory: O(batch*H*(T/C + C)*K*V), never a state per step. With dS the
# gradient of the state S_t (its output's part added first):
#   linear attention  dq_t = scale S_t do_t, dk_t = dS v_t, dv_t = dS^T k_t,
#                     dg_t = exp(g_t) sum(S_{t-1} * dS) (over V, or K and V),
#                     dS <- exp(g_t) dS;
#   delta rule        P = exp(g_t) S_{t-1}, r = v_t - P^T k_t:
#                     dbeta_t = k^T dS r, dr = beta dS^T k, dv_t = dr,
#                     dk_t = beta dS r - P dr, dP = dS - k dr^T,
#                     dg_t = sum(S_{t-1} * dP) exp(g_t), dS <- exp(g_t) dP;
# and through the l2 normalisation dx = (dy - y (y.dy)) / |x|.

def _backward_rows(sv, do, dS, scale, C, delta, gate):
    """The reverse pass of one segment, on rows; returns the gradients."""
    q, k, v, g, beta = sv["qn"], sv["kn"], sv["v"], sv["g"], sv["beta"]
    states = sv["states"]
    Z, T, K = q.shape
    dq = np.empty_like(q)
    dk = np.empty_like(k)
    dv = np.empty_like(v)
    dg = None if g is None else np.empty_like(g)
    db = None if beta is None else np.empty_like(beta)
    a = None if g is None else _decays(g)
    dS = dS.copy()
    sc = q.dtype.type(scale)
    N = states.shape[1]
    for n in range(N - 1, -1, -1):
        t0, t1 = n * C, min(T, (n + 1) * C)
        # the states S_{t0-1} ... S_{t1-1} of this chunk, recomputed
        Sall = np.empty((t1 - t0 + 1,) + states.shape[:1] + states.shape[2:],
                        dtype=q.dtype)
        Sall[0] = states[:, n]
        for i, t in enumerate(range(t0, t1)):
            S = Sall[i]
            if a is not None:
                S = S * (a[:, t, :, None] if gate == "channel" else a[:, t, None, None])
            if delta:
                r = v[:, t] - np.einsum("zk,zkv->zv", k[:, t], S)
                S = S + beta[:, t, None, None] * k[:, t, :, None] * r[:, None, :]
            else:
                S = S + k[:, t, :, None] * v[:, t, None, :]
            Sall[i + 1] = S
        for i in range(t1 - t0 - 1, -1, -1):
            t = t0 + i
            S, Sprev = Sall[i + 1], Sall[i]
            dS += sc * q[:, t, :, None] * do[:, t, None, :]
            dq[:, t] = sc * np.einsum("zkv,zv->zk", S, do[:, t])
            if delta:
                at = 1.0 if a is None else a[:, t, None, None]
                P = Sprev * at
                r = v[:, t] - np.einsum("zk,zkv->zv", k[:, t], P)
                dSr = np.einsum("zkv,zv->zk", dS, r)
                db[:, t] = np.einsum("zk,zk->z", k[:, t], dSr)
                dr = beta[:, t, None] * np.einsum("zkv,zk->zv", dS, k[:, t])
                dv[:, t] = dr
                dk[:, t] = beta[:, t, None] * dSr - np.einsum("zkv,zv->zk", P, dr)
                dS -= k[:, t, :, None] * dr[:, None, :]          # now dP
                if a is not None:
                    dg[:, t] = a[:, t] * np.einsum("zkv,zkv->z", Sprev, dS)
                    dS *= at
            else:
                dk[:, t] = np.einsum("zkv,zv->zk", dS, v[:, t])
                dv[:, t] = np.einsum("zkv,zk->zv", dS, k[:, t])
                if gate == "channel":
                    dg[:, t] = a[:, t] * np.einsum("zkv,zkv->zk", Sprev, dS)
                    dS *= a[:, t, :, None]
                elif gate == "scalar":
                    dg[:, t] = a[:, t] * np.einsum("zkv,zkv->z", Sprev, dS)
                    dS *= a[:, t, None, None]
    if sv["rq"] is not None:
        dq = _l2norm_backward(sv["q"], sv["rq"], dq)
        dk = _l2norm_backward(sv["k"], sv["rk"], dk)
    return dq, dk, dv, dg, db, dS


def _make_rule(delta):
    def rule(args):
        beta = args["beta"] if delta else None
        arrays, plan = _prepare(args["q"], args["k"], args["v"], args["g"], beta,
                                args["scale"], args["initial_state"],
                                args["cu_seqlens"], args["chunk_size"],
                                args["workers"], delta=delta)
        if delta:
            plan["l2norm"] = bool(args["use_qk_l2norm"])
        o, final, saved = _forward(arrays, plan, delta=delta)
        want_final = bool(args["output_final_state"])
        out = (o, final) if want_final else o

        def backward(ct):
            do, dfinal = ct if want_final else (ct, None)
            B, T, H, K, V = plan["shape"]
            dt = plan["dtype"]
            do = np.asarray(do, dtype=dt)
            grads = {n: np.zeros(arrays[x].shape, dtype=dt)
                     for n, x in (("q", "q"), ("k", "k"), ("v", "v"), ("g", "g"),
                                  ("beta", "beta"), ("initial_state", "h0"))
                     if arrays[x] is not None}
            for (bs, ts, ss), sv in zip(_segments(plan), saved):
                nb = bs.stop - bs.start
                dS = (np.zeros((nb * H, K, V), dtype=dt) if dfinal is None
                      else np.asarray(dfinal, dtype=dt)[ss].reshape(nb * H, K, V))
                if sv is None:              # an empty sequence
                    if "initial_state" in grads:
                        grads["initial_state"][ss] = dS.reshape(nb, H, K, V)
                    continue
                dq, dk, dv, dg, db, dS = _backward_rows(
                    sv, _rows(do[bs, ts]), dS, plan["scale"], plan["chunk"],
                    delta, plan["gate"])
                grads["q"][bs, ts] = _unrows(dq, nb, H)
                grads["k"][bs, ts] = _unrows(dk, nb, H)
                grads["v"][bs, ts] = _unrows(dv, nb, H)
                if dg is not None:
                    grads["g"][bs, ts] = _unrows(dg, nb, H)
                if db is not None:
                    grads["beta"][bs, ts] = _unrows(db, nb, H)
                if "initial_state" in grads:
                    grads["initial_state"][ss] = dS.reshape(nb, H, K, V)
            return grads

        return out, backward

    return rule


_linear_attention_vjp = defvjp(linear_attention, "q", "k", "v", "g",
                               "initial_state")(_make_rule(delta=False))
_gated_delta_rule_vjp = defvjp(gated_delta_rule, "q", "k", "v", "g", "beta",
                               "initial_state")(_make_rule(delta=True))


class _CallableModule(types.ModuleType):
    """This module's type: calling the module calls :func:`linear_attention`
    (``zilla_muf.linear_attention`` is both the module and the function)."""

    def __call__(self, q, k, v, g=None, *, scale=None, initial_state=None,
                 output_final_state=False, cu_seqlens=None, chunk_size=None,
                 workers=None):
        return linear_attention(q, k, v, g, scale=scale, initial_state=initial_state,
                                output_final_state=output_final_state,
                                cu_seqlens=cu_seqlens, chunk_size=chunk_size,
                                workers=workers)


sys.modules[__name__].__class__ = _CallableModule
# calling the module is calling the function, for `vjp` too
defvjp(sys.modules[__name__], "q", "k", "v", "g", "initial_state")(
    _linear_attention_vjp)
