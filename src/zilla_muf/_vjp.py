"""Reverse-mode gradients: :func:`vjp` and the registry of pullback rules.

Every differentiable public function registers ONE rule, written beside the
function in its own module (the model is JAX's ``custom_vjp``: a forward
that keeps residuals, a backward that takes them)::

    @defvjp(linear_scan, "a", "b", "h0")
    def _linear_scan_vjp(args):
        # args: every parameter of linear_scan by name, defaults filled in
        h = linear_scan(**args)
        def backward(cotangent):
            # cotangent: an array of out's shape, or a tuple of them
            # (zeros where the caller passed None)
            return {"a": ga, "b": gb, "h0": gh0}
        return h, backward

The rule returns gradients of the broadcast, promoted operands (any dtype,
any shape that broadcasts to the argument's); this module turns them into
the gradient of each argument *as given*: broadcast dimensions summed back,
a real argument's gradient real, a Python number's gradient a 0-d array.
Rules may leave out an argument the caller passed as None; any other
missing name is a bug and raises ``RuntimeError``.

Nothing here imports a public module: each module imports :func:`defvjp`,
so the registry fills as ``zilla_muf`` is imported.
"""

import inspect
import types

import numpy as np

__all__ = ["causal_conv_pullback", "defvjp", "pullback_from", "sum_to_shape", "vjp"]

# public function -> (rule, names of its differentiable parameters, signature)
_RULES = {}


def defvjp(fun, *differentiable):
    """Register the decorated rule as the pullback of `fun`.

    Parameters
    ----------
    fun : callable
        The public function.
    *differentiable : str
        The names of its parameters that get a gradient.
    """
    sig = inspect.signature(fun)
    for name in differentiable:
        if name not in sig.parameters:
            raise ValueError(f"{fun.__name__} has no parameter {name!r}")

    def register(rule):
        _RULES[fun] = (rule, tuple(differentiable), sig)
        return rule

    return register


def differentiable_functions():
    """The registered public functions, sorted by name."""
    return sorted(_RULES, key=lambda f: (f.__module__, f.__name__))


def sum_to_shape(g, shape):
    """Sum `g` over the axes that broadcasting added to reach its shape.

    `shape` is the shape of an operand that broadcast to ``g.shape``.
    """
    g = np.asarray(g)
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    if lead < 0:
        raise ValueError(f"cannot sum a gradient of shape {g.shape} to {shape}")
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1
    )
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _precision(dtype):
    """float32 or float64: the real precision of a result dtype."""
    dtype = np.dtype(dtype)
    half = {"f": 4, "c": 8}.get(dtype.kind)
    if half is not None and dtype.itemsize <= half:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _result_precision(out):
    """The real precision of the outputs (the first floating one decides)."""
    for y in out if isinstance(out, tuple) else (out,):
        y = np.asarray(y)
        if y.dtype.kind in "fc":
            return _precision(y.dtype)
    return np.dtype(np.float64)


def _is_complex(value):
    if type(value) is complex:
        return True
    return np.asarray(value).dtype.kind == "c" if value is not None else False


def _as_argument_gradient(g, value, precision):
    """The gradient `g` shaped and typed as the argument `value`."""
    shape = np.shape(value)
    g = sum_to_shape(np.asarray(g), shape) if np.ndim(g) or shape else np.asarray(g)
    if _is_complex(value):
        dtype = np.result_type(precision, np.complex64)
        return np.asarray(g, dtype=dtype).reshape(shape)
    return np.asarray(np.real(g), dtype=precision).reshape(shape)


def _check_cotangent(cotangent, out):
    """Cotangent arrays matching `out`'s structure; None becomes zeros."""
    if isinstance(out, tuple):
        if not isinstance(cotangent, (tuple, list)) or len(cotangent) != len(out):
            got = (f"a {type(cotangent).__name__} of {len(cotangent)}"
                   if isinstance(cotangent, (tuple, list))
                   else type(cotangent).__name__)
            raise ValueError(
                f"`cotangent` must be a tuple of {len(out)} arrays (or None), one "
                f"per output, got {got}"
            )
        return tuple(_check_one(c, y, f"cotangent[{i}]")
                     for i, (c, y) in enumerate(zip(cotangent, out)))
    if isinstance(cotangent, (tuple, list)):
        raise ValueError(
            "`cotangent` must be one array (the function returned one array), "
            f"got a {type(cotangent).__name__}"
        )
    return _check_one(cotangent, out, "cotangent")


