r"""Products with structured matrices, without forming them.

The layers of state space models are products with matrices that have
:math:`O(n)` parameters but :math:`n^2` entries. This module computes those
products in :math:`O(n)` or :math:`O(n \log n)` work and memory:

- :func:`~zilla_muf.semiseparable_matvec` -- a (1-)semiseparable matrix of
  rank-`r` blocks (Mamba-2's SSD), by the recurrence it encodes;
  :func:`~zilla_muf.semiseparable_matrix` forms the same matrix densely, for
  checking and teaching;
- :func:`~zilla_muf.toeplitz_matvec` -- a causal Toeplitz matrix (a long
  convolution), directly or by FFT;
- :func:`~zilla_muf.cauchy_matvec` -- a Cauchy matrix (S4's kernel
  evaluation at the roots of unity);
- :func:`~zilla_muf.vandermonde_matvec` and
  :func:`~zilla_muf.vandermonde_rmatvec` -- a Vandermonde matrix and its
  transpose (S4D's kernel from diagonal poles), with powers that stay
  accurate at lengths of :math:`10^5` and more.
"""

import operator

import numpy as np

from . import _structured
from ._docs import fill_doc
from ._validation import (
    as_array,
    at_least_1d,
    broadcast_shapes,
    complex_dtype,
    positive_int,
    real_dtype,
    resolve_workers,
    result_dtype,
)
from .convolution import _conv_operands, _fft_causal
from .scan import chunked_scan, sequential_scan

__all__ = [
    "cauchy_matvec",
    "semiseparable_matrix",
    "semiseparable_matvec",
    "toeplitz_matvec",
    "vandermonde_matvec",
    "vandermonde_rmatvec",
]

_TOEPLITZ_METHODS = ("auto", "direct", "fft")
# Output samples per task of the direct Toeplitz kernel (stays in L1).
_TILE = 1024
# "auto" takes the direct method when its multiply-adds are fewer than
# _DIRECT_BREAK[dtype.char] * (1 + _THREAD_GAIN * (t - 1)) * m log2(m),
# m = n + K - 1, t the threads the direct kernel can use: constants fitted on
# three runs of bench/bench_structured.py's sweep of kernel lengths (64 x 8192
# float32, 8 x 32768 float64, 64 x 4096 complex64; workers 1 and 2), where a
# second thread sped the direct kernel up more than the FFTs of these lengths.
# Near the crossover the two methods' times varied by more than 20% from run
# to run, which bounds how well any constant can do there. The complex
# constants were refit (one sweep of 64 x 4096, kernel lengths 12-32) when
# the direct kernel began multiplying complex pairs in place of four real
# products.
_DIRECT_BREAK = {"f": 3.5, "d": 3.5, "F": 1.3, "D": 1.9}
_THREAD_GAIN = 0.4
# Smallest chunk (steps) of the semiseparable kernel worth a carry.
_MIN_SS_CHUNK = 256
# Powers per task of the Vandermonde kernels. Multiples of the kernels'
# 256-power blocks, so that the split never changes a result.
_VDM_BLOCK = 256
_VDM_RSPLIT = 8192


def _row_map(arg_lead, lead):
    """Index of the row of an argument used by each output row.

    An argument whose leading shape `arg_lead` broadcasts to `lead` is passed
    to a kernel once per distinct row (C order); output row ``r`` reads row
    ``map[r]``.
    """
    idx = np.arange(int(np.prod(arg_lead, dtype=np.int64)), dtype=np.intp)
    idx = idx.reshape(arg_lead)
    return np.ascontiguousarray(np.broadcast_to(idx, lead)).reshape(-1)


def _rows(arr, dtype):
    """`arr` as C-contiguous 2-D ``(rows, length)`` of `dtype`."""
    arr = np.ascontiguousarray(arr, dtype=dtype)
    return arr.reshape(int(np.prod(arr.shape[:-1], dtype=np.int64)), arr.shape[-1])


def _interleaved(arr2d):
    """A complex (rows, m) array as its real (rows, 2m) view."""
    return arr2d.view(real_dtype(arr2d.dtype))


# ---------------------------------------------------------------------------
# Semiseparable
# ---------------------------------------------------------------------------

def _semiseparable_operands(a, B, C, x=None):
    a = as_array(a, "a")
    B = as_array(B, "B")
    C = as_array(C, "C")
    x = None if x is None else as_array(x, "x")
    dtype = result_dtype(a=a, B=B, C=C, x=x)
    at_least_1d(a, "a")
    if B.ndim < 2:
        raise ValueError(f"`B` must have shape (..., n, r), got shape {B.shape}")
    if C.ndim < 2:
        raise ValueError(f"`C` must have shape (..., n, r), got shape {C.shape}")
    n = a.shape[-1]
    if B.shape[-2] != n:
        raise ValueError(
            f"`B` must have shape (..., n, r) with n = {n} (the length of `a`), "
            f"got shape {B.shape}"
        )
    if C.shape[-2:] != B.shape[-2:]:
        raise ValueError(
            f"`C` must have shape (..., n, r) = (..., {n}, {B.shape[-1]}) like "
            f"`B`, got shape {C.shape}"
        )
    shapes = dict(a=a.shape[:-1], B=B.shape[:-2], C=C.shape[:-2])
    if x is not None:
        at_least_1d(x, "x")
        if x.shape[-1] != n:
            raise ValueError(
                f"`x` must have shape (..., n) with n = {n} (the length of `a`), "
                f"got shape {x.shape}"
            )
        shapes["x"] = x.shape[:-1]
    lead = broadcast_shapes(**shapes)
    return a, B, C, x, lead, dtype


