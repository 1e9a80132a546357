"""Numerically stable reductions and activations.

The building blocks around a state space model's scan: normalised
exponentials and their logarithms, the segment sums of Mamba-2's decay mask,
the gates, and the RMS normalisation of the gated output. Every function
works for the whole floating-point range of its dtype:

- :func:`~zilla_muf.softmax`, :func:`~zilla_muf.log_softmax`,
  :func:`~zilla_muf.log_sum_exp` -- max-shifted, one pass over a row in cache;
- :func:`~zilla_muf.logcumsumexp` -- the running log-sum-exp;
- :func:`~zilla_muf.segsum` -- the segment sums
  :math:`\\sum_{t=j+1}^{i} x_t` without prefix-sum cancellation;
- :func:`~zilla_muf.sigmoid`, :func:`~zilla_muf.silu`,
  :func:`~zilla_muf.softplus` -- overflow-free activations;
- :func:`~zilla_muf.rms_norm` -- RMS normalisation, optionally gated and
  grouped (Mamba-2's ``RMSNormGated``).

These are real functions: complex input raises ``TypeError``.
"""

import math

import numpy as np

from . import _stable_ops
from ._docs import fill_doc
from ._validation import (
    as_array,
    at_least_1d,
    broadcast_shapes,
    check_shape,
    dtype_operand,
    normalize_axis,
    output_array,
    positive_int,
    real_scalar,
    resolve_workers,
    result_dtype,
)

__all__ = [
    "log_softmax",
    "log_sum_exp",
    "logcumsumexp",
    "rms_norm",
    "segsum",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
]

_OP_SOFTMAX, _OP_LOG_SOFTMAX, _OP_LOGCUMSUMEXP = 0, 1, 2
_OP_SIGMOID, _OP_SILU, _OP_SOFTPLUS = 0, 1, 2


# Elements per thread below which another thread costs more than it saves.
_MIN_PER_THREAD = 1024
# Elements per task of the elementwise kernel (its BLOCK).
_ELEMENT_BLOCK = 4096