def _check_one(c, y, where):
    y = np.asarray(y)
    if c is None:
        return np.zeros(y.shape, dtype=y.dtype)
    try:
        c = np.asarray(c)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"`cotangent` must be numeric: {exc}") from None
    if c.dtype.kind not in "biufc":
        raise TypeError(f"`cotangent` must be numeric, got dtype {c.dtype}")
    if c.shape != y.shape:
        raise ValueError(
            f"`cotangent` does not match the output: {where} has shape "
            f"{c.shape}, the output {y.shape}"
        )
    if y.dtype.kind == "c":
        return c.astype(y.dtype, copy=False)
    # a real output only sees the real part of its cotangent
    return np.real(c).astype(y.dtype if y.dtype.kind == "f" else np.float64,
                             copy=False)


def vjp(fun, *args, **kwargs):
    """Evaluate `fun` and return its vector-Jacobian product (pullback).

    Parameters
    ----------
    fun : callable
        A differentiable public function of zilla_muf (see Notes).
    *args, **kwargs
        Its arguments, as for a plain call.

    Returns
    -------
    out : ndarray or tuple
        ``fun(*args, **kwargs)``.
    pullback : callable
        ``pullback(cotangent) -> dict``. `cotangent` has the structure of
        `out` (an array, or a tuple with ``None`` for zeros) and the same
        shapes. The dict maps the name of every differentiable argument that
        was given (not None) to the gradient of the real loss
        ``L = sum(Re(conj(cotangent) * out))`` with respect to it, with the
        argument's shape; real arguments get real gradients.

    Raises
    ------
    TypeError
        If `fun` is not a differentiable function of zilla_muf.
    ValueError
        From `pullback`, if `cotangent` does not match `out`.

    See Also
    --------
    zilla_muf.semiseparable_operator : the transpose products of
        the structured matrices as SciPy operators.

    Notes
    -----
    For a complex argument z the gradient is ``dL/dRe(z) + 1j*dL/dIm(z)``
    (PyTorch's convention), and a complex cotangent c of an output y means
    ``c = dL/dRe(y) + 1j*dL/dIm(y)``; for a holomorphic map y = f(z) the
    gradient is ``conj(f'(z)) * c``. The pullback may be called any number
    of times. The user guide's page on gradients writes out each backward.

    Differentiable: the scans (:func:`~zilla_muf.sequential_scan`,
    :func:`~zilla_muf.chunked_scan`, :func:`~zilla_muf.associative_scan`,
    :func:`~zilla_muf.linear_scan`; `a`, `b`, `h0`), every function of
    :mod:`zilla_muf.stable_ops`, the products of
    :mod:`zilla_muf.structured` (poles and nodes included),
    :func:`~zilla_muf.fft_conv`, :mod:`zilla_muf.discretize`
    (diagonal and dense; `A`, `B`, `delta`) and :mod:`zilla_muf.complex_ops`.
    Integer and flag arguments, `axis`, `method` and `workers` are never
    differentiated; each backward runs with the forward's `workers`. Each
    backward is a closed form or a composition of the forward kernels
    (the adjoint of a scan is a reverse scan), never finite differences.

    .. versionadded:: 0.2.0

    Examples
    --------
    >>> import numpy as np
    >>> import zilla_muf
    >>> a = np.array([0.5, 0.5, 0.5])
    >>> b = np.array([1.0, 2.0, 3.0])
    >>> h, pullback = zilla_muf.vjp(zilla_muf.linear_scan, a, b)
    >>> h
    array([1.  , 2.5 , 4.25])
    >>> grads = pullback(np.array([0.0, 0.0, 1.0]))   # d h[2]
    >>> grads["b"]
    array([0.25, 0.5 , 1.  ])
    """
    entry = _RULES.get(fun)
    if entry is None and isinstance(fun, types.ModuleType):
        # a callable module (zilla_muf.linear_attention) stands for its function
        entry = _RULES.get(getattr(fun, fun.__name__.rpartition(".")[2], None))
    if entry is None:
        name = getattr(fun, "__qualname__", None) or type(fun).__name__
        raise TypeError(
            f"`fun` must be a differentiable zilla_muf function, got {name}; "
            "see zilla_muf.vjp's documentation for the list"
        )
    rule, differentiable, sig = entry
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    out, backward = rule(arguments)
    return out, _pullback(fun, differentiable, arguments, out, backward)


