"""Finite-difference oracle shared by the layer-gradient tests.

`fd_grads` differentiates L = sum(Re(conj(ct) * f(args))) by central
differences, one element at a time, in float64 (complex arguments get the
gradient dL/dRe + 1j dL/dIm, the convention of zilla_muf.vjp).
"""

import numpy as np


def _loss(fun, kwargs, ct):
    out = fun(**kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    cts = ct if isinstance(ct, tuple) else (ct,)
    total = 0.0
    for y, c in zip(outs, cts):
        if c is not None:
            total += float(np.sum(np.real(np.conj(c) * y)))
    return total


def fd_grads(fun, kwargs, ct, names, h=1e-6):
    """Central-difference gradients of the loss with respect to `names`."""
    grads = {}
    for name in names:
        base = np.array(kwargs[name], dtype=np.result_type(kwargs[name], np.float64))
        g = np.zeros_like(base)
        parts = (1.0, 1j) if base.dtype.kind == "c" else (1.0,)
        for idx in np.ndindex(base.shape):
            for unit in parts:
                plus = base.copy()
                minus = base.copy()
                plus[idx] += unit * h
                minus[idx] -= unit * h
                lp = _loss(fun, dict(kwargs, **{name: plus}), ct)
                lm = _loss(fun, dict(kwargs, **{name: minus}), ct)
                g[idx] += unit * (lp - lm) / (2 * h)
        grads[name] = g
    return grads


def random_cotangent(rng, out):
    """A random cotangent with the structure of `out`."""
    def one(y):
        c = rng.standard_normal(y.shape)
        if np.iscomplexobj(y):
            c = c + 1j * rng.standard_normal(y.shape)
        return c.astype(y.dtype)
    return tuple(one(y) for y in out) if isinstance(out, tuple) else one(out)


def assert_grads_close(got, want, rtol, names=None, floor=0.0):
    """Each gradient within `rtol` of the oracle, relative to its largest entry
    (or to `floor`, if larger: a gradient that is exactly zero in the oracle
    may come out as rounding noise of terms of that size)."""
    for name in (want if names is None else names):
        g = np.asarray(got[name])
        w = np.asarray(want[name])
        assert g.shape == w.shape, (name, g.shape, w.shape)
        scale = max(float(np.max(np.abs(w))) if w.size else 0.0, floor, 1e-300)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale,
                                   err_msg=f"gradient of {name}")
