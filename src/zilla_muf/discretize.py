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


# Gradients
#
# Diagonal (z = lambda delta, elementwise; delta is real):
#   ZOH       dAbar/dlambda = delta e^z            dAbar/ddelta = lambda e^z
#             dBbar/dlambda = delta^2 B psi(z)     dBbar/ddelta = e^z B
#             dBbar/dB = (e^z - 1)/lambda,  psi(z) = (z e^z - e^z + 1)/z^2
#   bilinear  with w = 1/(1 - alpha z): dAbar/dlambda = delta w^2,
#             dAbar/ddelta = lambda w^2, dBbar/dlambda = alpha delta^2 B w^2,
#             dBbar/ddelta = B w^2, dBbar/dB = delta w
# and g = conj(d out / d in) c summed over both outputs.
# Dense ZOH: the adjoint of the Frechet derivative of expm at X is the
# Frechet derivative at X^H, so with X = delta [[A, B], [0, 0]] and
# G = [[cA, cB], [0, 0]], gX = L_exp(X^H, G) (by _expm_frechet_batch, on
# the (N + M) square matrices of the batch); gA, gB are delta times its
# blocks and gdelta = Re <[[A, B], [0, 0]], gX>.
# Dense bilinear: with P = I - alpha delta A, S_A = P^-H cA, S_B = P^-H cB,
# G_W = (1 - alpha) S_A + alpha (S_A Abar^H + S_B Bbar^H) is the gradient of
# W = delta A; gA = delta G_W, gB = delta S_B,
# gdelta = Re(<A, G_W> + <B, S_B>).

from . import _vjp_kernels  # noqa: E402
from ._vjp import defvjp  # noqa: E402


def _psi(z):
    """(z e^z - e^z + 1) / z^2 without cancellation (1/2 at z = 0)."""
    z = np.asarray(z)
    small = np.abs(z) < 1
    zs = np.where(small, z, 0)
    # sum_{k>=2} (k - 1) z^(k-2) / k!, to z^18 (error < 1e-18 for |z| < 1)
    series = np.zeros_like(zs)
    for k in range(20, 1, -1):
        series = series * zs + (k - 1) / math.factorial(k)
    zb = np.where(small, 1, z)
    with np.errstate(over="ignore", invalid="ignore"):
        big = (zb * np.exp(zb) - np.expm1(zb)) / (zb * zb)
    return np.where(small, series, big)


def _diag_grads(kind, args, Abar, Bbar, alpha):
    cd = np.result_type(Abar, Bbar)
    lam = np.asarray(args["A"], dtype=np.result_type(args["A"], Abar.dtype))
    B = np.asarray(args["B"], dtype=Bbar.dtype)
    d = np.asarray(args["delta"], dtype=np.real(np.zeros(0, cd)).dtype)

    def backward(ct):
        cA, cB = ct
        if cd.kind == "c":
            return _diag_grads_compiled(kind, args, lam, B, d, cA, cB, alpha)
        if kind == "zoh":
            e = Abar
            z = lam * d
            F = zoh_discretize(lam, np.ones((), Bbar.dtype), d,
                               workers=args["workers"])[1]
            dA_l, dA_d = d * e, lam * e
            dB_l, dB_d, dB_B = d * d * B * _psi(z), e * B, F
        else:
            w = 1.0 / (1.0 - alpha * lam * d)
            w2 = w * w
            dA_l, dA_d = d * w2, lam * w2
            dB_l, dB_d, dB_B = alpha * d * d * B * w2, B * w2, d * w
        gA = np.conj(dA_l) * cA + np.conj(dB_l) * cB
        gd = np.real(np.conj(dA_d) * cA) + np.real(np.conj(dB_d) * cB)
        return {"A": gA, "B": np.conj(dB_B) * cB, "delta": gd}

    return backward


