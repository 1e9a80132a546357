"""Oracles for the pullbacks of zilla_muf.vjp (a helper, not a test module).

Two independent references, both built from the float64/complex128 forward
only, never from a pullback:

- the dense Jacobian, column by column: every real coordinate of the
  argument (real and imaginary parts separately) is moved by +-eps and the
  forward's change, as a real vector of the outputs' real and imaginary
  parts, is one column; the gradient of L = sum Re(conj(c) y) is then
  J^T [Re c; Im c], put back as dL/dRe + 1j dL/dIm;
- the directional derivative of L along random directions by central
  differences, compared with <grad, v> (cheap: any shape).
"""

import numpy as np

import zilla_muf


def _outputs(out):
    return out if isinstance(out, tuple) else (out,)


def _flat_real(arrays):
    parts = []
    for y in arrays:
        y = np.asarray(y)
        parts.append(np.real(y).ravel().astype(np.float64))
        if y.dtype.kind == "c":
            parts.append(np.imag(y).ravel().astype(np.float64))
    return np.concatenate(parts) if parts else np.zeros(0)


def _call(fun, kwargs, name, value):
    kw = dict(kwargs)
    kw[name] = value
    return _outputs(fun(**kw))


def _real_coords(x):
    """The real coordinates of x: (list of (index, unit)) in a fixed order."""
    x = np.asarray(x)
    coords = [(i, 1.0) for i in np.ndindex(x.shape)]
    if x.dtype.kind == "c":
        coords += [(i, 1j) for i in np.ndindex(x.shape)]
    return coords


def jacobian(fun, kwargs, name, eps=1e-6):
    """The real Jacobian of the outputs' real parts w.r.t. argument `name`."""
    x = np.asarray(kwargs[name])
    cols = []
    for idx, unit in _real_coords(x):
        xp = x.copy()
        xm = x.copy()
        xp[idx] += unit * eps
        xm[idx] -= unit * eps
        yp = _flat_real(_call(fun, kwargs, name, xp))
        ym = _flat_real(_call(fun, kwargs, name, xm))
        # outputs that are -inf (segsum above the diagonal) do not move
        with np.errstate(invalid="ignore"):
            cols.append(np.where(yp == ym, 0.0, yp - ym) / (2 * eps))
    return np.stack(cols, axis=1) if cols else np.zeros((0, 0))


def gradient_from_jacobian(J, cotangent, out, x):
    """J^T [Re c; Im c] shaped as the argument x (complex convention)."""
    cts = _outputs(cotangent)
    outs = _outputs(out)
    cvec = _flat_real([np.zeros(np.shape(y), np.asarray(y).dtype) if c is None
                       else np.asarray(c, dtype=np.asarray(y).dtype)
                       for c, y in zip(cts, outs)])
    g = J.T @ cvec
    x = np.asarray(x)
    if x.dtype.kind == "c":
        half = x.size
        return (g[:half] + 1j * g[half:]).reshape(x.shape)
    return g.reshape(x.shape)


def random_cotangent(rng, out):
    def one(y):
        y = np.asarray(y)
        c = rng.standard_normal(y.shape)
        if y.dtype.kind == "c":
            c = c + 1j * rng.standard_normal(y.shape)
        return np.where(np.isfinite(y), c, 0)   # no weight on -inf outputs
    if isinstance(out, tuple):
        return tuple(one(y) for y in out)
    return one(out)


def check_dense(fun, kwargs, names, rng, rtol=1e-6, eps=1e-6, ncot=2):
    """Pullbacks of random and basis cotangents against the dense Jacobian."""
    out, pullback = zilla_muf.vjp(fun, **kwargs)
    jacs = {n: jacobian(fun, kwargs, n, eps) for n in names}
    cots = [random_cotangent(rng, out) for _ in range(ncot)]
    for c in cots:
        grads = pullback(c)
        assert set(grads) >= set(names)
        for n in names:
            want = gradient_from_jacobian(jacs[n], c, out, kwargs[n])
            got = grads[n]
            assert got.shape == np.shape(kwargs[n]), (n, got.shape)
            assert (got.dtype.kind == "c") == (np.asarray(kwargs[n]).dtype.kind == "c")
            scale = max(np.max(np.abs(want)) if want.size else 0.0, 1e-300)
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale,
                                       err_msg=f"gradient of {n}")
    return out, pullback


def check_directional(fun, kwargs, names, rng, rtol=1e-6, eps=1e-6, ndir=2):
    """<grad, v> against the central difference of L along random v."""
    out, pullback = zilla_muf.vjp(fun, **kwargs)
    c = random_cotangent(rng, out)
    grads = pullback(c)
    cts = _outputs(c)

    def loss(kw):
        """L at kw, and the sum of its terms' magnitudes (its rounding scale)."""
        total = size = 0.0
        for ci, y in zip(cts, _outputs(fun(**kw))):
            y = np.asarray(y)
            y = np.where(np.isfinite(y), y, 0)
            terms = np.real(np.conj(ci) * y)
            total += float(np.sum(terms))
            size += float(np.sum(np.abs(terms)))
        return total, size

    for n in names:
        x = np.asarray(kwargs[n])
        g = grads[n]
        assert g.shape == x.shape
        for _ in range(ndir):
            v = rng.standard_normal(x.shape)
            if x.dtype.kind == "c":
                v = v + 1j * rng.standard_normal(x.shape)
            kp = dict(kwargs)
            km = dict(kwargs)
            kp[n] = x + eps * v
            km[n] = x - eps * v
            (lp, sp), (lm, sm) = loss(kp), loss(km)
            fd = (lp - lm) / (2 * eps)
            # the difference's own rounding: a few ulps of the terms of L,
            # divided by 2 eps (it dominates where <g, v> is small next to L)
            noise = 8 * np.finfo(np.float64).eps * (sp + sm) / (2 * eps)
            # <g, v> in the real inner product of (Re, Im) coordinates
            an = float(np.sum(np.real(g) * np.real(v) + np.imag(g) * np.imag(v)))
            scale = float(np.sum(np.abs(g) * np.abs(v))) + 1e-300
            assert abs(fd - an) <= rtol * scale + noise + 1e-10, (n, fd, an, noise)
    return grads
