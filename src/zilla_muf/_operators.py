"""The structured matrices as :class:`scipy.sparse.linalg.LinearOperator`.

Each operator stands for ONE matrix (1-D parameters) and runs the fast
kernels of :mod:`zilla_muf.structured` for products with it and with its
conjugate transpose; no dense matrix is ever formed. The conjugate
transposes are products of the same kind:

- semiseparable: :math:`M^T` is the semiseparable matrix of the reversed
  sequence with `B` and `C` exchanged and the decays shifted by one step;
- causal Toeplitz: :math:`M^H v` is the causal convolution of the reversed
  `v` with the conjugate kernel, reversed;
- Cauchy: :math:`(M^H v)_i = -\\overline{\\sum_k \\bar v_k / (\\lambda_i - z_k)}`,
  a Cauchy product with nodes and poles exchanged;
- Vandermonde: :math:`M^H v` is :func:`~zilla_muf.vandermonde_rmatvec` of
  the conjugates.

This module is public through :mod:`zilla_muf.structured`.
"""

import numpy as np

from ._validation import as_array, positive_int, result_dtype

__all__ = ["cauchy_operator", "semiseparable_operator", "toeplitz_operator",
           "vandermonde_operator"]


def _structured():
    from . import structured

    return structured


def _operator(shape, dtype, matvec, rmatvec):
    """A LinearOperator from batched kernels ``matvec(X) -> Y`` on rows.

    `matvec` and `rmatvec` take vectors along the last axis (any leading
    dimensions), so a matrix of columns goes through in one call.
    """
    from scipy.sparse.linalg import LinearOperator

    def mv(x):
        return matvec(np.asarray(x).reshape(-1))

    def rmv(v):
        return rmatvec(np.asarray(v).reshape(-1))

    def mm(X):
        return matvec(np.asarray(X).T).T

    def rmm(V):
        return rmatvec(np.asarray(V).T).T

    return LinearOperator(shape, matvec=mv, rmatvec=rmv, matmat=mm, rmatmat=rmm,
                          dtype=dtype)


def _vector(x, name):
    x = as_array(x, name)
    if x.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {x.shape}")
    return x


def _conj(x):
    return x.conj() if x.dtype.kind == "c" else x


def semiseparable_operator(a, B, C):
    r"""The semiseparable matrix of :func:`~zilla_muf.semiseparable_matvec` as an operator.

    Parameters
    ----------
    a : array_like
        Decays :math:`a_i`, shape (n,), float32, float64, complex64 or
        complex128.
    B : array_like
        Input projections :math:`B_j`, shape (n, r).
    C : array_like
        Output projections :math:`C_i`, shape (n, r).

    Returns
    -------
    op : scipy.sparse.linalg.LinearOperator
        Shape (n, n), dtype the result dtype of the inputs. Its `matvec`,
        `rmatvec` (conjugate transpose), `matmat`, `rmatmat` and `.H` each
        cost :math:`O(n r)` per vector.

    Raises
    ------
    TypeError
        If an input is not numeric.
    ValueError
        If `a` is not 1-D or `B`, `C` are not of shape (n, r).

    See Also
    --------
    zilla_muf.semiseparable_matvec, zilla_muf.semiseparable_matrix

    Notes
    -----
    :math:`M_{ij} = (C_i \cdot B_j) \prod_{k=j+1}^{i} a_k` for :math:`j \le i`.
    The transpose is the same kind of matrix on the reversed sequence:
    with :math:`i' = n-1-i`,
    :math:`(M^T u)_{n-1-j'} = \sum_{i' \le j'} (B_{n-1-j'} \cdot C_{n-1-i'})
    \prod_{k'=i'+1}^{j'} a_{n-k'} \, u_{n-1-i'}`, a semiseparable product
    with `B` and `C` exchanged and reversed and the decays reversed and
    shifted by one step; :math:`M^H v = \overline{M^T \bar v}`.

    .. versionadded:: 0.2.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf.structured import semiseparable_operator
    >>> op = semiseparable_operator([0.5, 0.5, 0.5], np.ones((3, 1)), np.ones((3, 1)))
    >>> op @ np.array([1.0, 0.0, 0.0])
    array([1.  , 0.5 , 0.25])
    >>> op.H @ np.array([0.0, 0.0, 1.0])
    array([0.25, 0.5 , 1.  ])
    """
    s = _structured()
    a = _vector(a, "a")
    B = as_array(B, "B")
    C = as_array(C, "C")
    n = a.shape[0]
    if B.ndim != 2 or B.shape[0] != n:
        raise ValueError(f"`B` must have shape (n, r) = ({n}, r), got shape {B.shape}")
    if C.shape != B.shape:
        raise ValueError(f"`C` must have the shape of `B`, {B.shape}, got {C.shape}")
    dtype = result_dtype(a=a, B=B, C=C)
    a = a.astype(dtype)
    B = B.astype(dtype)
    C = C.astype(dtype)
    # the transpose's decays: a' = (., a_{n-1}, ..., a_1)
    a_t = np.concatenate([np.zeros(min(n, 1), dtype), a[::-1][:-1]])
    B_t = np.ascontiguousarray(C[::-1])
    C_t = np.ascontiguousarray(B[::-1])

    def matvec(x):
        return s.semiseparable_matvec(a, B, C, x)

    def rmatvec(v):
        v = np.flip(_conj(np.asarray(v)), -1)
        return _conj(np.flip(s.semiseparable_matvec(a_t, B_t, C_t, v), -1))

    return _operator((n, n), dtype, matvec, rmatvec)