def pullback_from(fun, make_backward, out_like, *args, **kwargs):
    """The pullback of ``fun(*args, **kwargs)``, without running `fun`.

    For callers that kept what a backward needs (the PyTorch operators save
    the forward's inputs, and the forward has already run):
    ``make_backward(arguments)`` returns a rule's ``backward(cotangent)``
    for `fun`'s arguments bound by name (defaults filled in); `out_like`
    has the structure, shapes and dtypes of ``fun``'s result (its values
    are never read). The pullback checks cotangents and shapes the
    gradients as :func:`vjp`'s does.
    """
    entry = _RULES.get(fun)
    if entry is None:
        raise TypeError(f"`fun` must be a differentiable zilla_muf function, got {fun!r}")
    _, differentiable, sig = entry
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    return _pullback(fun, differentiable, arguments, out_like, make_backward(arguments))


def _pullback(fun, differentiable, arguments, out, backward):
    """The pullback of a rule's `backward` at the bound `arguments`."""
    given = [n for n in differentiable if arguments.get(n) is not None]
    precision = _result_precision(out)

    def pullback(cotangent):
        ct = _check_cotangent(cotangent, out)
        grads = backward(ct)
        result = {}
        for name in given:
            if name not in grads or grads[name] is None:
                raise RuntimeError(
                    f"the pullback of {fun.__name__} gave no gradient for {name!r}"
                )
            result[name] = _as_argument_gradient(grads[name], arguments[name],
                                                 precision)
        return result

    return pullback


def _conj(x):
    return x.conj() if x.dtype.kind == "c" else x


def _summed_correlation(x, c, workers=None):
    """sum over the leading axes of r_m = sum_j conj(x_j) c_{j+m}, m < n."""
    import scipy.fft

    n = c.shape[-1]
    if n == 0 or c.size == 0:
        return np.zeros(n, dtype=c.dtype)
    x = np.broadcast_to(x, c.shape).reshape(-1, n)
    c = c.reshape(-1, n)
    size = scipy.fft.next_fast_len(max(2 * n - 1, 1), real=c.dtype.kind != "c")
    if c.dtype.kind == "c":
        S = np.sum(np.conj(scipy.fft.fft(x, size, workers=workers))
                   * scipy.fft.fft(c, size, workers=workers), axis=0)
        r = scipy.fft.ifft(S, size, workers=workers)
    else:
        S = np.sum(np.conj(scipy.fft.rfft(x, size, workers=workers))
                   * scipy.fft.rfft(c, size, workers=workers), axis=0)
        r = scipy.fft.irfft(S, size, workers=workers)
    return r[:n].astype(c.dtype, copy=False)


