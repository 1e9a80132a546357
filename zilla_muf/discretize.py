r"""Discretisation of the continuous-time system :math:`x' = A x + B u`.

A state space model holds a continuous system and steps it with a step
``delta``; these functions give the discrete
:math:`x_k = \bar A x_{k-1} + \bar B u_k`:

- :func:`~zilla_muf.zoh_discretize` -- zero-order hold (S4, Mamba);
- :func:`~zilla_muf.bilinear_discretize` -- the generalised bilinear transform
  (forward Euler, Tustin, backward Euler).

The diagonal case (the SSM case, real or complex :math:`A` stored as a vector
of eigenvalues) runs in a compiled elementwise kernel; ``dense=True`` takes
square matrices.
"""

import math

import numpy as np
import scipy.linalg

from . import _discretize
from ._docs import fill_doc
from ._validation import (
    as_array,
    broadcast_shapes,
    dtype_operand,
    real_dtype,
    real_scalar,
    require_real,
    resolve_workers,
    result_dtype,
)

__all__ = ["bilinear_discretize", "zoh_discretize"]

def _prepare(A, B, delta):
    """Validated arrays and the computation dtype."""
    a = as_array(A, "A")
    b = as_array(B, "B")
    d = as_array(delta, "delta")
    require_real(delta=d)
    dtype = result_dtype(A=dtype_operand(A, a), B=dtype_operand(B, b),
                         delta=dtype_operand(delta, d))
    return a, b, d, dtype


def _diagonal(kind, A, B, delta, dtype, alpha, workers):
    """The elementwise case: broadcast, flatten, run the kernel."""
    nthreads = resolve_workers(workers)
    shape = broadcast_shapes(A=A.shape, B=B.shape, delta=delta.shape)
    size = math.prod(shape)
    rdt = real_dtype(dtype)
    a_complex = A.dtype.kind == "c"
    a_dtype = dtype if a_complex else rdt
    a = np.ascontiguousarray(np.broadcast_to(A, shape), dtype=a_dtype).reshape(size)
    b = np.ascontiguousarray(np.broadcast_to(B, shape), dtype=dtype).reshape(size)
    d = np.ascontiguousarray(np.broadcast_to(delta, shape), dtype=rdt).reshape(size)
    abar = np.empty(size, dtype=a_dtype)
    bbar = np.empty(size, dtype=dtype)
    if a_complex:
        a_r, b_r = a.view(rdt), b.view(rdt)
        abar_r, bbar_r = abar.view(rdt), bbar.view(rdt)
        if kind == "zoh":
            _discretize.zoh_complex(a_r, d, b_r, abar_r, bbar_r, nthreads)
        else:
            _discretize.bilinear_complex(a_r, d, b_r, alpha, abar_r, bbar_r,
                                         nthreads)
    else:
        bw = 2 if b.dtype.kind == "c" else 1
        b_r, bbar_r = b.view(rdt), bbar.view(rdt)
        if kind == "zoh":
            _discretize.zoh_real(a, d, b_r, abar, bbar_r, bw, nthreads)
        else:
            _discretize.bilinear_real(a, d, b_r, alpha, abar, bbar_r, bw,
                                      nthreads)
    return abar.reshape(shape), bbar.reshape(shape)


def _dense_shapes(A, B, delta):
    """Check dense shapes; return the batch shape, N and M."""
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(
            f"`A` must be a square matrix (..., N, N) with dense=True, got "
            f"shape {A.shape}")
    n = A.shape[-1]
    if B.ndim < 2 or B.shape[-2] != n:
        raise ValueError(
            f"`B` must have shape (..., {n}, M) to match `A` with dense=True, "
            f"got shape {B.shape}")
    batch = broadcast_shapes(A=A.shape[:-2], B=B.shape[:-2], delta=delta.shape)
    return batch, n, B.shape[-1]


