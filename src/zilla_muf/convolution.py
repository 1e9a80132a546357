r"""Convolution: causal convolution by FFT.

The long convolutions of S4, H3 and Hyena apply a kernel as long as the
sequence: a causal (lower-triangular Toeplitz) product that costs
:math:`O(n \log n)` by FFT instead of :math:`O(n K)` directly.

- :func:`~zilla_muf.fft_conv` -- the causal convolution truncated to the
  signal's length, by real (or complex) FFT.

:func:`zilla_muf.toeplitz_matvec` computes the same quantity and chooses
between this and a direct kernel.

``zilla_muf.fft_conv`` is the function; this module,
``zilla_muf.convolution``, is where it is defined.

>>> import zilla_muf
>>> zilla_muf.fft_conv([1.0, 2.0, 3.0], [0.0, 1.0])
array([0., 1., 2.])
>>> zilla_muf.convolution.fft_conv is zilla_muf.fft_conv
True
"""

import numpy as np
import scipy.fft

from ._docs import fill_doc
from ._validation import (
    as_array,
    broadcast_shapes,
    normalize_axis,
    resolve_workers,
    result_dtype,
)

__all__ = ["fft_conv"]

# Signal elements per FFT thread below which another thread costs more than
# it saves (bench/bench_sweeps.py: with 16 channels, 2 threads were slower
# than 1 up to 2^16 elements and faster from 2^18 on).
_MIN_PER_THREAD = 1 << 17


def _conv_operands(kernel, x, axis, kname, xname):
    """Check and lay out the operands of a causal convolution.

    Returns ``(k, x, lead, out_axis, dtype)``: `k` and `x` with their time
    axis last (`k` truncated to ``x``'s length), the broadcast shape of their
    leading dimensions, the (negative) axis of the result's time axis, and
    the result dtype. A 1-D kernel holds the taps for every channel; a kernel
    with more dimensions has its taps along the same `axis` as `x` (counted
    from the end) and broadcasts against `x` in the other dimensions.
    """
    kernel = as_array(kernel, kname)
    x = as_array(x, xname)
    dtype = result_dtype(**{kname: kernel, xname: x})
    if x.ndim == 0:
        raise ValueError(f"`{xname}` must have at least one dimension, got shape ()")
    if kernel.ndim == 0:
        raise ValueError(f"`{kname}` must have at least one dimension, got shape ()")
    ax = normalize_axis(axis, x.ndim)
    out_axis = ax - x.ndim
    x = np.moveaxis(x, ax, -1)
    if kernel.ndim > 1:
        if kernel.ndim < -out_axis:
            raise ValueError(
                f"`{kname}` must be 1-D or have its taps along axis {axis} "
                f"like `{xname}`, got shape {kernel.shape}"
            )
        kernel = np.moveaxis(kernel, kernel.ndim + out_axis, -1)
    lead = broadcast_shapes(**{kname: kernel.shape[:-1], xname: x.shape[:-1]})
    kernel = kernel[..., : x.shape[-1]]
    return kernel, x, lead, out_axis, dtype