def _semiseparable_chunk(rows, n, nthreads):
    """Default chunk: whole rows when they keep every thread busy."""
    if nthreads == 1 or rows >= 2 * nthreads:
        return max(n, 1)
    pieces = -(-4 * nthreads // max(rows, 1))
    return max(_MIN_SS_CHUNK, -(-n // pieces))


@fill_doc
def semiseparable_matvec(a, B, C, x, *, chunk_size=None, workers=None):
    r"""Product with a semiseparable matrix, by its recurrence.

    Computes :math:`y = M x` for the matrix of :func:`semiseparable_matrix`
    in :math:`O(n r)` work, without forming `M`.

    Parameters
    ----------
    a : array_like
        Decays :math:`a_i`, shape (..., n). float32, float64, complex64 or
        complex128 (integers and bools are promoted to float64).
    B : array_like
        Input projections :math:`B_i`, shape (..., n, r).
    C : array_like
        Output projections :math:`C_i`, shape (..., n, r).
    x : array_like
        The vector, shape (..., n). The leading dimensions of all four
        arguments broadcast.
    chunk_size : int, optional
        Steps per chunk along `n` (see Notes). Default: whole rows when the
        leading dimensions give every thread work, otherwise a few chunks
        per thread.
    %(workers)s

    Returns
    -------
    y : ndarray
        Shape (..., n) (the broadcast leading dimensions), in the result
        dtype of the inputs.

    Raises
    ------
    TypeError
        If an input is not numeric.
    ValueError
        If the lengths `n` or ranks `r` disagree, the leading dimensions do
        not broadcast, `chunk_size` is not a positive integer or `workers`
        is 0.

    See Also
    --------
    semiseparable_matrix : the dense matrix.
    chunked_scan : the recurrence it runs on.

    Notes
    -----
    With states :math:`h_i \in \mathbb{R}^r` (or :math:`\mathbb{C}^r`),

    .. math::

        h_i = a_i \, h_{i-1} + B_i \, x_i , \quad h_{-1} = 0 , \qquad
        y_i = C_i \cdot h_i = \sum_{j \le i} (C_i \cdot B_j)
              \Big(\prod_{k=j+1}^{i} a_k\Big) x_j ,

    which is the product with the lower-triangular matrix :math:`M`.

    Real data runs in one compiled pass that updates the :math:`r` state
    channels and contracts them with :math:`C_i` step by step, chunked along
    :math:`n` like :func:`chunked_scan`: each chunk from a zero state in
    parallel, a carry pass over the chunk ends, then each chunk adds
    :math:`\big(\prod_{u \le t} a_u\big) \, C_t \cdot h_{\text{in}}`
    for the state :math:`h_{\text{in}}` entering it. Complex data scans the
    channels with :func:`chunked_scan` (time-major, channels contiguous),
    then contracts with :math:`C_i`. The dot product is not conjugated.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import semiseparable_matvec, semiseparable_matrix
    >>> rng = np.random.default_rng(0)
    >>> a = rng.uniform(0.5, 1.0, 6)
    >>> B = rng.standard_normal((6, 2))
    >>> C = rng.standard_normal((6, 2))
    >>> x = rng.standard_normal(6)
    >>> y = semiseparable_matvec(a, B, C, x)
    >>> bool(np.allclose(y, semiseparable_matrix(a, B, C) @ x))
    True

    With constant decay 1 and :math:`B_i = C_i = 1` (r = 1) the matrix is the
    lower triangle of ones: a cumulative sum.

    >>> semiseparable_matvec(np.ones(4), np.ones((4, 1)), np.ones((4, 1)),
    ...                      [1.0, 2.0, 3.0, 4.0])
    array([ 1.,  3.,  6., 10.])
    """
    a, B, C, x, lead, dtype = _semiseparable_operands(a, B, C, x)
    n, r = B.shape[-2:]
    if n == 0 or r == 0:
        positive_int(chunk_size, "chunk_size", allow_none=True)
        resolve_workers(workers)
        return np.zeros(lead + (n,), dtype=dtype)
    if dtype.kind == "f":
        nthreads = resolve_workers(workers)
        chunk_size = positive_int(chunk_size, "chunk_size", allow_none=True)
        rows = int(np.prod(lead, dtype=np.int64))
        if chunk_size is None:
            chunk_size = _semiseparable_chunk(rows, n, nthreads)
        # each argument once per distinct row, with its row map
        args = []
        for arr, tail, width in ((a, 1, n), (B, 2, n * r), (C, 2, n * r), (x, 1, n)):
            arr_lead = arr.shape[:-tail]
            nrow = int(np.prod(arr_lead, dtype=np.int64))
            args.append(np.ascontiguousarray(arr, dtype=dtype).reshape(nrow, width))
            args.append(_row_map(arr_lead, lead))
        out = np.empty((rows, n), dtype=dtype)
        _structured.semiseparable(*args, out, r, chunk_size, nthreads)
        return out.reshape(lead + (n,))
    # complex: the scan of the r channels, then the contraction with C;
    # h has the broadcast leading dimensions of a, B and x; C joins in einsum
    b = np.multiply(B, x[..., None], dtype=dtype)
    h = chunked_scan(np.asarray(a, dtype=dtype)[..., None], b, axis=-2,
                     chunk_size=chunk_size, workers=workers)
    return np.einsum("...nr,...nr->...n", np.asarray(C, dtype=dtype), h)


def semiseparable_matrix(a, B, C):
    r"""The dense semiseparable matrix of decays `a` and projections `B`, `C`.

    Parameters
    ----------
    a : array_like
        Decays :math:`a_i`, shape (..., n), float32, float64, complex64 or
        complex128.
    B : array_like
        Input projections :math:`B_j`, shape (..., n, r).
    C : array_like
        Output projections :math:`C_i`, shape (..., n, r). The leading
        dimensions of the three arguments broadcast.

    Returns
    -------
    M : ndarray
        Shape (..., n, n), lower triangular, in the result dtype.

    Raises
    ------
    TypeError
        If an input is not numeric.
    ValueError
        If the lengths `n` or ranks `r` disagree or the leading dimensions
        do not broadcast.

    See Also
    --------
    semiseparable_matvec : the product with `M` in :math:`O(n r)`.

    Notes
    -----
    .. math::

        M_{ij} = (C_i \cdot B_j) \prod_{k=j+1}^{i} a_k \quad (j \le i), \qquad
        M_{ij} = 0 \quad (j > i).

    The decay products are running products along each column (the
    recurrence :math:`L_{ij} = a_i L_{i-1,j}`, :math:`L_{jj} = 1`), never
    ratios of cumulative products: no cancellation, no overflow of an
    intermediate product, and a zero decay gives exact zeros. Work and
    memory are :math:`O(n^2)`; use it for checking and teaching.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import semiseparable_matrix
    >>> semiseparable_matrix([0.5, 0.5, 0.5], np.ones((3, 1)), np.ones((3, 1)))
    array([[1.  , 0.  , 0.  ],
           [0.5 , 1.  , 0.  ],
           [0.25, 0.5 , 1.  ]])
    """
    a, B, C, _, lead, dtype = _semiseparable_operands(a, B, C)
    n = a.shape[-1]
    a = np.asarray(a, dtype=dtype)
    # column j of the decay matrix, as row j of a scan along i:
    # h_i = a'_i h_{i-1} + [i == j], a'_i = a_i for i > j and 0 for i <= j
    later = np.triu(np.ones((n, n), dtype=bool), k=1)
    decay_t = sequential_scan(np.where(later, a[..., None, :], 0),
                              np.eye(n, dtype=dtype), axis=-1)
    with np.errstate(invalid="ignore", over="ignore"):
        # inf and NaN propagate as IEEE arithmetic says, without a warning
        M = np.matmul(np.asarray(C, dtype=dtype),
                      np.swapaxes(np.asarray(B, dtype=dtype), -1, -2))
        M = M * np.swapaxes(decay_t, -1, -2)
    if M.shape != lead + (n, n):
        M = np.broadcast_to(M, lead + (n, n)).copy()
    M = M.astype(dtype, copy=False)
    # above the diagonal M is 0 by definition, not (C_i . B_j) * 0, which is
    # NaN when B or C holds an infinity
    M[..., later] = 0
    return M


# ---------------------------------------------------------------------------
# Toeplitz
# ---------------------------------------------------------------------------

def _all_finite(arr):
    """True when every element of `arr` is finite (real and imaginary parts)."""
    return bool(np.isfinite(arr).all())


def _toeplitz_direct(k, x, lead, dtype, nthreads):
    """Direct causal convolution; complex data through the real views of
    complex rows (the kernel multiplies (re, im) pairs)."""
    n = x.shape[-1]
    rows = int(np.prod(lead, dtype=np.int64))
    kmap = _row_map(k.shape[:-1], lead)
    xmap = _row_map(x.shape[:-1], lead)
    out = np.empty((rows, n), dtype=dtype)
    cplx = dtype.kind == "c"
    view = _interleaved if cplx else (lambda a: a)
    _structured.toeplitz_direct(view(_rows(k, dtype)), kmap, view(_rows(x, dtype)),
                                xmap, view(out), _TILE, nthreads, cplx)
    return out.reshape(lead + (n,))


def _toeplitz_auto_direct(n, K, dtype, nthreads=1, channels=1):
    """Whether the direct method is expected to be faster (cost model)."""
    if K == 0 or n == 0:
        return True
    macs = n * K - K * (K - 1) / 2
    m = n + K - 1
    threads = max(1, min(nthreads, channels * -(-n // _TILE)))
    c = _DIRECT_BREAK[dtype.char] * (1 + _THREAD_GAIN * (threads - 1))
    return macs < c * m * np.log2(max(m, 2))


@fill_doc
def toeplitz_matvec(kernel, x, *, axis=-1, method="auto", workers=None):
    r"""Product with a causal (lower-triangular) Toeplitz matrix.

    Parameters
    ----------
    kernel : array_like
        The first column :math:`k` of the matrix, float32, float64,
        complex64 or complex128. A 1-D kernel applies to every channel;
        otherwise its taps lie along the same `axis` (counted from the end)
        and its other dimensions broadcast against `x`'s. A kernel shorter
        than `n` is zero-extended; taps beyond `n` are ignored.
    x : array_like
        The vector(s), length `n` along `axis`.
    axis : int, optional
        The time axis of `x`. Default -1.
    method : {"auto", "direct", "fft"}, optional
        "direct" sums the taps in a compiled loop, :math:`O(n K)` per
        channel; "fft" uses :func:`fft_conv`, :math:`O(n \log n)`; "auto"
        (default) picks the cheaper by a cost model (see Notes).
    %(workers)s

    Returns
    -------
    y : ndarray
        The product, of the broadcast shape with length `n` along `axis`, in
        the result dtype of `kernel` and `x`.

    Raises
    ------
    TypeError
        If an input is not numeric.
    ValueError
        If `method` is unknown, an input is 0-D, `axis` is out of range, the
        shapes do not broadcast, or `workers` is 0.

    See Also
    --------
    fft_conv : the FFT method.
    scipy.linalg.toeplitz : the dense matrix, ``toeplitz(k, zeros)``.
    scipy.linalg.matmul_toeplitz : the product with a general Toeplitz matrix.

    Notes
    -----
    .. math::

        y_i = \sum_{j=0}^{i} k_{i-j} \, x_j , \qquad i = 0, \dots, n - 1 .

    The direct method splits the output into tiles of 1024 samples (tasks
    over channels and tiles run in parallel) and adds one tap at a time
    over a tile, a vectorised loop; complex data is computed as real
    products of its parts. Its rounding error is that of the plain sum in
    the input precision. The FFT method spreads rounding over the whole
    output (errors relative to the largest sample).

    "auto" takes the direct method when its multiply-adds,
    :math:`nK - K(K-1)/2` with :math:`K = \min(\text{len}(k), n)`, are
    fewer than :math:`c \, (1 + 0.4 (t - 1)) \, m \log_2 m` with
    :math:`m = n + K - 1` and :math:`t` the threads the direct kernel can
    use (a second thread speeds it up more than it speeds up FFTs of these
    lengths), the constant :math:`c` measured on the development machine
    (3.5 for real data, 1.1 for complex): at n = 8192 on one thread, real
    kernels of up to 45 taps and complex ones of up to 14 go direct.

    The FFT method mixes every sample into every output: a single inf or
    NaN anywhere in `x` or `kernel` makes every output NaN, where the
    direct method (the exact sum) spoils only the outputs that depend on
    it. "auto" therefore takes the direct method whenever an input is not
    all finite; ``method="fft"`` keeps the FFT (and its NaNs).

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import toeplitz_matvec
    >>> toeplitz_matvec([1.0, 0.5], [1.0, 2.0, 3.0])
    array([1. , 2.5, 4. ])

    The same product with the dense matrix:

    >>> from scipy.linalg import toeplitz
    >>> toeplitz([1.0, 0.5, 0.0], [1.0, 0.0, 0.0]) @ [1.0, 2.0, 3.0]
    array([1. , 2.5, 4. ])
    """
    if method not in _TOEPLITZ_METHODS:
        raise ValueError(
            f"`method` must be one of {', '.join(map(repr, _TOEPLITZ_METHODS))}, "
            f"got {method!r}"
        )
    nthreads = resolve_workers(workers)
    k, x, lead, out_axis, dtype = _conv_operands(kernel, x, axis, "kernel", "x")
    n, K = x.shape[-1], k.shape[-1]
    if method == "auto":
        channels = int(np.prod(lead, dtype=np.int64))
        if not (_all_finite(k[..., :n]) and _all_finite(x)):
            # one inf or NaN would spread over every FFT output
            method = "direct"
        elif _toeplitz_auto_direct(n, K, dtype, nthreads, channels):
            method = "direct"
        else:
            method = "fft"
    if method == "fft":
        y = _fft_causal(k, x, lead, dtype, nthreads)
    else:
        y = _toeplitz_direct(k, x, lead, dtype, nthreads)
    return np.moveaxis(y, -1, out_axis)


# ---------------------------------------------------------------------------
# Cauchy and Vandermonde
# ---------------------------------------------------------------------------

def _pole_operands(poles, weights, other=None, other_name=None):
    """Shapes of poles and weights (..., N), broadcast against each other
    (`pw`), and the leading shape they broadcast to with `other` (..., L)."""
    at_least_1d(poles, "poles", "(..., N)")
    at_least_1d(weights, "weights", "(..., N)")
    pw = broadcast_shapes(poles=poles.shape, weights=weights.shape)
    if other is None:
        return pw, pw[:-1]
    at_least_1d(other, other_name, "(..., L)")
    lead = broadcast_shapes(**{"poles": pw[:-1], other_name: other.shape[:-1]})
    return pw, lead


@fill_doc
def cauchy_matvec(nodes, poles, weights, *, conj_pairs=False, workers=None):
    r"""Product with a Cauchy matrix: :math:`\sum_i w_i / (z_k - \lambda_i)`.

    Parameters
    ----------
    nodes : array_like
        The evaluation points :math:`z_k`, shape (..., L), real or complex.
    poles : array_like
        The poles :math:`\lambda_i`, shape (..., N).
    weights : array_like
        The weights :math:`w_i`, shape (..., N), broadcast against `poles`.
        The leading dimensions of `nodes` and of the poles broadcast.
    conj_pairs : bool, optional
        Also add the conjugate terms
        :math:`\overline{w_i} / (z_k - \overline{\lambda_i})`, for poles
        stored as one member of each conjugate pair (S4). Default False.
    %(workers)s

    Returns
    -------
    out : ndarray
        Shape (..., L), complex64 when every input is single precision
        (float32 or complex64), complex128 otherwise.

    Raises
    ------
    TypeError
        If an input is not numeric.
    ValueError
        If an input is 0-D, the shapes do not broadcast, or `workers` is 0.

    See Also
    --------
    vandermonde_matvec : the kernel of diagonal poles in the time domain.

    Notes
    -----
    .. math::

        \text{out}_k = \sum_{i=0}^{N-1} \frac{w_i}{z_k - \lambda_i}
        \left( + \frac{\overline{w_i}}{z_k - \overline{\lambda_i}} \right).

    Each term is evaluated as :math:`w_i \overline{d} / |d|^2` with
    :math:`d = z_k - \lambda_i`, in the precision of the output, in a loop
    over blocks of nodes that never forms the :math:`N \times L` matrix.
    A node equal to a pole gives inf or nan in that output (no error is
    raised), as does a distance :math:`|d|` whose square underflows
    (:math:`|d| \lesssim 10^{-19}` in single precision,
    :math:`10^{-154}` in double); a distance whose square overflows gives a
    zero term.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import cauchy_matvec
    >>> cauchy_matvec([2.0, 3.0], [1.0], [1.0])
    array([1. +0.j, 0.5+0.j])
    >>> cauchy_matvec([0.0], [1j], [1.0], conj_pairs=True)   # 1/(-i) + 1/i
    array([0.+0.j])
    """
    nthreads = resolve_workers(workers)
    nodes = as_array(nodes, "nodes")
    poles = as_array(poles, "poles")
    weights = as_array(weights, "weights")
    cdtype = complex_dtype(result_dtype(nodes=nodes, poles=poles, weights=weights))
    pw, lead = _pole_operands(poles, weights, nodes, "nodes")
    N, L = pw[-1], nodes.shape[-1]
    rows = int(np.prod(lead, dtype=np.int64))
    if rows == 0 or L == 0:
        return np.zeros(lead + (L,), dtype=cdtype)
    P = _rows(np.broadcast_to(poles, lead + (N,)), cdtype)
    W = _rows(np.broadcast_to(weights, lead + (N,)), cdtype)
    Z = _rows(nodes, cdtype)
    nmap = _row_map(nodes.shape[:-1], lead)
    out = np.empty((rows, L), dtype=cdtype)
    _structured.cauchy(_interleaved(Z), nmap, _interleaved(P), _interleaved(W),
                       _interleaved(out), bool(conj_pairs), nthreads)
    return out.reshape(lead + (L,))


def _length(length):
    if isinstance(length, (bool, np.bool_)):
        raise TypeError(f"`length` must be an integer, got {length!r}")
    try:
        n = operator.index(length)
    except TypeError:
        raise TypeError(f"`length` must be an integer, got {length!r}") from None
    if n < 0:
        raise ValueError(f"`length` must be a non-negative integer, got {n}")
    return n


@fill_doc
def vandermonde_matvec(poles, weights, length, *, conj_pairs=False, workers=None):
    r"""Product with a Vandermonde matrix: :math:`\sum_i w_i \lambda_i^l`.

    Parameters
    ----------
    poles : array_like
        The poles :math:`\lambda_i`, shape (..., N), real or complex.
    weights : array_like
        The weights :math:`w_i`, shape (..., N), broadcast against `poles`.
    length : int
        The number of powers :math:`L`: the output holds
        :math:`l = 0, \dots, L-1`.
    conj_pairs : bool, optional
        Add the conjugate terms as well and return the real
        :math:`2 \operatorname{Re} K` (S4D's half-spectrum storage).
        Default False.
    %(workers)s

    Returns
    -------
    K : ndarray
        Shape (..., L). Complex (complex64 when the inputs are single
        precision, complex128 otherwise); with ``conj_pairs=True`` real of
        the same precision (float32 or float64).

    Raises
    ------
    TypeError
        If an input is not numeric or `length` is not an integer.
    ValueError
        If `length` is negative, an input is 0-D, `poles` and `weights` do
        not broadcast, or `workers` is 0.

    See Also
    --------
    vandermonde_rmatvec : the transpose product.
    cauchy_matvec : the same kernel in the frequency domain.

    Notes
    -----
    .. math::

        K_l = \sum_{i=0}^{N-1} w_i \lambda_i^{\,l}, \qquad l = 0, \dots, L-1 .

    The powers are never formed by :math:`L` repeated multiplications
    (whose error grows like :math:`l \varepsilon`) nor as an
    :math:`L \times N` matrix. The length is cut into blocks of 256 powers;
    :math:`\lambda^{l_0 + j} = \lambda^{l_0} \lambda^{j}` with the anchor
    :math:`\lambda^{l_0} = \exp(l_0 \log \lambda)` evaluated in double
    precision for every block, and the table :math:`\lambda^j`, :math:`j <
    256`, built once per row in double precision by doubling,
    :math:`\lambda^{p + j} = \lambda^j \exp(p \log \lambda)` for
    :math:`p = 1, 2, 4, \dots` (one rounded product per binary digit of
    :math:`j`). The error of :math:`\lambda^l` is thus a few roundings of
    the output dtype plus :math:`l` times the double-precision rounding of
    :math:`\log \lambda` -- no larger than the effect of rounding
    :math:`\lambda` itself -- and nothing overflows for
    :math:`|\lambda| \le 1`. :math:`0^0 = 1`.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import vandermonde_matvec
    >>> vandermonde_matvec([0.5], [2.0], 4)
    array([2.  +0.j, 1.  +0.j, 0.5 +0.j, 0.25+0.j])
    >>> K = vandermonde_matvec([0.9j], [1.0], 3, conj_pairs=True)
    >>> np.round(K, 12)
    array([ 2.  ,  0.  , -1.62])
    """
    L = _length(length)
    nthreads = resolve_workers(workers)
    poles = as_array(poles, "poles")
    weights = as_array(weights, "weights")
    cdtype = complex_dtype(result_dtype(poles=poles, weights=weights))
    rdtype = real_dtype(cdtype)
    pw, lead = _pole_operands(poles, weights)
    N = pw[-1]
    rows = int(np.prod(lead, dtype=np.int64))
    out_dtype = rdtype if conj_pairs else cdtype
    if rows == 0 or L == 0:
        return np.zeros(lead + (L,), dtype=out_dtype)
    P = _rows(np.broadcast_to(poles, pw), cdtype)
    W = _rows(np.broadcast_to(weights, pw), cdtype)
    out = np.empty((rows, L), dtype=out_dtype)
    # tasks of whole blocks; enough of them to keep every thread busy
    per_row = max(1, -(-4 * nthreads // rows)) if nthreads > 1 else 1
    split = -(-L // per_row)
    split = -(-split // _VDM_BLOCK) * _VDM_BLOCK
    _structured.vandermonde(_interleaved(P), _interleaved(W),
                            out if conj_pairs else _interleaved(out),
                            bool(conj_pairs), split, nthreads)
    return out.reshape(lead + (L,))


@fill_doc
def vandermonde_rmatvec(poles, v, *, workers=None):
    r"""Transpose Vandermonde product: :math:`\sum_l \lambda_i^l v_l`.

    Parameters
    ----------
    poles : array_like
        The poles :math:`\lambda_i`, shape (..., N), real or complex.
    v : array_like
        The vector :math:`v`, shape (..., L). The leading dimensions of
        `poles` and `v` broadcast.
    %(workers)s

    Returns
    -------
    out : ndarray
        Shape (..., N), complex64 when the inputs are single precision,
        complex128 otherwise.

    Raises
    ------
    TypeError
        If an input is not numeric.
    ValueError
        If an input is 0-D, the shapes do not broadcast, or `workers` is 0.

    See Also
    --------
    vandermonde_matvec : the product with the matrix itself.

    Notes
    -----
    .. math::

        \text{out}_i = \sum_{l=0}^{L-1} \lambda_i^{\,l} \, v_l ,

    the product with the transpose of the matrix of
    :func:`vandermonde_matvec` (the gradient of its kernel with respect to
    the weights). Powers are formed the same stable way, blocks of 256 at a
    time: each block's sum is multiplied by its anchor
    :math:`\lambda^{l_0}` and accumulated in double precision. The length
    is cut into fixed pieces of 8192 powers that run in parallel; their
    partial sums are added in a fixed order, so the result does not depend
    on `workers`.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import vandermonde_rmatvec
    >>> vandermonde_rmatvec([0.5, 2.0], [1.0, 1.0, 1.0])
    array([1.75+0.j, 7.  +0.j])
    """
    nthreads = resolve_workers(workers)
    poles = as_array(poles, "poles")
    v = as_array(v, "v")
    cdtype = complex_dtype(result_dtype(poles=poles, v=v))
    at_least_1d(poles, "poles", "(..., N)")
    at_least_1d(v, "v", "(..., L)")
    lead = broadcast_shapes(poles=poles.shape[:-1], v=v.shape[:-1])
    N, L = poles.shape[-1], v.shape[-1]
    rows = int(np.prod(lead, dtype=np.int64))
    if rows == 0 or N == 0 or L == 0:
        return np.zeros(lead + (N,), dtype=cdtype)
    P = _rows(np.broadcast_to(poles, lead + (N,)), cdtype)
    V = _rows(v, cdtype)
    vmap = _row_map(v.shape[:-1], lead)
    nsplit = -(-L // _VDM_RSPLIT)
    partial = np.empty((rows, nsplit, N), dtype=cdtype)
    _structured.vandermonde_transpose(_interleaved(P), _interleaved(V), vmap,
                                      partial.view(real_dtype(cdtype)),
                                      _VDM_RSPLIT, nthreads)
    out = partial[:, 0, :] if nsplit == 1 else partial.sum(axis=1)
    return out.reshape(lead + (N,))


# The SciPy operator views (defined in _operators.py), and gradients
#
# Each pullback is a composition of the forward kernels (the transpose of a
# structured product is a structured product of the same kind), except the
# squared Cauchy terms sum_k c_k / (z_k - p_i)^2 of the pole and node
# gradients, which are summed in blocks. See the user guide, "Gradients".

from . import _vjp_kernels  # noqa: E402
from ._vjp import causal_conv_pullback, defvjp  # noqa: E402
from ._vjp import vjp as _vjp  # noqa: E402
from ._operators import (  # noqa: E402
    cauchy_operator,
    semiseparable_operator,
    toeplitz_operator,
    vandermonde_operator,
)

__all__ += ["cauchy_operator", "semiseparable_operator", "toeplitz_operator",
            "vandermonde_operator"]


def _cj(x):
    x = np.asarray(x)
    return x.conj() if x.dtype.kind == "c" else x


@defvjp(semiseparable_matvec, "a", "B", "C", "x")
def _semiseparable_matvec_vjp(args):
    # keeps the inputs; the backward recomputes the states h (n r per row),
    # runs their adjoint (a reverse scan) and contracts.
    y = semiseparable_matvec(**args)
    dtype = y.dtype

    def backward(c):
        if dtype.kind == "f":
            return _semiseparable_backward_real(args, c, y.shape, dtype)
        a = np.asarray(args["a"], dtype=dtype)[..., None]
        B = np.asarray(args["B"], dtype=dtype)
        C = np.asarray(args["C"], dtype=dtype)
        x = np.asarray(args["x"], dtype=dtype)
        b = B * x[..., None]
        h, pullback = _vjp(chunked_scan, a, b, axis=-2, workers=args["workers"])
        # y_i = C_i . h_i (no conjugate): dL/dh_i = conj(C_i) c_i
        g = pullback(_cj(C) * c[..., None])
        gb = g["b"]
        return {"a": g["a"][..., 0], "B": gb * _cj(x)[..., None],
                "C": c[..., None] * _cj(h), "x": np.sum(gb * _cj(B), axis=-1)}

    return y, backward


def _semiseparable_backward_real(args, c, shape, dtype):
    """The real pullback in one compiled pass pair per row
    (_vjp_kernels.semiseparable_backward); gradients of the broadcast shape."""
    lead, n = shape[:-1], shape[-1]
    B = np.asarray(args["B"])
    r = B.shape[-1]
    if 0 in lead or n == 0 or r == 0:
        return {"a": np.zeros(shape, dtype), "x": np.zeros(shape, dtype),
                "B": np.zeros(shape + (r,), dtype), "C": np.zeros(shape + (r,), dtype)}
    rows = int(np.prod(lead, dtype=np.int64))

    def flat(v, tail):
        v = np.broadcast_to(np.asarray(v, dtype=dtype), lead + tail)
        return np.ascontiguousarray(v).reshape(rows, -1)

    a, x, cc = flat(args["a"], (n,)), flat(args["x"], (n,)), flat(c, (n,))
    Bf, Cf = flat(B, (n, r)), flat(args["C"], (n, r))
    ga = np.empty((rows, n), dtype)
    gx = np.empty((rows, n), dtype)
    gB = np.empty((rows, n * r), dtype)
    gC = np.empty((rows, n * r), dtype)
    work = np.empty((rows, r), dtype)
    _vjp_kernels.semiseparable_backward(a, Bf, Cf, x, cc, ga, gB, gC, gx, work,
                                        resolve_workers(args["workers"]))
    return {"a": ga.reshape(shape), "x": gx.reshape(shape),
            "B": gB.reshape(shape + (r,)), "C": gC.reshape(shape + (r,))}


@defvjp(semiseparable_matrix, "a", "B", "C")
def _semiseparable_matrix_vjp(args):
    # keeps the inputs and L = prod a (n^2 per row), as the forward does.
    # M = (C B^T) * L with L the scan of a over the identity's columns.
    M = semiseparable_matrix(**args)
    dtype = M.dtype
    a = np.asarray(args["a"], dtype=dtype)
    n = a.shape[-1]
    L, pullback = _vjp(sequential_scan, a[..., None], np.eye(n, dtype=dtype), axis=-2)

    def backward(G):
        B = np.asarray(args["B"], dtype=dtype)
        C = np.asarray(args["C"], dtype=dtype)
        # the products by matmul, as the forward forms C B^T
        GL = G * _cj(L)
        CB = _cj(np.matmul(C, np.swapaxes(B, -1, -2)))
        if CB.shape == G.shape:
            CB *= G
        else:                      # C and B shared by a batch of decays
            CB = CB * G
        ga = pullback(CB)["a"][..., 0]
        return {"a": ga,
                "B": np.matmul(np.swapaxes(GL, -1, -2), _cj(C)),
                "C": np.matmul(GL, _cj(B))}

    return M, backward


@defvjp(toeplitz_matvec, "kernel", "x")
def _toeplitz_matvec_vjp(args):
    # keeps the inputs: both gradients are causal convolutions run backwards
    y = toeplitz_matvec(**args)

    def conv(k, v, axis):
        return toeplitz_matvec(k, v, axis=axis, method=args["method"],
                               workers=args["workers"])

    def backward(c):
        gk, gx = causal_conv_pullback(conv, args["kernel"], args["x"], c,
                                      args["axis"], y.dtype,
                                      resolve_workers(args["workers"]))
        return {"kernel": gk, "x": gx}

    return y, backward


@defvjp(cauchy_matvec, "nodes", "poles", "weights")
def _cauchy_matvec_vjp(args):
    # keeps the inputs. With D = 1/(z_k - p_i):
    #   gw_i = sum_k conj(D_ki) c_k
    #   gp_i = conj(w_i) sum_k conj(D_ki)^2 c_k
    #   gz_k = -c_k sum_i conj(w_i D_ki^2)
    # and for conj_pairs the terms of conj(w)/(z - conj(p)), antiholomorphic
    # in w and p, enter through conj(c). One compiled pass over the L x N
    # terms (_vjp_kernels.cauchy_backward), in double.
    out = cauchy_matvec(**args)
    dtype = out.dtype

    def backward(c):
        z = np.asarray(args["nodes"], dtype=dtype)
        p = np.asarray(args["poles"], dtype=dtype)
        w = np.asarray(args["weights"], dtype=dtype)
        p, w = np.broadcast_arrays(p, w)
        lead = np.broadcast_shapes(z.shape[:-1], p.shape[:-1])
        L, N = z.shape[-1], p.shape[-1]
        if 0 in lead + (L, N):
            return {"nodes": np.zeros(lead + (L,), dtype),
                    "poles": np.zeros(lead + (N,), dtype),
                    "weights": np.zeros(lead + (N,), dtype)}
        z = np.broadcast_to(z, lead + (L,)).reshape(-1, L)
        c = np.broadcast_to(c, lead + (L,)).reshape(-1, L)
        p = np.broadcast_to(p, lead + (N,)).reshape(-1, N)
        w = np.broadcast_to(w, lead + (N,)).reshape(-1, N)
        R = z.shape[0]
        work = np.complex128   # the kernel sums in double
        gz = np.empty((R, L), work)
        gw = np.empty((R, N), work)
        sp = np.empty((R, N), work)

        def view(x):
            return np.ascontiguousarray(x, dtype=work).view(np.float64)

        _vjp_kernels.cauchy_backward(view(z), view(p), view(w), view(c),
                                     bool(args["conj_pairs"]), gz.view(np.float64),
                                     gw.view(np.float64), sp.view(np.float64),
                                     resolve_workers(args["workers"]))
        gp = sp * w.conj()
        shape = lead
        return {"nodes": gz.reshape(shape + (L,)),
                "poles": gp.reshape(shape + (N,)),
                "weights": gw.reshape(shape + (N,))}

    return out, backward


def _power_derivative_vector(v):
    """u_m = (m + 1) v_{m+1}: sum_l l p^(l-1) v_l = sum_m p^m u_m."""
    L = v.shape[-1]
    return v[..., 1:] * np.arange(1, L, dtype=v.real.dtype)


def _vandermonde_backward_fused(p, w, c, scale, cdtype, workers):
    """Both sums of the pullback (gw by p^l, gp by l p^(l-1)) in one
    compiled pass that shares the powers (_vjp_kernels.vandermonde_backward),
    in double; a real cotangent (conj_pairs) is read as real."""
    c = np.asarray(c)
    N, L = p.shape[-1], c.shape[-1]
    lead = np.broadcast_shapes(p.shape[:-1], w.shape[:-1], c.shape[:-1])
    rows = int(np.prod(lead, dtype=np.int64))
    if rows == 0 or N == 0:
        z = np.zeros(lead + (N,), cdtype)
        return {"poles": z, "weights": z}
    P = np.ascontiguousarray(np.broadcast_to(p, lead + (N,)), dtype=np.complex128)
    real_v = c.dtype.kind != "c"
    if real_v:
        V = np.ascontiguousarray(np.broadcast_to(c, lead + (L,)), dtype=np.float64)
    else:
        V = np.ascontiguousarray(np.broadcast_to(c, lead + (L,)), dtype=np.complex128)
        V = V.conj().view(np.float64)
    S0 = np.empty((rows, N), np.complex128)
    S1 = np.empty((rows, N), np.complex128)
    _vjp_kernels.vandermonde_backward(P.reshape(rows, N).view(np.float64),
                                      V.reshape(rows, -1), real_v,
                                      S0.view(np.float64), S1.view(np.float64),
                                      resolve_workers(workers))
    S0 = S0.reshape(lead + (N,))
    S1 = S1.reshape(lead + (N,))
    gw = np.conj(S0)
    gw *= scale
    gp = np.conj(w * S1)
    gp *= scale
    return {"poles": gp.astype(cdtype, copy=False), "weights": gw.astype(cdtype, copy=False)}


@defvjp(vandermonde_matvec, "poles", "weights")
def _vandermonde_matvec_vjp(args):
    # keeps the inputs. K_l = sum_i w_i p_i^l:
    #   gw_i = conj(sum_l p_i^l conj(c_l))          (vandermonde_rmatvec)
    #   gp_i = conj(w_i sum_l l p_i^(l-1) conj(c_l)) (vandermonde_rmatvec of
    #          u_m = (m+1) conj(c_{m+1}): the powers formed as stably)
    # conj_pairs returns K + conj(K) for a real cotangent: both doubled.
    out = vandermonde_matvec(**args)
    cdtype = complex_dtype(out.dtype)
    workers = args["workers"]

    def backward(c):
        p = np.asarray(args["poles"])
        w = np.asarray(args["weights"], dtype=cdtype)
        scale = 2 if args["conj_pairs"] else 1
        if p.ndim and w.ndim and np.ndim(c):
            return _vandermonde_backward_fused(p, w, c, scale, cdtype, workers)
        cc = np.asarray(c, dtype=cdtype).conj()
        gw = vandermonde_rmatvec(p, cc, workers=workers).conj()
        if cc.shape[-1] > 1:
            s = vandermonde_rmatvec(p, _power_derivative_vector(cc), workers=workers)
            gp = (w * s).conj()
        else:
            gp = np.zeros(np.broadcast_shapes(p.shape, w.shape), cdtype)
        return {"poles": scale * gp, "weights": scale * gw}

    return out, backward


@defvjp(vandermonde_rmatvec, "poles", "v")
def _vandermonde_rmatvec_vjp(args):
    # keeps the inputs. out_i = sum_l p_i^l v_l:
    #   gv_l = conj(sum_i p_i^l conj(c_i))     (vandermonde_matvec)
    #   gp_i = c_i conj(sum_l l p_i^(l-1) v_l) (vandermonde_rmatvec of u)
    out = vandermonde_rmatvec(**args)
    cdtype = out.dtype
    workers = args["workers"]

    def backward(c):
        p = np.asarray(args["poles"])
        v = np.asarray(args["v"], dtype=cdtype)
        L = v.shape[-1]
        gv = vandermonde_matvec(p, np.asarray(c, dtype=cdtype).conj(), L,
                                workers=workers).conj()
        if L > 1:
            s = vandermonde_rmatvec(p, _power_derivative_vector(v), workers=workers)
            gp = c * s.conj()
        else:
            gp = np.zeros(out.shape, cdtype)
        return {"poles": gp, "v": gv}

    return out, backward