def _dense_zoh(A, B, delta, dtype):
    batch, n, m = _dense_shapes(A, B, delta)
    A = np.broadcast_to(A, batch + (n, n)).astype(dtype)
    B = np.broadcast_to(B, batch + (n, m)).astype(dtype)
    d = np.broadcast_to(delta, batch).astype(real_dtype(dtype))[..., None, None]
    # exp([[A, B], [0, 0]] * delta) = [[A_bar, B_bar], [0, I]]
    M = np.zeros(batch + (n + m, n + m), dtype=dtype)
    M[..., :n, :n] = A * d
    M[..., :n, n:] = B * d
    E = scipy.linalg.expm(M) if M.size else M
    return (np.ascontiguousarray(E[..., :n, :n], dtype=dtype),
            np.ascontiguousarray(E[..., :n, n:], dtype=dtype))


def _dense_bilinear(A, B, delta, alpha, dtype):
    batch, n, m = _dense_shapes(A, B, delta)
    A = np.broadcast_to(A, batch + (n, n)).astype(dtype)
    B = np.broadcast_to(B, batch + (n, m)).astype(dtype)
    d = np.broadcast_to(delta, batch).astype(real_dtype(dtype))[..., None, None]
    eye = np.eye(n, dtype=dtype)
    lhs = eye - alpha * d * A
    abar = np.linalg.solve(lhs, eye + (1.0 - alpha) * d * A)
    bbar = np.linalg.solve(lhs, d * B)
    return abar.astype(dtype, copy=False), bbar.astype(dtype, copy=False)


def _alpha(alpha):
    a = real_scalar(alpha, "alpha")
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha!r}")
    return a


@fill_doc
def zoh_discretize(A, B, delta, *, dense=False, workers=None):
    r"""Zero-order-hold discretisation of :math:`x' = A x + B u`.

    Parameters
    ----------
    A : array_like
        Diagonal case (default): the eigenvalues, shape (..., N), real or
        complex. With ``dense=True``: square matrices (..., N, N).
    B : array_like
        Diagonal case: broadcast against `A`. Dense: (..., N, M).
    delta : array_like
        The step, real, broadcast against `A` (diagonal) or against the
        batch dimensions of `A` and `B` (dense). A per-channel step for
        A (..., N) is delta (..., 1).
    dense : bool, optional
        Treat `A` as a dense matrix. Default False.
    %(workers)s

    Returns
    -------
    A_bar : ndarray
        :math:`e^{\Delta A}`. Diagonal case: the broadcast shape of the three
        inputs. Dense: (..., N, N). The dtype of `B_bar`, or its real
        counterpart in the diagonal case when `A` is real.
    B_bar : ndarray
        :math:`A^{-1}(e^{\Delta A} - I) B`: the broadcast shape (diagonal) or
        (..., N, M) (dense), dtype ``np.result_type(A, B, delta)``.

    Raises
    ------
    TypeError
        If an input is not numeric or `delta` is complex.
    ValueError
        If the shapes do not broadcast, or with ``dense=True`` `A` is not
        square or `B` does not have N rows.

    See Also
    --------
    bilinear_discretize
    scipy.signal.cont2discrete : the same, ``method='zoh'``, one system.

    Notes
    -----
    Diagonal case, with :math:`z = \Delta \lambda`:

    .. math::

        \bar A = e^{z}, \qquad
        \bar B = \frac{e^{z} - 1}{z} \, \Delta B
               = \frac{\operatorname{expm1}(z)}{\lambda} B ,

    with the exact limit :math:`\bar B = \Delta B` at :math:`\lambda = 0` and
    no cancellation for tiny :math:`|z|` (``expm1``; for complex
    :math:`z = x + iy`,
    :math:`\operatorname{expm1}(z) = \operatorname{expm1}(x)\cos y
    - 2\sin^2(y/2) + i e^{x} \sin y`). The kernel computes in double
    precision. Dense case: the exponential of the augmented matrix,

    .. math::

        \exp\!\left(\Delta \begin{bmatrix} A & B \\ 0 & 0 \end{bmatrix}\right)
        = \begin{bmatrix} \bar A & \bar B \\ 0 & I \end{bmatrix},

    by :func:`scipy.linalg.expm`.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import zoh_discretize
    >>> A_bar, B_bar = zoh_discretize([-1.0, 0.0], [1.0, 1.0], 0.5)
    >>> A_bar
    array([0.60653066, 1.        ])
    >>> B_bar
    array([0.39346934, 0.5       ])

    Complex eigenvalues and a per-row step:

    >>> A_bar, B_bar = zoh_discretize([-0.5 + 1j], 1.0, [[0.1], [0.2]])
    >>> A_bar.shape, A_bar.dtype
    ((2, 1), dtype('complex128'))

    Dense matrices agree with :func:`scipy.signal.cont2discrete`:

    >>> A_bar, B_bar = zoh_discretize([[0.0, 1.0], [-1.0, 0.0]], [[0.0], [1.0]], 0.1, dense=True)
    >>> np.round(A_bar, 6)
    array([[ 0.995004,  0.099833],
           [-0.099833,  0.995004]])
    """
    A, B, delta, dtype = _prepare(A, B, delta)
    if dense:
        return _dense_zoh(A, B, delta, dtype)
    return _diagonal("zoh", A, B, delta, dtype, 0.0, workers)