def _threads(workers, size, tasks):
    """`workers` resolved, capped by the work: at most one thread per
    task (row or block) and per `_MIN_PER_THREAD` elements."""
    n = resolve_workers(workers)
    return max(1, min(n, tasks, size // _MIN_PER_THREAD))


def _real_rows(x, axis):
    """`x` as a C-contiguous (rows, n) array of its real kernel dtype.

    Returns the 2-D array, the shape of `x` with `axis` moved last, the
    normalised axis and `x` as an ndarray.
    """
    x = as_array(x, "x")
    dtype = result_dtype(allow_complex=False, x=x)
    at_least_1d(x, "x", "(..., n) with at least one dimension")
    ax = normalize_axis(axis, x.ndim)
    moved = np.moveaxis(x, ax, -1)
    shape = moved.shape
    rows = math.prod(shape[:-1])
    x2 = np.ascontiguousarray(moved, dtype=dtype).reshape(rows, shape[-1])
    return x2, shape, ax, x


def _direct_target(out, moved_shape, ax):
    """A C-contiguous 2-D view of `out` (axis moved last) the kernel can
    write into directly, or None when `out`'s layout needs a copy."""
    view = np.moveaxis(out, ax, -1)
    if not view.flags.c_contiguous:
        return None
    return view.reshape(math.prod(moved_shape[:-1]), moved_shape[-1])


def _row_op(op, x, axis, workers, out):
    x2, shape, ax, x = _real_rows(x, axis)
    nthreads = _threads(workers, x2.size, x2.shape[0])
    if out is None:
        res = np.empty_like(x2)
        _stable_ops.rows(op, x2, res, nthreads)
        return np.moveaxis(res.reshape(shape), -1, ax)
    output_array(out, x.shape, x2.dtype, {"x": x}, in_place="x")
    target = _direct_target(out, shape, ax)
    if target is None:
        res = np.empty_like(x2)
        _stable_ops.rows(op, x2, res, nthreads)
        np.copyto(out, np.moveaxis(res.reshape(shape), -1, ax))
    else:
        # out=x (contiguous) makes x2 and target the same memory: every
        # row kernel reads an element before it writes that element
        _stable_ops.rows(op, x2, target, nthreads)
    return out


def _elementwise(op, x, workers, out, beta=1.0, threshold=20.0):
    x = as_array(x, "x")
    dtype = result_dtype(allow_complex=False, x=x)
    flat = np.ascontiguousarray(x, dtype=dtype).reshape(-1)
    nthreads = _threads(workers, flat.size, -(-flat.size // _ELEMENT_BLOCK))
    if out is None:
        res = np.empty_like(flat)
        _stable_ops.elementwise(op, flat, res, beta, threshold, nthreads)
        return res.reshape(x.shape)
    output_array(out, x.shape, dtype, {"x": x}, in_place="x")
    if out.flags.c_contiguous:
        # elementwise: in place (out=x) is exact, element i is read first
        _stable_ops.elementwise(op, flat, out.reshape(-1), beta, threshold,
                                nthreads)
    else:
        res = np.empty_like(flat)
        _stable_ops.elementwise(op, flat, res, beta, threshold, nthreads)
        np.copyto(out, res.reshape(x.shape))
    return out


@fill_doc
def softmax(x, axis=-1, *, workers=None, out=None):
    r"""Softmax along `axis`, shifted by the maximum so nothing overflows.

    Parameters
    ----------
    %(x_real)s
    %(axis_row)s
    %(workers)s
    %(out_x)s

    Returns
    -------
    s : ndarray
        Same shape as `x`; non-negative, summing to 1 along `axis`.

    Raises
    ------
    TypeError
        If `x` is complex or not numeric.
    ValueError
        If `x` is 0-d, `axis` is out of range or `workers` is 0;
        or if `out` has the wrong shape or dtype, is read-only or overlaps
        `x` other than being `x` itself.

    See Also
    --------
    log_softmax, log_sum_exp
    scipy.special.softmax : the same function, computed in several passes.

    Notes
    -----
    With :math:`m = \max_k x_k`,

    .. math::

        \operatorname{softmax}(x)_i = \frac{e^{x_i - m}}{\sum_k e^{x_k - m}} ,

    so every exponential is at most 1 and the sum at least 1: no overflow or
    total underflow for any finite input. Each row is processed while it is
    in cache: the maximum, the exponentials (a vectorised loop) stored to the
    output, their sum in float64, a scale.
    A row that is all :math:`-\infty`, or contains :math:`+\infty` or NaN,
    gives NaN (:math:`\infty - \infty` and :math:`\infty/\infty` are
    undefined), as :func:`scipy.special.softmax` does.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       The `out` argument.

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import softmax
    >>> softmax([1.0, 2.0, 3.0])
    array([0.09003057, 0.24472847, 0.66524096])

    Inputs far beyond ``exp``'s range are fine:

    >>> softmax(np.array([1e30, 1e30, -1e30], dtype=np.float32))
    array([0.5, 0.5, 0. ], dtype=float32)
    """
    return _row_op(_OP_SOFTMAX, x, axis, workers, out)


@fill_doc
def log_softmax(x, axis=-1, *, workers=None, out=None):
    r"""Logarithm of the softmax along `axis`, without forming the softmax.

    Parameters
    ----------
    %(x_real)s
    %(axis_row)s
    %(workers)s
    %(out_x)s

    Returns
    -------
    y : ndarray
        Same shape as `x`: :math:`x - \operatorname{logsumexp}(x)` along `axis`.

    Raises
    ------
    TypeError
        If `x` is complex or not numeric.
    ValueError
        If `x` is 0-d, `axis` is out of range or `workers` is 0;
        or if `out` has the wrong shape or dtype, is read-only or overlaps
        `x` other than being `x` itself.

    See Also
    --------
    softmax, log_sum_exp
    scipy.special.log_softmax

    Notes
    -----
    .. math::

        \log \operatorname{softmax}(x)_i = (x_i - m) - \log \sum_k e^{x_k - m},
        \qquad m = \max_k x_k ,

    in that order, so results near 0 keep full precision when :math:`|m|`
    is huge. Entries of a tiny softmax (whose exponential underflows) keep their
    exact logarithm. Rows that are all :math:`-\infty` or hold
    :math:`+\infty` or NaN give NaN.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       The `out` argument.

    Examples
    --------
    >>> from zilla_muf import log_softmax
    >>> log_softmax([0.0, 0.0, -100.0])
    array([  -0.69314718,   -0.69314718, -100.69314718])
    """
    return _row_op(_OP_LOG_SOFTMAX, x, axis, workers, out)


@fill_doc
def log_sum_exp(x, axis=-1, keepdims=False, *, workers=None):
    r"""Logarithm of the sum of exponentials along `axis`, without overflow.

    Parameters
    ----------
    %(x_real)s
    axis : int, optional
        The axis to reduce. Default -1.
    keepdims : bool, optional
        Keep the reduced axis with length 1. Default False.
    %(workers)s

    Returns
    -------
    lse : ndarray
        The shape of `x` without `axis` (or with length 1 there when
        `keepdims`).

    Raises
    ------
    TypeError
        If `x` is complex or not numeric.
    ValueError
        If `x` is 0-d, `axis` is out of range or `workers` is 0.

    See Also
    --------
    softmax, logcumsumexp
    scipy.special.logsumexp

    Notes
    -----
    .. math::

        \operatorname{lse}(x) = m + \log \sum_k e^{x_k - m},
        \qquad m = \max_k x_k ,

    exact to rounding for every finite input up to the dtype's maximum. A row
    that is all :math:`-\infty` (or empty) gives :math:`-\infty`; a row holding
    :math:`+\infty` gives :math:`+\infty`; a NaN gives NaN.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import log_sum_exp
    >>> log_sum_exp([1000.0, 1000.0])
    np.float64(1000.6931471805599)
    >>> log_sum_exp(np.array([[0.0, 0.0], [-np.inf, -np.inf]]), axis=1, keepdims=True)
    array([[0.69314718],
           [      -inf]])
    """
    x2, shape, ax, _ = _real_rows(x, axis)
    nthreads = _threads(workers, x2.size, x2.shape[0])
    out = np.empty(x2.shape[0], dtype=x2.dtype)
    _stable_ops.log_sum_exp(x2, out, nthreads)
    out = out.reshape(shape[:-1])
    if keepdims:
        out = np.expand_dims(out, ax)
    return out[()] if out.ndim == 0 else out


@fill_doc
def logcumsumexp(x, axis=-1, *, workers=None, out=None):
    r"""Running log-sum-exp along `axis`.

    Parameters
    ----------
    %(x_real)s
    %(axis_row)s
    %(workers)s
    %(out_x)s

    Returns
    -------
    y : ndarray
        Same shape as `x`: ``y[..., t] = log_sum_exp(x[..., :t+1])``.

    Raises
    ------
    TypeError
        If `x` is complex or not numeric.
    ValueError
        If `x` is 0-d, `axis` is out of range or `workers` is 0;
        or if `out` has the wrong shape or dtype, is read-only or overlaps
        `x` other than being `x` itself.

    See Also
    --------
    log_sum_exp
    numpy.logaddexp : ``np.logaddexp.accumulate`` is the same recurrence.

    Notes
    -----
    The recurrence :math:`y_0 = x_0`,

    .. math::

        y_t = \max(y_{t-1}, x_t)
              + \operatorname{log1p}\!\left(e^{-|y_{t-1} - x_t|}\right),

    takes one exponential of a non-positive number per step (no overflow);
    equal infinities stay that infinity.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       The `out` argument.

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import logcumsumexp
    >>> logcumsumexp(np.log([1.0, 2.0, 3.0]))
    array([0.        , 1.09861229, 1.79175947])
    """
    return _row_op(_OP_LOGCUMSUMEXP, x, axis, workers, out)


@fill_doc
def segsum(x, axis=-1, *, workers=None):
    r"""Segment sums :math:`\sum_{t=j+1}^{i} x_t` for all pairs (i, j).

    ``exp(segsum(log_a))`` is the lower-triangular decay mask
    :math:`L_{ij} = \prod_{t=j+1}^{i} a_t` of Mamba-2's state space duality.

    Parameters
    ----------
    x : array_like
        Real input, float32 or float64, of length n along `axis`.
    axis : int, optional
        The sequence axis. Default -1.
    %(workers)s

    Returns
    -------
    s : ndarray
        Shape ``(..., n, n)``: the other axes of `x` (`axis` removed, order
        kept), then `i`, then `j`.

    Raises
    ------
    TypeError
        If `x` is complex or not numeric.
    ValueError
        If `x` is 0-d, `axis` is out of range or `workers` is 0.

    See Also
    --------
    logcumsumexp
    numpy.cumsum : ``cs[i] - cs[j]`` is the same quantity, with cancellation.

    Notes
    -----
    .. math::

        s_{ij} = \begin{cases} \sum_{t=j+1}^{i} x_t & j < i \\
                 0 & j = i \\ -\infty & j > i \end{cases}

    Row :math:`i` is computed from row :math:`i-1` as
    :math:`s_{ij} = s_{i-1,j} + x_i` (a running sum per column), never as a
    difference of prefix sums, so a small segment after a long one keeps its
    full relative precision.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> from zilla_muf import segsum
    >>> segsum([1.0, 2.0, 3.0])
    array([[ 0., -inf, -inf],
           [ 2.,  0., -inf],
           [ 5.,  3.,  0.]])
    """
    x2, shape, _, _ = _real_rows(x, axis)
    n = shape[-1]
    nthreads = _threads(workers, x2.shape[0] * n * n, x2.shape[0])
    out = np.empty((x2.shape[0], n, n), dtype=x2.dtype)
    _stable_ops.segsum(x2, out, nthreads)
    return out.reshape(shape + (n,))


@fill_doc
def sigmoid(x, *, workers=None, out=None):
    r"""Logistic sigmoid :math:`1 / (1 + e^{-x})`, elementwise.

    Parameters
    ----------
    %(x_real)s
    %(workers)s
    %(out_x)s

    Returns
    -------
    y : ndarray
        Same shape as `x`, in [0, 1].

    Raises
    ------
    TypeError
        If `x` is complex or not numeric.
    ValueError
        If `workers` is 0;
        or if `out` has the wrong shape or dtype, is read-only or overlaps
        `x` other than being `x` itself.

    See Also
    --------
    silu, softplus
    scipy.special.expit

    Notes
    -----
    With :math:`e = e^{-|x|} \le 1`,

    .. math::

        \sigma(x) = \begin{cases} 1/(1 + e) & x \ge 0 \\
                    e/(1 + e) & x < 0 \end{cases}

    so no exponential overflows and small results keep full relative
    precision.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       The `out` argument.

    Examples
    --------
    >>> from zilla_muf import sigmoid
    >>> sigmoid([-1000.0, 0.0, 1000.0])
    array([0. , 0.5, 1. ])
    """
    return _elementwise(_OP_SIGMOID, x, workers, out)


@fill_doc
def silu(x, *, workers=None, out=None):
    r"""SiLU (swish) :math:`x \, \sigma(x)`, elementwise.

    Parameters
    ----------
    %(x_real)s
    %(workers)s
    %(out_x)s

    Returns
    -------
    y : ndarray
        Same shape as `x`.

    Raises
    ------
    TypeError
        If `x` is complex or not numeric.
    ValueError
        If `workers` is 0;
        or if `out` has the wrong shape or dtype, is read-only or overlaps
        `x` other than being `x` itself.

    See Also
    --------
    sigmoid, rms_norm

    Notes
    -----
    :math:`\operatorname{silu}(x) = x \, \sigma(x)` with the overflow-free
    :func:`sigmoid`; at :math:`x = -\infty` it returns the limit
    :math:`-0` rather than :math:`-\infty \cdot 0` (NaN, which
    ``torch.nn.functional.silu`` and the NumPy formulas ``x * expit(x)`` and
    ``x / (1 + exp(-x))`` give). Every function of the package that applies
    SiLU (the gates of :func:`rms_norm`, the selective scan and the SSD, the
    activation of ``causal_conv1d``) follows the same rule, and their
    gradients (:func:`zilla_muf.vjp`) take the derivative's limits
    :math:`\operatorname{silu}'(-\infty) = 0` and
    :math:`\operatorname{silu}'(+\infty) = 1`: a gate at :math:`-\infty`
    switches its output element off without turning any gradient into NaN.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       The `out` argument.

    Examples
    --------
    >>> from zilla_muf import silu
    >>> silu([-1000.0, 0.0, 2.0])
    array([-0.       ,  0.       ,  1.76159416])
    """
    return _elementwise(_OP_SILU, x, workers, out)


@fill_doc
def softplus(x, beta=1.0, threshold=20.0, *, workers=None, out=None):
    r"""Softplus :math:`\log(1 + e^{\beta x}) / \beta`, elementwise.

    Parameters
    ----------
    %(x_real)s
    beta : float, optional
        Sharpness, finite and nonzero. Default 1.
    threshold : float, optional
        Where :math:`\beta x` exceeds it, `x` itself is returned (as in
        PyTorch). Default 20. Must not be NaN.
    %(workers)s
    %(out_x)s

    Returns
    -------
    y : ndarray
        Same shape as `x`.

    Raises
    ------
    TypeError
        If `x` is complex or not numeric, or `beta` or `threshold` is not a
        real number.
    ValueError
        If `beta` is 0 or not finite, `threshold` is NaN, or `workers` is 0;
        or if `out` has the wrong shape or dtype, is read-only or overlaps
        `x` other than being `x` itself.

    See Also
    --------
    sigmoid : the derivative of softplus.
    numpy.logaddexp : ``np.logaddexp(0, x)`` is softplus with beta 1.

    Notes
    -----
    With :math:`z = \beta x`,

    .. math::

        \operatorname{softplus}(x) = \begin{cases} x & z > \text{threshold} \\
            \bigl(\max(z, 0) + \operatorname{log1p}(e^{-|z|})\bigr) / \beta
            & \text{otherwise,} \end{cases}

    which equals :math:`\operatorname{log1p}(e^{z})/\beta` and never
    overflows, whatever the threshold.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       The `out` argument.

    Examples
    --------
    >>> from zilla_muf import softplus
    >>> softplus([-10000.0, 0.0, 10000.0])
    array([0.00000000e+00, 6.93147181e-01, 1.00000000e+04])
    >>> softplus([1.0], beta=2.0)
    array([1.06346401])
    """
    beta = real_scalar(beta, "beta")
    threshold = real_scalar(threshold, "threshold")
    if beta == 0 or not math.isfinite(beta):
        raise ValueError(f"`beta` must be finite and nonzero, got {beta}")
    if math.isnan(threshold):
        raise ValueError("`threshold` must be a number, got nan")
    return _elementwise(_OP_SOFTPLUS, x, workers, out, beta, threshold)


@fill_doc
def rms_norm(x, weight=None, *, eps=1e-6, z=None, group_size=None,
             norm_before_gate=True, workers=None):
    r"""RMS normalisation over the last axis, optionally gated and grouped.

    Parameters
    ----------
    x : array_like
        Real input, float32 or float64, with C channels on the last axis.
    weight : array_like, optional
        Per-channel scale, shape (C,). Default 1.
    eps : float, optional
        Added to the mean square, >= 0. Default 1e-6.
    z : array_like, optional
        Gate (Mamba-2's ``RMSNormGated``), broadcast against `x`.
    group_size : int, optional
        Normalise each contiguous group of this many channels separately; must
        divide C. Default C (one group).
    norm_before_gate : bool, optional
        With `z`: True gives ``norm(x) * silu(z)``, False gives
        ``norm(x * silu(z))``. Default True.
    %(workers)s

    Returns
    -------
    y : ndarray
        The broadcast shape of `x` and `z`.

    Raises
    ------
    TypeError
        If an input is complex or not numeric, or `eps` is not a real number.
    ValueError
        If `x` is 0-d, `weight` is not of shape (C,), `z` does not broadcast
        against `x`, `group_size` does not divide C, `eps` < 0 or `workers`
        is 0.

    See Also
    --------
    silu

    Notes
    -----
    For a group :math:`G` of :math:`g` channels,

    .. math::

        \operatorname{norm}(v)_c = \frac{v_c}
            {\sqrt{\frac{1}{g} \sum_{k \in G} v_k^2 + \varepsilon}} \; w_c ,

    with :math:`v = x` (no gate, or ``norm_before_gate=True``, then times
    :math:`\operatorname{silu}(z)`) or :math:`v = x \operatorname{silu}(z)`.
    The sum of squares accumulates in float64.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import rms_norm
    >>> rms_norm([3.0, 4.0], eps=0.0)
    array([0.84852814, 1.13137085])
    >>> rms_norm([1.0, 1.0, 2.0, 2.0], group_size=2, eps=0.0)
    array([1., 1., 1., 1.])
    """
    nthreads = resolve_workers(workers)
    x = as_array(x, "x")
    w = None if weight is None else as_array(weight, "weight")
    zz = None if z is None else as_array(z, "z")
    dtype = result_dtype(allow_complex=False, x=x,
                         weight=dtype_operand(weight, w), z=dtype_operand(z, zz))
    eps = real_scalar(eps, "eps")
    if not eps >= 0:
        raise ValueError(f"`eps` must be >= 0, got {eps}")
    if x.ndim == 0:
        raise ValueError("`x` must have at least one dimension, got a 0-d array")
    shape = x.shape if zz is None else broadcast_shapes(x=x.shape, z=zz.shape)
    if len(shape) == 0:
        raise ValueError("`x` must have at least one dimension, got a 0-d array")
    c = shape[-1]
    if zz is not None and shape[-1] != x.shape[-1]:
        raise ValueError(
            f"`z` must not change the channel count of `x` ({x.shape[-1]}) "
            f"when broadcast, got shape {zz.shape}")
    if w is None:
        w = np.ones(c, dtype=dtype)
    else:
        check_shape(w, (c,), "weight")
    if group_size is None:
        group = c
    else:
        group = positive_int(group_size, "group_size")
        if c % group:
            raise ValueError(
                f"`group_size` must be a positive integer dividing the "
                f"{c} channels, got {group_size!r}")
    rows = math.prod(shape[:-1])
    nthreads = max(1, min(nthreads, rows, rows * c // _MIN_PER_THREAD))
    x2 = _row_view(x, shape, dtype)
    w1 = np.ascontiguousarray(w, dtype=dtype)
    z2 = x2 if zz is None else _row_view(zz, shape, dtype)
    out = np.empty((rows, c), dtype=dtype)
    _stable_ops.rms_norm(x2, z2, w1, out, max(group, 1), eps, zz is not None,
                         bool(norm_before_gate), nthreads)
    return out.reshape(shape)


def _row_view(a, shape, dtype):
    """`a` broadcast to `shape`, in `dtype`, as (rows, C) with unit stride
    along C: a view where `a` already is one (a slice of the columns of a
    wider array keeps its row stride), else a C-contiguous copy."""
    rows, c = math.prod(shape[:-1]), shape[-1]
    if a.dtype == dtype and a.shape == tuple(shape) and a.strides[-1] == a.itemsize:
        return a.reshape(rows, c)       # a view, or a C-contiguous copy
    return np.ascontiguousarray(np.broadcast_to(a, shape), dtype=dtype).reshape(rows, c)


def _rms_norm_rows(x, weight, eps):
    """:func:`rms_norm` of C-contiguous (rows, C) `x` with a weight of its
    dtype (float32 or float64), no gate, on the calling thread: for callers
    that hold a model's own arrays (a norm called once per decoded token)."""
    if (not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64)
            or x.ndim != 2 or not x.flags.c_contiguous):
        raise TypeError("`x` must be a C-contiguous float32 or float64 (rows, C) array")
    if not isinstance(weight, np.ndarray) or weight.dtype != x.dtype:
        raise TypeError(f"`weight` must be a {x.dtype} array")
    out = np.empty_like(x)
    _stable_ops.rms_norm(x, x, np.ascontiguousarray(weight), out, max(x.shape[1], 1),
                         eps, False, False, 1)
    return out


# Gradients
#
# Closed forms, written so that nothing takes exp of a positive difference
# or subtracts -inf from -inf: a row of -inf (whose softmax is undefined)
# and the -inf entries of a row get zero gradient, never NaN. Each rule's
# comment says what its pullback keeps. rms_norm's rule lives with the layer
# gradients.

from . import _vjp_kernels  # noqa: E402
from ._vjp import defvjp  # noqa: E402


def _axis_of(y, axis):
    return normalize_axis(axis, np.ndim(y))


def _dead_rows(x, ax):
    """Rows (keepdims) of `x` along `ax` that are all -inf."""
    return np.max(np.asarray(x), axis=ax, keepdims=True) == -np.inf


def _row_dot(c, y, ax):
    """sum(c * y) along `ax` (keepdims), without the product's temporary."""
    c = np.asarray(c)
    cm = np.moveaxis(c, ax, -1)
    ym = np.moveaxis(y, ax, -1)
    dtype = np.result_type(c, y)
    if cm.dtype != dtype:
        cm = cm.astype(dtype)
    return np.expand_dims(np.einsum("...i,...i->...", cm, ym), ax)


@defvjp(softmax, "x")
def _softmax_vjp(args):
    # keeps y (the output), and x only to find rows of -inf
    y = softmax(**args)
    ax = _axis_of(y, args["axis"])

    def backward(c):
        # dx = y * (c - sum(c * y)): the row sums without a temporary, then
        # two in-place passes. A row of NaN in y (a row of -inf, or a NaN
        # input) makes its sum NaN, so only then are the rows examined.
        y_ = y
        dot = _row_dot(c, y_, ax)
        if np.isnan(dot).any():
            y_ = np.where(_dead_rows(args["x"], ax), 0, y)
            dot = _row_dot(c, y_, ax)
        g = np.subtract(c, dot, dtype=y.dtype)
        g *= y_
        return {"x": g}

    return y, backward


@defvjp(log_softmax, "x")
def _log_softmax_vjp(args):
    # keeps y (the output), and x only to find rows of -inf
    y = log_softmax(**args)
    ax = _axis_of(y, args["axis"])

    def backward(c):
        # dx = c - softmax(x) * sum(c), softmax(x) = exp(y) <= 1. A row of
        # -inf (or with a NaN) is NaN throughout, so its first entry tells.
        dead_or_nan = y.size and np.isnan(np.take(y, 0, axis=ax)).any()
        if not dead_or_nan and y.size and y.dtype.kind == "f":
            # one compiled pass per row (the row sum, then the vectorised
            # exp in blocks), on rows along the last axis
            ym = np.moveaxis(y, ax, -1)
            shape = ym.shape
            n = shape[-1]
            y2 = np.ascontiguousarray(ym).reshape(-1, n)
            c2 = np.ascontiguousarray(
                np.moveaxis(np.broadcast_to(np.asarray(c), y.shape), ax, -1),
                dtype=y.dtype).reshape(-1, n)
            g = np.empty(shape, y.dtype)
            _vjp_kernels.log_softmax_backward(
                y2, c2, g.reshape(-1, n),
                _threads(args["workers"], y2.size, y2.shape[0]))
            return {"x": np.moveaxis(g, -1, ax)}
        p = np.exp(y)
        if dead_or_nan:
            dead = _dead_rows(args["x"], ax)
            p = np.where(dead, 0, p)
            c = np.where(dead, 0, c)
        p *= np.sum(c, axis=ax, keepdims=True)
        return {"x": np.subtract(c, p, out=p)}

    return y, backward


@defvjp(log_sum_exp, "x")
def _log_sum_exp_vjp(args):
    # keeps x and the output
    out = log_sum_exp(**args)
    x = np.asarray(args["x"])
    ax = _axis_of(x, args["axis"])
    lse = out if args["keepdims"] else np.expand_dims(out, ax)

    def backward(c):
        # dx = c * exp(x - lse) (x - lse <= 0); a row of -inf gets 0
        if not args["keepdims"]:
            c = np.expand_dims(c, ax)
        # exp(x - lse) is softmax(x) (its compiled kernel, one pass per row
        # in cache) wherever lse is finite; rows of -inf, +inf or NaN take
        # the direct form (a row of -inf gets 0, not softmax's NaN)
        p = softmax(x, axis=ax, workers=args["workers"]).astype(out.dtype, copy=False)
        odd = ~np.isfinite(lse)
        if odd.any():
            with np.errstate(invalid="ignore"):
                q = np.exp(np.subtract(x, lse, dtype=out.dtype))
            p = np.where(odd, np.where(lse == -np.inf, 0, q), p)
        p *= c
        return {"x": p}

    return out, backward


@defvjp(logcumsumexp, "x")
def _logcumsumexp_vjp(args):
    # keeps x and y (the output). dx_s = sum_{t>=s} c_t exp(x_s - y_t)
    # = exp(x_s - y_s) q_s with the reverse scan q_s = c_s + exp(y_s - y_{s+1})
    # q_{s+1}: y never decreases, so every exponent is <= 0.
    y = logcumsumexp(**args)
    x = np.asarray(args["x"])
    ax = _axis_of(y, args["axis"])
    n = y.shape[ax] if y.ndim else 0

    def backward(c):
        if n == 0:
            return {"x": np.zeros(y.shape, y.dtype)}
        head = np.take(y, np.arange(n - 1), axis=ax)
        tail = np.take(y, np.arange(1, n), axis=ax)
        with np.errstate(invalid="ignore"):
            d = np.where(tail == -np.inf, 0, np.exp(head - tail))
            p = np.where(y == -np.inf, 0, np.exp(x - y))
        zero = np.zeros_like(np.take(y, [0], axis=ax))
        d = np.concatenate([d, zero], axis=ax)
        q = _scan_reverse(d, c, ax, args["workers"])
        return {"x": p * q}

    return y, backward


def _linear_scan(a, b, **kwargs):
    from .scan import linear_scan

    return linear_scan(a, b, **kwargs)


def _scan_reverse(d, c, ax, workers):
    return _linear_scan(d, np.asarray(c, dtype=d.dtype), axis=ax, reverse=True,
                        workers=workers)


@defvjp(segsum, "x")
def _segsum_vjp(args):
    # keeps nothing but the shapes: the map is linear.
    # s[i, j] = sum_{j < t <= i} x_t, so dx_t = sum_{i >= t} sum_{j < t} c[i, j]
    s = segsum(**args)
    x = np.asarray(args["x"])
    ax = normalize_axis(args["axis"], x.ndim)

    def backward(c):
        # dx_t = sum_{i >= t} sum_{j < t} c[i, j]: one compiled pass over
        # the strictly lower triangle and a prefix sum
        n = c.shape[-1]
        lead = c.shape[:-2]
        c3 = np.ascontiguousarray(c, dtype=s.dtype).reshape(-1, n, n)
        g = np.empty((c3.shape[0], n), dtype=s.dtype)
        _vjp_kernels.segsum_backward(c3, g, resolve_workers(args["workers"]))
        return {"x": np.moveaxis(g.reshape(lead + (n,)), -1, ax)}

    return s, backward


@defvjp(sigmoid, "x")
def _sigmoid_vjp(args):
    # keeps y (the output): dx = c y (1 - y)
    y = sigmoid(**args)

    def backward(c):
        return {"x": c * (y * (1 - y))}

    return y, backward


@defvjp(silu, "x")
def _silu_vjp(args):
    # keeps x. dx = c s (1 + x (1 - s)), s = sigmoid(x), in one compiled
    # pass (_vjp_kernels.silu_backward); x = +-inf gives c or 0
    y = silu(**args)
    x = np.asarray(args["x"])

    def backward(c):
        return {"x": _silu_pullback(x, c, y.shape, y.dtype,
                                    resolve_workers(args["workers"]))}

    return y, backward


def _silu_pullback(x, c, shape, dtype, threads):
    """c silu'(x) as a new array of `shape` and `dtype` (x and c broadcast
    to it), by the compiled gate element every gate's pullback uses (so
    silu'(-inf) = 0 and silu'(+inf) = 1)."""
    xf = np.ascontiguousarray(np.broadcast_to(x, shape), dtype=dtype).reshape(-1)
    cf = np.ascontiguousarray(np.broadcast_to(c, shape), dtype=dtype).reshape(-1)
    g = np.empty(shape, dtype)
    _vjp_kernels.silu_backward(xf, cf, g.reshape(-1), threads)
    return g


@defvjp(softplus, "x")
def _softplus_vjp(args):
    # keeps x; dx = c sigmoid(beta x), or c where beta x > threshold (identity)
    y = softplus(**args)
    x = np.asarray(args["x"])
    beta = args["beta"]
    threshold = args["threshold"]

    def backward(c):
        bx = np.multiply(beta, x, dtype=y.dtype)
        d = sigmoid(bx, workers=args["workers"])
        d[bx > threshold] = 1
        d *= c
        return {"x": d}

    return y, backward


# The gated RMS norm (a layer's gradient, derived in the user guide's page on
# the layers' gradients).


@defvjp(rms_norm, "x", "weight", "z")
def _rms_norm_vjp(args):
    """Pullback of :func:`rms_norm`: keeps the inputs, recomputes the norms.

    With v the normalised input (x, or x * silu(z)), r = 1 / rms(v) per
    group and n = v r, the output is n w (times silu(z) when the gate comes
    after the norm); the backward is
    dv = r (dn - n mean_group(dn n)) with dn = w * (dy, gated).
    """
    y = rms_norm(**args)
    return y, _rms_norm_backward(args, y.dtype, y.shape)


def _rms_norm_backward(args, dtype, shape):
    """The backward of :func:`rms_norm` at `args` (bound by name), whose
    output has `dtype` and `shape`; it needs the inputs only, so a caller
    that kept them (a PyTorch operator) builds it without a forward."""
    x = np.asarray(args["x"])
    w = args["weight"]
    zz = args["z"]
    eps = float(args["eps"])
    before = bool(args["norm_before_gate"])
    c = shape[-1]
    group = (c if args["group_size"] is None
             else positive_int(args["group_size"], "group_size"))
    nthreads = resolve_workers(args.get("workers"))

    def backward(gy, z_out=None):
        """The gradients for the cotangent `gy`; z's written into `z_out`
        (an array of the output's shape and dtype) when given."""
        gy = np.asarray(gy, dtype=dtype)
        if (0 not in shape and dtype in (np.float32, np.float64)
                and np.isfinite(eps)):
            return _rms_norm_backward_compiled(gy, z_out)
        grads = _rms_norm_backward_listed(gy)
        if z_out is not None and "z" in grads:
            z_out[...] = grads["z"]
            grads["z"] = z_out
        return grads

    def _rms_norm_backward_listed(gy):
        """The closed form in NumPy operations (empty or non-finite cases)."""
        xb = np.broadcast_to(np.asarray(x, dtype=dtype), shape)
        wv = (np.ones(c, dtype) if w is None else np.asarray(w, dtype=dtype))
        if zz is not None:
            zb = np.broadcast_to(np.asarray(zz, dtype=dtype), shape)
            s = silu(zb, workers=nthreads)

            def dsilu(c):
                """c * silu'(z), in one compiled pass."""
                zf = np.ascontiguousarray(zb).reshape(-1)
                g = np.empty(shape, dtype=dtype)
                _vjp_kernels.silu_backward(zf, np.ascontiguousarray(c).reshape(-1),
                                           g.reshape(-1), nthreads)
                return g
        if zz is None or before:
            v = xb
        else:
            v = xb * s
        vg = v.reshape(shape[:-1] + (c // group, group))
        ms = np.mean(np.square(vg, dtype=np.float64), axis=-1, keepdims=True)
        r = (1.0 / np.sqrt(ms + eps)).astype(dtype)
        n = (vg * r).reshape(shape)
        q = gy * s if (zz is not None and before) else gy   # d(n * w)
        grads = {}
        if w is not None:
            grads["weight"] = np.sum((q * n).reshape(-1, c), axis=0,
                                     dtype=np.float64)
        dn = (q * wv).reshape(vg.shape)
        ng = n.reshape(vg.shape)
        proj = np.mean(dn * ng, axis=-1, keepdims=True, dtype=np.float64)
        dv = (r * (dn - ng * proj.astype(dtype))).reshape(shape)
        if zz is None:
            grads["x"] = dv
        elif before:
            grads["x"] = dv
            grads["z"] = dsilu(gy * (n * wv))
        else:
            grads["z"] = dsilu(dv * xb)
            dv *= s
            grads["x"] = dv
        return grads

    def _rms_norm_backward_compiled(gy, z_out):
        """One compiled pass over rows (_vjp_kernels.rms_norm_backward)."""
        rows = int(np.prod(shape[:-1], dtype=np.int64))
        xr = _row_view(x, shape, dtype)
        gyr = _row_view(gy, shape, dtype)
        wv = (np.ones(c, dtype) if w is None
              else np.ascontiguousarray(w, dtype=dtype))
        mode = 0 if zz is None else (1 if before else 2)
        if mode:
            zr = _row_view(np.asarray(zz), shape, dtype)
            gz = None if z_out is None else _row_view(z_out, shape, dtype)
            if gz is None or not np.may_share_memory(gz, z_out):
                gz = np.empty((rows, c), dtype=dtype)
        else:
            zr = gz = np.empty((1, 1), dtype=dtype)
        # fixed blocks of rows (independent of the thread count), each
        # with its own row of weight-gradient partials, summed in order
        block = max(64, -(-rows // 256))
        nblk = -(-rows // block)
        gwp = np.empty((nblk, c) if w is not None else (1, 1), np.float64)
        gx = np.empty((rows, c), dtype=dtype)
        _vjp_kernels.rms_norm_backward(xr, zr, wv, gyr, group, eps, mode,
                                       w is not None, block, gx, gz, gwp,
                                       nthreads)
        grads = {"x": gx.reshape(shape)}
        if mode and z_out is not None:
            if not np.may_share_memory(gz, z_out):
                z_out[...] = gz.reshape(shape)
            grads["z"] = z_out
        elif mode:
            grads["z"] = gz.reshape(shape)
        if w is not None:
            grads["weight"] = np.add.reduce(gwp, axis=0)
        return grads

    return backward