def _fft_causal(k, x, lead, dtype, workers):
    """Causal convolution of operands laid out by :func:`_conv_operands`,
    on at most one FFT thread per _MIN_PER_THREAD signal elements."""
    n = x.shape[-1]
    K = k.shape[-1]
    if n == 0 or K == 0 or 0 in lead:
        return np.zeros(lead + (n,), dtype=dtype)
    size = int(np.prod(lead, dtype=np.int64)) * n
    workers = max(1, min(workers, size // _MIN_PER_THREAD))
    x = x.astype(dtype, copy=False)
    k = k.astype(dtype, copy=False)
    if dtype.kind == "c":
        nfft = scipy.fft.next_fast_len(n + K - 1, real=False)
        X = scipy.fft.fft(x, nfft, axis=-1, workers=workers)
        X = X * scipy.fft.fft(k, nfft, axis=-1, workers=workers)
        y = scipy.fft.ifft(X, nfft, axis=-1, workers=workers, overwrite_x=True)
    else:
        nfft = scipy.fft.next_fast_len(n + K - 1, real=True)
        X = scipy.fft.rfft(x, nfft, axis=-1, workers=workers)
        Kf = scipy.fft.rfft(k, nfft, axis=-1, workers=workers)
        if X.shape == np.broadcast_shapes(X.shape, Kf.shape):
            X *= Kf
        else:
            X = X * Kf
        y = scipy.fft.irfft(X, nfft, axis=-1, workers=workers, overwrite_x=True)
    y = y[..., :n]
    if y.shape[:-1] != lead:
        y = np.broadcast_to(y, lead + (n,)).copy()
    return y.astype(dtype, copy=False)


@fill_doc
def fft_conv(signal, kernel, *, axis=-1, workers=None):
    r"""Causal convolution of `signal` with `kernel`, truncated, by FFT.

    Parameters
    ----------
    signal : array_like
        The input :math:`x`, float32, float64, complex64 or complex128
        (integers and bools are promoted to float64). Its length `n` along
        `axis` is the output's length.
    kernel : array_like
        The taps :math:`k`. A 1-D kernel applies to every channel; otherwise
        its taps lie along the same `axis` (counted from the end) and its
        other dimensions broadcast against `signal`'s. Taps beyond `n` are
        ignored; a shorter kernel is zero-extended.
    axis : int, optional
        The time axis of `signal`. Default -1.
    %(workers)s

    Returns
    -------
    y : ndarray
        The convolution, of the broadcast shape with length `n` along `axis`,
        in the result dtype of `signal` and `kernel`.

    Raises
    ------
    TypeError
        If an input is not numeric.
    ValueError
        If an input is 0-D, `axis` is out of range, the shapes do not
        broadcast, or `workers` is 0.

    See Also
    --------
    zilla_muf.toeplitz_matvec : the same product, with a direct method for short kernels.
    scipy.signal.fftconvolve : the full (untruncated) convolution.

    Notes
    -----
    The result is

    .. math::

        y_i = \sum_{j=0}^{i} k_{i-j} \, x_j , \qquad i = 0, \dots, n-1 ,

    the first `n` samples of the full linear convolution, i.e. the product
    with the lower-triangular Toeplitz matrix whose first column is `k`.
    Both operands are zero-padded to a fast length
    ``scipy.fft.next_fast_len(n + K - 1)`` (``K = min(len(kernel), n)``), so
    that the circular convolution equals the linear one on the first `n`
    samples; real data uses ``rfft``/``irfft``, complex data ``fft``/``ifft``.
    The cost is :math:`O(n \log n)` per channel whatever the kernel length.
    Rounding errors are relative to the size of the whole output (FFT
    rounding is spread over all samples), not to each sample.

    The transforms use at most one thread per 131072 elements of the
    (broadcast) signal: on less, another thread costs more than it saves.

    Every sample reaches every output through the transforms: a single inf
    or NaN in `signal` or `kernel` (even in the last sample, on which no
    other output depends) makes every output NaN. For data that may hold
    non-finite values use :func:`zilla_muf.toeplitz_matvec`, whose
    ``method="auto"`` takes the exact direct sum then.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import fft_conv
    >>> y = fft_conv([1.0, 2.0, 3.0, 4.0], [1.0, 1.0])
    >>> np.round(y, 12)
    array([1., 3., 5., 7.])

    One kernel per channel, time along the last axis:

    >>> x = np.ones((2, 5))
    >>> k = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    >>> np.round(fft_conv(x, k), 12)
    array([[1. , 1. , 1. , 1. , 1. ],
           [0.5, 1. , 1.5, 1.5, 1.5]])
    """
    nthreads = resolve_workers(workers)
    k, x, lead, out_axis, dtype = _conv_operands(kernel, signal, axis, "kernel", "signal")
    y = _fft_causal(k, x, lead, dtype, nthreads)
    return np.moveaxis(y, -1, out_axis)


# Gradients
#
# The adjoint of the truncated causal convolution is the same convolution
# run backwards in time (see _vjp.causal_conv_pullback). Keeps the inputs.

from ._vjp import causal_conv_pullback, defvjp  # noqa: E402


@defvjp(fft_conv, "signal", "kernel")
def _fft_conv_vjp(args):
    y = fft_conv(**args)

    def conv(k, v, axis):
        return fft_conv(v, k, axis=axis, workers=args["workers"])

    def backward(c):
        gk, gx = causal_conv_pullback(conv, args["kernel"], args["signal"], c,
                                      args["axis"], y.dtype,
                                      resolve_workers(args["workers"]))
        return {"kernel": gk, "signal": gx}

    return y, backward
