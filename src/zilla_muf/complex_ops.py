r"""Complex arithmetic of diagonal state space models (S4D, DSS, Mamba).

A diagonal SSM with complex eigenvalues :math:`\lambda` steps its state with
:math:`e^{\Delta \lambda}` and, storing one member of each conjugate pair,
reads a real output as :math:`2 \operatorname{Re} \sum_i C_i h_i`:

- :func:`~zilla_muf.complex_exp` -- the elementwise complex exponential;
- :func:`~zilla_muf.diag_complex_matrix_exp` -- :math:`e^{\Delta \lambda}`,
  the diagonal of :math:`\exp(\Delta \operatorname{diag}(\lambda))`;
- :func:`~zilla_muf.conjugate_pair_output` -- the real readout of a
  half-spectrum state.
"""

import math

import numpy as np

from . import _complex_ops
from ._docs import fill_doc
from ._validation import (
    as_array,
    broadcast_shapes,
    complex_dtype,
    dtype_operand,
    normalize_axis,
    real_dtype,
    require_real,
    resolve_workers,
    result_dtype,
)

__all__ = ["complex_exp", "conjugate_pair_output", "diag_complex_matrix_exp"]


def _exp(z, delta, name, workers):
    nthreads = resolve_workers(workers)
    z_raw, z = z, as_array(z, name)
    d = None if delta is None else as_array(delta, "delta")
    require_real(delta=d)
    cdt = complex_dtype(result_dtype(**{name: dtype_operand(z_raw, z),
                                        "delta": dtype_operand(delta, d)}))
    rdt = real_dtype(cdt)
    shape = z.shape if d is None else broadcast_shapes(**{name: z.shape, "delta": d.shape})
    size = math.prod(shape)
    zc = np.ascontiguousarray(np.broadcast_to(z, shape), dtype=cdt).reshape(size)
    if d is None:
        dd = np.empty(0, dtype=rdt)
    else:
        dd = np.ascontiguousarray(np.broadcast_to(d, shape), dtype=rdt).reshape(size)
    out = np.empty(size, dtype=cdt)
    _complex_ops.exp_scaled(zc.view(rdt), dd, out.view(rdt), nthreads)
    out = out.reshape(shape)
    return out[()] if out.ndim == 0 else out


@fill_doc
def complex_exp(z, *, workers=None):
    r"""Complex exponential :math:`e^{z}`, elementwise.

    Parameters
    ----------
    z : array_like
        Complex64 or complex128 (real input is promoted: float32 to
        complex64, float64 and integers to complex128).
    %(workers)s

    Returns
    -------
    w : ndarray
        Same shape as `z`, complex.

    Raises
    ------
    TypeError
        If `z` is not numeric.
    ValueError
        If `workers` is 0.

    See Also
    --------
    diag_complex_matrix_exp
    numpy.exp

    Notes
    -----
    .. math::

        e^{x + iy} = e^{x} (\cos y + i \sin y),

    computed in double precision; for :math:`y = 0` the imaginary part is
    an exact 0 (so :math:`e^{+\infty + 0i} = +\infty + 0i`).

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import complex_exp
    >>> complex_exp([0.0, 1j * np.pi / 2])
    array([1.000000e+00+0.j, 6.123234e-17+1.j])
    """
    return _exp(z, None, "z", workers)


@fill_doc
def diag_complex_matrix_exp(eigs, delta=None, *, workers=None):
    r"""Exponential of a diagonal matrix: :math:`e^{\Delta \lambda}` elementwise.

    Parameters
    ----------
    eigs : array_like
        The eigenvalues :math:`\lambda`, complex (real input is promoted).
    delta : array_like, optional
        Real step, broadcast against `eigs`. Default 1.
    %(workers)s

    Returns
    -------
    d : ndarray
        The diagonal of :math:`\exp(\Delta \operatorname{diag}(\lambda))`,
        the broadcast shape of `eigs` and `delta`, complex.

    Raises
    ------
    TypeError
        If an input is not numeric or `delta` is complex.
    ValueError
        If `eigs` and `delta` do not broadcast, or `workers` is 0.

    See Also
    --------
    complex_exp, zoh_discretize
    scipy.linalg.expm : the same for ``np.diag(delta * eigs)``.

    Notes
    -----
    For :math:`\lambda = a + ib` and real :math:`\Delta`,

    .. math::

        e^{\Delta \lambda} = e^{\Delta a} (\cos \Delta b + i \sin \Delta b),

    with :math:`\Delta a` and :math:`\Delta b` formed as real products (no
    complex multiplication, so no spurious NaN from infinite parts).

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import diag_complex_matrix_exp
    >>> diag_complex_matrix_exp([-1.0 + 0j, 1j * np.pi], delta=0.5)
    array([6.0653066e-01+0.j, 6.1232340e-17+1.j])
    """
    return _exp(eigs, delta, "eigs", workers)