def _diag_grads_compiled(kind, args, lam, B, d, cA, cB, alpha):
    """The complex diagonal pullbacks in one compiled elementwise pass
    (_vjp_kernels.diag_discretize_backward), in complex128. A delta that
    broadcasts along the last axis only (shape (..., 1)) is passed as it is
    and gets its gradient summed by the kernel."""
    shape = np.broadcast_shapes(lam.shape, B.shape, d.shape, np.shape(cA),
                                np.shape(cB))

    def flat(v, dtype, to=shape):
        v = np.broadcast_to(np.asarray(v, dtype=dtype), to)
        return np.ascontiguousarray(v).reshape(-1)

    c128 = np.complex128
    gA = np.empty(shape, c128)
    gB = np.empty(shape, c128)
    dshape = shape
    if (len(shape) >= 1 and shape[-1] > 1 and d.ndim >= 1 and d.shape[-1] == 1
            and d.shape == shape[len(shape) - d.ndim:-1] + (1,)):
        dshape = shape[:-1] + (1,)
    gd = np.empty(dshape, np.float64)
    def re(v):
        return flat(v, c128).view(np.float64)

    _vjp_kernels.diag_discretize_backward(
        kind == "zoh", alpha, re(lam), re(B), flat(d, np.float64, dshape),
        re(cA), re(cB), gA.reshape(-1).view(np.float64),
        gB.reshape(-1).view(np.float64), gd.reshape(-1),
        resolve_workers(args["workers"]))
    return {"A": gA, "B": gB, "delta": gd}


def _dense_operands(args, dtype):
    A = np.asarray(args["A"])
    B = np.asarray(args["B"])
    d = np.asarray(args["delta"])
    batch = np.broadcast_shapes(A.shape[:-2], B.shape[:-2], d.shape)
    n, m = A.shape[-1], B.shape[-1]
    A = np.broadcast_to(A, batch + (n, n)).astype(dtype)
    B = np.broadcast_to(B, batch + (n, m)).astype(dtype)
    d = np.broadcast_to(d, batch).astype(np.float64)
    return A, B, d, batch, n, m


# The Frechet derivative of expm for a batch: the scaling and squaring
# algorithm of Al-Mohy and Higham (2009), in which the Pade approximant
# r_m = q_m^-1 p_m (p_m(A) = V + U, q_m(A) = V - U, U the odd and V the even
# terms) and its derivative L_r(A, E) are formed together from the powers
# A^2k and their derivatives M_2k = L_(x^2k)(A, E); the squarings then carry
# (R, L) -> (R^2, R L + L R). The degree m and the scaling 2^-s are those
# of the largest 1-norm in the batch, so that every step is one stacked
# matrix product (n x n each, not the 2n x 2n block form).

def _pade_exp(m):
    return tuple(math.factorial(2 * m - j) * math.factorial(m)
                 / (math.factorial(2 * m) * math.factorial(j) * math.factorial(m - j))
                 for j in range(m + 1))


_PADE = {m: _pade_exp(m) for m in (3, 5, 7, 9, 13)}
# the 1-norm bounds up to which degree m meets double precision
_THETA = {3: 1.495585217958292e-2, 5: 2.539398330063230e-1,
          7: 9.504178996162932e-1, 9: 2.097847961257068e0,
          13: 5.371920351148152e0}