def causal_conv_pullback(conv, kernel, x, c, axis, dtype, workers=None):
    """Gradients of ``y = conv(kernel, x)``, the truncated causal convolution.

    ``y_i = sum_{j<=i} k_{i-j} x_j`` along `axis` (of `x`, and of `kernel`
    counted from the end; a 1-D kernel serves every channel). Its adjoint is
    the same convolution run backwards in time:
    ``gx = flip(conv(conj(k), flip(c)))`` and
    ``gk_m = sum_i c_i conj(x_{i-m}) = flip(conv(conj(x), flip(c)))_m``,
    zero for taps at or beyond n. Both are computed in one frequency domain
    of size >= n + min(K, n) - 1 (nothing wraps): with C, X, Kf the FFTs of
    c, x and the kernel's first min(K, n) taps, gx = ifft(conj(Kf) C) and
    gk = ifft(conj(X) C) (summed over the channels for a 1-D kernel), three
    transforms of the signal's size, as the forward's two. `conv(kernel, x,
    axis)` is the forward, used only for empty operands; `workers` goes to
    scipy.fft.
    Returns (gk, gx); gk has x's broadcast dimensions, the mechanism sums
    them back.
    """
    import scipy.fft

    kernel = np.asarray(kernel)
    x = np.asarray(x)
    c = np.asarray(c, dtype=dtype)
    neg = (axis % x.ndim) - x.ndim          # the time axis, from the end
    n = c.shape[neg]
    K = kernel.shape[0] if kernel.ndim == 1 else kernel.shape[neg]
    if c.size == 0 or K == 0:
        return _causal_conv_pullback_composed(conv, kernel, x, c, neg, dtype,
                                              workers)
    m = min(K, n)
    cm = np.moveaxis(c, neg, -1)
    xm = np.moveaxis(x, neg, -1).astype(dtype, copy=False)
    km = (kernel if kernel.ndim == 1 else np.moveaxis(kernel, neg, -1))[..., :m]
    km = km.astype(dtype, copy=False)
    real = dtype.kind != "c"
    size = scipy.fft.next_fast_len(n + m - 1, real=real)
    fft, ifft = ((scipy.fft.rfft, scipy.fft.irfft) if real
                 else (scipy.fft.fft, scipy.fft.ifft))
    Cf = fft(cm, size, workers=workers)
    Kf = fft(km, size, workers=workers)
    np.conjugate(Kf, out=Kf)
    gx = ifft(Cf * Kf, size, workers=workers)[..., :n]
    Xf = fft(xm, size, workers=workers)
    np.conjugate(Xf, out=Xf)
    if kernel.ndim == 1:
        # one kernel for every channel: the channels' correlations are
        # added in the frequency domain and inverted once
        if Xf.shape == np.broadcast_shapes(Xf.shape, Cf.shape):
            Xf *= Cf
        else:
            Xf = Xf * Cf
        S = Xf.reshape(-1, Xf.shape[-1]).sum(axis=0)
        gk = ifft(S, size, workers=workers)[:m]
        kax = 0
    else:
        Xf = Xf * Cf
        gk = np.moveaxis(ifft(Xf, size, workers=workers, overwrite_x=True)[..., :m],
                         -1, neg)
        kax = neg
    if K > m:
        pad = list(gk.shape)
        pad[kax] = K - m
        gk = np.concatenate([gk, np.zeros(pad, dtype=gk.dtype)], axis=kax)
    gx = np.moveaxis(gx.astype(dtype, copy=False), -1, neg)
    return gk.astype(dtype, copy=False), gx


def _causal_conv_pullback_composed(conv, kernel, x, c, neg, dtype, workers):
    """causal_conv_pullback by the forward convolution run backwards."""
    n = c.shape[neg]
    cf = np.flip(c, neg)
    kc = _conj(np.asarray(kernel, dtype=dtype))
    gx = np.flip(conv(kc, cf, neg), neg)
    xc = _conj(np.asarray(x, dtype=dtype))
    if kernel.ndim == 1:
        # one kernel for every channel: the channels' cross-correlations
        # sum_j conj(x_j) c_{j+m} are added in the frequency domain (zero
        # padding to >= 2n - 1, so nothing wraps) and inverted once
        K = kernel.shape[0]
        gk_full = _summed_correlation(np.moveaxis(np.asarray(x, dtype=dtype), neg, -1),
                                      np.moveaxis(c, neg, -1), workers)
        kax = 0
    else:
        kax = neg
        K = kernel.shape[kax]
        gk_full = np.flip(conv(xc, cf, neg), neg)
    m = min(K, n)
    gk = np.take(gk_full, np.arange(m), axis=kax)
    if K > m:
        pad = list(gk.shape)
        pad[kax] = K - m
        gk = np.concatenate([gk, np.zeros(pad, dtype=gk.dtype)], axis=kax)
    return gk, gx