@fill_doc
def bilinear_discretize(A, B, delta, alpha=0.5, *, dense=False, workers=None):
    r"""Generalised bilinear discretisation of :math:`x' = A x + B u`.

    Parameters
    ----------
    A : array_like
        Diagonal case (default): the eigenvalues, shape (..., N), real or
        complex. With ``dense=True``: square matrices (..., N, N).
    B : array_like
        Diagonal case: broadcast against `A`. Dense: (..., N, M).
    delta : array_like
        The step, real, broadcast against `A` (diagonal) or against the
        batch dimensions of `A` and `B` (dense).
    alpha : float, optional
        In [0, 1]: 0 forward Euler, 0.5 Tustin (default), 1 backward Euler.
    dense : bool, optional
        Treat `A` as a dense matrix. Default False.
    %(workers)s

    Returns
    -------
    A_bar : ndarray
        Diagonal case: the broadcast shape of the inputs. Dense: (..., N, N).
        The dtype of `B_bar`, or its real counterpart in the diagonal case
        when `A` is real.
    B_bar : ndarray
        The broadcast shape (diagonal) or (..., N, M) (dense), dtype
        ``np.result_type(A, B, delta)``.

    Raises
    ------
    TypeError
        If an input is not numeric, `delta` is complex or `alpha` is not a
        real number.
    ValueError
        If `alpha` is outside [0, 1], the shapes do not broadcast, or with
        ``dense=True`` `A` is not square or `B` does not have N rows.

    See Also
    --------
    zoh_discretize
    scipy.signal.cont2discrete : the same, ``method='gbt'`` (``'bilinear'``
        for alpha 0.5, ``'euler'``, ``'backward_diff'``).

    Notes
    -----
    .. math::

        \bar A = (I - \alpha \Delta A)^{-1} (I + (1 - \alpha) \Delta A),
        \qquad \bar B = (I - \alpha \Delta A)^{-1} \Delta B ,

    elementwise in the diagonal case (in double precision), by
    :func:`numpy.linalg.solve` in the dense case. A singular
    :math:`I - \alpha \Delta A` gives infinities (diagonal) or
    ``LinAlgError`` (dense).

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> from zilla_muf import bilinear_discretize
    >>> A_bar, B_bar = bilinear_discretize([-1.0], [1.0], 0.5)
    >>> A_bar, B_bar
    (array([0.6]), array([0.4]))
    >>> bilinear_discretize([-1.0], [1.0], 0.5, alpha=0.0)[0]
    array([0.5])
    """
    alpha = _alpha(alpha)
    A, B, delta, dtype = _prepare(A, B, delta)
    if dense:
        return _dense_bilinear(A, B, delta, alpha, dtype)
    return _diagonal("bilinear", A, B, delta, dtype, alpha, workers)