def toeplitz_operator(kernel, n):
    r"""The causal Toeplitz matrix of :func:`~zilla_muf.toeplitz_matvec` as an operator.

    Parameters
    ----------
    kernel : array_like
        The first column :math:`k`, shape (K,), float32, float64, complex64
        or complex128. Shorter than `n`: zero-extended; longer: cut.
    n : int
        The order of the matrix.

    Returns
    -------
    op : scipy.sparse.linalg.LinearOperator
        Shape (n, n); products by :func:`~zilla_muf.toeplitz_matvec`
        (direct or FFT, :math:`O(n \log n)` at most).

    Raises
    ------
    TypeError
        If `kernel` is not numeric.
    ValueError
        If `kernel` is not 1-D or `n` is not a positive integer.

    See Also
    --------
    zilla_muf.toeplitz_matvec, scipy.linalg.toeplitz

    Notes
    -----
    :math:`M_{ij} = k_{i-j}` for :math:`j \le i`. The conjugate transpose is
    the anti-causal convolution with :math:`\bar k`:
    :math:`(M^H v)_j = \sum_{i \ge j} \bar k_{i-j} v_i`, computed as the
    causal one on the reversed `v`, reversed.

    .. versionadded:: 0.2.0

    Examples
    --------
    >>> from zilla_muf.structured import toeplitz_operator
    >>> op = toeplitz_operator([1.0, 2.0], 3)
    >>> op @ np.array([1.0, 1.0, 1.0])
    array([1., 3., 3.])
    >>> op.H @ np.array([1.0, 1.0, 1.0])
    array([3., 3., 1.])
    """
    s = _structured()
    k = _vector(kernel, "kernel")
    n = positive_int(n, "n")
    dtype = result_dtype(kernel=k)
    k = k.astype(dtype)
    kc = _conj(k)

    def matvec(x):
        return s.toeplitz_matvec(k, x)

    def rmatvec(v):
        return np.flip(s.toeplitz_matvec(kc, np.flip(np.asarray(v), -1)), -1)

    return _operator((n, n), dtype, matvec, rmatvec)


def cauchy_operator(nodes, poles):
    r"""The Cauchy matrix :math:`M_{ki} = 1/(z_k - \lambda_i)` as an operator.

    Parameters
    ----------
    nodes : array_like
        The points :math:`z_k`, shape (L,), real or complex.
    poles : array_like
        The poles :math:`\lambda_i`, shape (N,).

    Returns
    -------
    op : scipy.sparse.linalg.LinearOperator
        Shape (L, N), complex; products by :func:`~zilla_muf.cauchy_matvec`,
        :math:`O(L N)` per vector.

    Raises
    ------
    TypeError
        If an input is not numeric.
    ValueError
        If an input is not 1-D.

    See Also
    --------
    zilla_muf.cauchy_matvec

    Notes
    -----
    :math:`(M^H v)_i = \sum_k \bar v_k / (\bar z_k - \bar\lambda_i)
    = -\overline{\sum_k \bar v_k / (\lambda_i - z_k)}`: a Cauchy product
    with the nodes and poles exchanged.

    .. versionadded:: 0.2.0

    Examples
    --------
    >>> from zilla_muf.structured import cauchy_operator
    >>> op = cauchy_operator([2.0, 3.0], [1.0])
    >>> op @ np.array([1.0])
    array([1. +0.j, 0.5+0.j])
    >>> op.H @ np.array([1.0, 1.0])
    array([1.5+0.j])
    """
    s = _structured()
    z = _vector(nodes, "nodes")
    p = _vector(poles, "poles")
    dtype = np.result_type(result_dtype(nodes=z, poles=p), np.complex64)
    z = z.astype(dtype)
    p = p.astype(dtype)

    def matvec(x):
        return s.cauchy_matvec(z, p, x)

    def rmatvec(v):
        v = np.asarray(v, dtype=np.result_type(v, dtype))
        return -s.cauchy_matvec(p, z, v.conj()).conj()

    return _operator((z.shape[0], p.shape[0]), dtype, matvec, rmatvec)


def vandermonde_operator(poles, length):
    r"""The Vandermonde matrix :math:`M_{li} = \lambda_i^l` as an operator.

    Parameters
    ----------
    poles : array_like
        The poles :math:`\lambda_i`, shape (N,), real or complex.
    length : int
        The number of rows L (powers 0 to L - 1).

    Returns
    -------
    op : scipy.sparse.linalg.LinearOperator
        Shape (L, N), complex; products by
        :func:`~zilla_muf.vandermonde_matvec` and
        :func:`~zilla_muf.vandermonde_rmatvec`, :math:`O(L N)` per vector,
        with powers formed as accurately as there.

    Raises
    ------
    TypeError
        If `poles` is not numeric.
    ValueError
        If `poles` is not 1-D or `length` is not a positive integer.

    See Also
    --------
    zilla_muf.vandermonde_matvec, zilla_muf.vandermonde_rmatvec

    Notes
    -----
    :math:`(M x)_l = \sum_i \lambda_i^l x_i` and
    :math:`(M^H v)_i = \overline{\sum_l \lambda_i^l \bar v_l}`.

    .. versionadded:: 0.2.0

    Examples
    --------
    >>> from zilla_muf.structured import vandermonde_operator
    >>> op = vandermonde_operator([0.5, 2.0], 3)
    >>> (op @ np.array([1.0, 1.0])).real
    array([2.  , 2.5 , 4.25])
    """
    s = _structured()
    p = _vector(poles, "poles")
    length = positive_int(length, "length")
    dtype = np.result_type(result_dtype(poles=p), np.complex64)
    p = p.astype(dtype)

    def matvec(x):
        return s.vandermonde_matvec(p, x, length)

    def rmatvec(v):
        v = np.asarray(v, dtype=np.result_type(v, dtype))
        return s.vandermonde_rmatvec(p, v.conj()).conj()

    return _operator((length, p.shape[0]), dtype, matvec, rmatvec)