@fill_doc
def conjugate_pair_output(C, h, axis=-1, *, workers=None):
    r"""Real output :math:`2 \operatorname{Re} \sum_i C_i h_i` of a half spectrum.

    A real diagonal system with complex eigenvalues stores one member of each
    conjugate pair; the other member contributes the complex conjugate, so
    the full sum is twice the real part of the stored half.

    Parameters
    ----------
    C : array_like
        Output weights, complex (real is accepted), broadcast against `h`.
    h : array_like
        States, complex, broadcast against `C`.
    axis : int, optional
        The state axis summed over (of the broadcast shape). Default -1.
    %(workers)s

    Returns
    -------
    y : ndarray
        The broadcast shape without `axis`, real (float32 for complex64
        inputs, float64 for complex128).

    Raises
    ------
    TypeError
        If an input is not numeric.
    ValueError
        If `C` and `h` do not broadcast, `axis` is out of range or `workers`
        is 0.

    See Also
    --------
    diag_complex_matrix_exp

    Notes
    -----
    .. math::

        y = \sum_i C_i h_i + \sum_i \overline{C_i} \, \overline{h_i}
          = 2 \sum_i (\operatorname{Re} C_i \operatorname{Re} h_i
                     - \operatorname{Im} C_i \operatorname{Im} h_i),

    accumulated in double precision.

    .. versionadded:: 0.1.0

    Examples
    --------
    >>> from zilla_muf import conjugate_pair_output
    >>> conjugate_pair_output([1 + 1j, 2.0], [1 - 1j, 1j])
    np.float64(4.0)
    """
    nthreads = resolve_workers(workers)
    C_in, h_in = C, h
    C = as_array(C, "C")
    h = as_array(h, "h")
    cdt = complex_dtype(result_dtype(C=dtype_operand(C_in, C),
                                     h=dtype_operand(h_in, h)))
    rdt = real_dtype(cdt)
    shape = broadcast_shapes(C=C.shape, h=h.shape)
    if len(shape) == 0:
        raise ValueError("`C` and `h` must have at least one dimension (the "
                         "state axis), got shapes () and ()")
    ax = normalize_axis(axis, len(shape))
    moved = tuple(s for i, s in enumerate(shape) if i != ax) + (shape[ax],)
    rows = math.prod(moved[:-1])
    n = moved[-1]

    def layout(x):
        x = np.moveaxis(np.broadcast_to(x, shape), ax, -1)
        return np.ascontiguousarray(x, dtype=cdt).reshape(rows, n).view(rdt)

    out = np.empty(rows, dtype=rdt)
    _complex_ops.conj_pair_rows(layout(C), layout(h), out, nthreads)
    out = out.reshape(moved[:-1])
    return out[()] if out.ndim == 0 else out


# Gradients (holomorphic maps: gz = conj(f'(z)) c; delta is real)

from ._vjp import defvjp  # noqa: E402


@defvjp(complex_exp, "z")
def _complex_exp_vjp(args):
    # keeps the output y = exp(z): gz = conj(y) c
    y = complex_exp(**args)

    def backward(c):
        return {"z": np.conj(y) * c}

    return y, backward


@defvjp(diag_complex_matrix_exp, "eigs", "delta")
def _diag_complex_matrix_exp_vjp(args):
    # keeps eigs, delta and y = exp(delta eigs):
    # g_eigs = conj(delta y) c, g_delta = Re(conj(eigs y) c)
    y = diag_complex_matrix_exp(**args)

    def backward(c):
        yc = np.conj(y) * c
        lam = np.asarray(args["eigs"])
        d = args["delta"]
        d = 1.0 if d is None else np.asarray(d)
        return {"eigs": d * yc, "delta": np.real(np.conj(lam) * yc)}

    return y, backward


@defvjp(conjugate_pair_output, "C", "h")
def _conjugate_pair_output_vjp(args):
    # keeps C and h. y = sum C h + conj(C h), real: gC = 2 conj(h) c,
    # gh = 2 conj(C) c, the cotangent spread along the summed axis
    y = conjugate_pair_output(**args)

    def backward(c):
        C = np.asarray(args["C"])
        h = np.asarray(args["h"])
        ndim = max(C.ndim, h.ndim)
        ax = normalize_axis(args["axis"], ndim)
        shape = np.broadcast_shapes(C.shape, h.shape)
        c = np.asarray(c)
        c2 = 2 * np.expand_dims(c, ax)
        gh = np.broadcast_to(np.conj(C) * c2, shape)
        if C.shape == shape[-1:] and h.shape == shape and ax == ndim - 1:
            # one C for every row: gC = 2 conj(sum_rows c h), a product with
            # the (rows, N) states, no (rows, N) temporary (einsum's own
            # loop: no threaded BLAS behind the caller's `workers`)
            N = shape[-1]
            hc = h.reshape(-1, N)
            gC = 2 * np.conj(np.einsum("r,rn->n", c.reshape(-1).astype(hc.dtype), hc))
            return {"C": gC.reshape(C.shape), "h": gh}
        return {"C": np.broadcast_to(np.conj(h) * c2, shape), "h": gh}

    return y, backward