def _expm_frechet_batch(A, E):
    """L_exp(A, E) for stacks of square matrices (..., n, n)."""
    n = A.shape[-1]
    if A.size == 0:
        return np.zeros(np.broadcast_shapes(A.shape, E.shape), A.dtype)
    eye = np.eye(n, dtype=A.dtype)
    norm = float(np.max(np.sum(np.abs(A), axis=-2)))
    s = 0
    for m in (3, 5, 7, 9, 13):
        if norm <= _THETA[m]:
            break
    if m == 13 and np.isfinite(norm) and norm > _THETA[13]:
        s = int(np.ceil(np.log2(norm / _THETA[13])))
        A = A * 2.0 ** -s
        E = E * 2.0 ** -s
    b = _PADE[m]
    A2 = A @ A
    M2 = A @ E + E @ A
    if m < 13:
        P = [eye, A2]
        M = [None, M2]
        for _ in range(2, (m - 1) // 2 + 1):
            # A^2k = A^(2k-2) A^2, M_2k = A^(2k-2) M_2 + M_(2k-2) A^2
            M.append(P[-1] @ M2 + M[-1] @ A2)
            P.append(P[-1] @ A2)
        W = sum(b[2 * k + 1] * P[k] for k in range(len(P)))
        V = sum(b[2 * k] * P[k] for k in range(len(P)))
        Lw = sum(b[2 * k + 1] * M[k] for k in range(1, len(P)))
        Lv = sum(b[2 * k] * M[k] for k in range(1, len(P)))
    else:
        A4 = A2 @ A2
        A6 = A4 @ A2
        M4 = A2 @ M2 + M2 @ A2
        M6 = A4 @ M2 + M4 @ A2
        W1 = b[13] * A6 + b[11] * A4 + b[9] * A2
        W2 = b[7] * A6 + b[5] * A4 + b[3] * A2 + b[1] * eye
        Z1 = b[12] * A6 + b[10] * A4 + b[8] * A2
        Z2 = b[6] * A6 + b[4] * A4 + b[2] * A2 + b[0] * eye
        W = A6 @ W1 + W2
        V = A6 @ Z1 + Z2
        Lw = (A6 @ (b[13] * M6 + b[11] * M4 + b[9] * M2) + M6 @ W1
              + (b[7] * M6 + b[5] * M4 + b[3] * M2))
        Lv = (A6 @ (b[12] * M6 + b[10] * M4 + b[8] * M2) + M6 @ Z1
              + (b[6] * M6 + b[4] * M4 + b[2] * M2))
    U = A @ W
    Lu = A @ Lw + E @ W
    # R = q^-1 p and L = q^-1 (Lu + Lv + (Lu - Lv) R): one solve
    S = np.linalg.solve(V - U, np.concatenate([U + V, Lu + Lv, Lu - Lv], axis=-1))
    R = S[..., :n]
    L = S[..., n:2 * n] + S[..., 2 * n:] @ R
    for _ in range(s):
        L = R @ L + L @ R
        R = R @ R
    return L


def _dense_zoh_grads(args, dtype):
    def backward(ct):
        cA, cB = ct
        A, B, d, batch, n, m = _dense_operands(args, dtype)
        k = n + m
        dd = d[..., None, None]
        # gX = L_exp(X^H, G), X = delta [[A, B], [0, 0]], G = [[cA, cB], [0, 0]]
        XH = np.zeros(batch + (k, k), dtype)
        XH[..., :n, :n] = np.conj(np.swapaxes(A, -1, -2)) * dd
        XH[..., n:, :n] = np.conj(np.swapaxes(B, -1, -2)) * dd
        G = np.zeros(batch + (k, k), dtype)
        G[..., :n, :n] = cA
        G[..., :n, n:] = cB
        gX = _expm_frechet_batch(XH, G)[..., :n, :]
        gA = dd * gX[..., :n]
        gB = dd * gX[..., n:]
        gd = np.real(np.sum(np.conj(A) * gX[..., :n], axis=(-2, -1))
                     + np.sum(np.conj(B) * gX[..., n:], axis=(-2, -1)))
        return {"A": gA, "B": gB, "delta": gd}

    return backward


def _dense_bilinear_grads(args, dtype, Abar, Bbar, alpha):
    def backward(ct):
        cA, cB = ct
        A, B, d, batch, n, m = _dense_operands(args, dtype)
        dd = d[..., None, None]
        P = np.eye(n, dtype=dtype) - alpha * dd * A
        PH = np.conj(np.swapaxes(P, -1, -2))
        S = np.linalg.solve(PH, np.concatenate([cA, cB], axis=-1))
        SA, SB = S[..., :n], S[..., n:]
        H = lambda x: np.conj(np.swapaxes(x, -1, -2))  # noqa: E731
        GW = (1 - alpha) * SA + alpha * (SA @ H(Abar) + SB @ H(Bbar))
        gd = np.real(np.sum(np.conj(A) * GW, axis=(-2, -1))
                     + np.sum(np.conj(B) * SB, axis=(-2, -1)))
        return {"A": dd * GW, "B": dd * SB, "delta": gd}

    return backward


@defvjp(zoh_discretize, "A", "B", "delta")
def _zoh_discretize_vjp(args):
    # keeps the inputs and the outputs
    out = zoh_discretize(**args)
    Abar, Bbar = out
    if args["dense"]:
        return out, _dense_zoh_grads(args, Bbar.dtype)
    return out, _diag_grads("zoh", args, Abar, Bbar, 0.0)


@defvjp(bilinear_discretize, "A", "B", "delta")
def _bilinear_discretize_vjp(args):
    # keeps the inputs and the outputs
    out = bilinear_discretize(**args)
    Abar, Bbar = out
    alpha = _alpha(args["alpha"])
    if args["dense"]:
        return out, _dense_bilinear_grads(args, Bbar.dtype, Abar, Bbar, alpha)
    return out, _diag_grads("bilinear", args, Abar, Bbar, alpha)
