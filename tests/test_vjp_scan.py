"""Gradients of the four scans through zilla_muf.vjp.

Oracles: the dense Jacobian of the float64/complex128 forward built column
by column, central differences of the loss along random directions, the
dense lower-triangular matrix of the scan (a float64 Python loop), and the
identity that the adjoint of a scan is the reverse scan.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zilla_muf
from gradcheck import check_dense, check_directional

SCANS = [zilla_muf.sequential_scan, zilla_muf.chunked_scan,
         zilla_muf.associative_scan, zilla_muf.linear_scan]


def _rand(rng, shape, complex_=False):
    x = rng.uniform(-0.9, 0.9, shape)
    if complex_:
        x = x + 1j * rng.uniform(-0.9, 0.9, shape)
    return x


@pytest.mark.parametrize("fun", SCANS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_dense_jacobian(fun, complex_, reverse, rng):
    a = _rand(rng, (2, 5), complex_)
    b = _rand(rng, (2, 5), complex_)
    h0 = _rand(rng, (2,), complex_)
    check_dense(fun, dict(a=a, b=b, h0=h0, reverse=reverse), ["a", "b", "h0"], rng)


@pytest.mark.parametrize("fun", SCANS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_return_final_tuple_cotangent(fun, reverse, rng):
    a = _rand(rng, (3, 4), True)
    b = _rand(rng, (3, 4), True)
    h0 = _rand(rng, (4,), True)
    kw = dict(a=a, b=b, h0=h0, axis=0, reverse=reverse, return_final=True)
    check_dense(fun, kw, ["a", "b", "h0"], rng)
    # None for the states: only the final state's cotangent acts
    out, pullback = zilla_muf.vjp(fun, **kw)
    cf = _rand(rng, out[1].shape, True)
    g_none = pullback((None, cf))
    g_zero = pullback((np.zeros_like(out[0]), cf))
    for k in g_none:
        np.testing.assert_array_equal(g_none[k], g_zero[k])


def _dense_scan_matrix(a, reverse):
    """M with h = M b (h0 = 0) for one channel, by a float64 Python loop."""
    n = len(a)
    M = np.zeros((n, n), dtype=np.result_type(a, float))
    order = range(n - 1, -1, -1) if reverse else range(n)
    for s in range(n):
        e = np.zeros(n, dtype=M.dtype)
        e[s] = 1
        h = 0
        for t in order:
            h = a[t] * h + e[t]
            M[t, s] = h
    return M


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_gradient_b_is_conjugate_transpose(reverse, rng):
    a = _rand(rng, 7, True)
    b = _rand(rng, 7, True)
    c = _rand(rng, 7, True)
    _, pullback = zilla_muf.vjp(zilla_muf.linear_scan, a, b, reverse=reverse)
    M = _dense_scan_matrix(a, reverse)
    np.testing.assert_allclose(pullback(c)["b"], M.conj().T @ c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_adjoint_is_reverse_scan_shifted_conjugated(reverse, rng):
    # gb == the reverse scan of c with decays conj(a) shifted one step
    a = _rand(rng, (3, 9), True)
    b = _rand(rng, (3, 9), True)
    c = _rand(rng, (3, 9), True)
    _, pullback = zilla_muf.vjp(zilla_muf.sequential_scan, a, b, reverse=reverse)
    if reverse:
        shifted = np.concatenate([np.zeros((3, 1)), a[:, :-1].conj()], axis=1)
    else:
        shifted = np.concatenate([a[:, 1:].conj(), np.zeros((3, 1))], axis=1)
    want = zilla_muf.sequential_scan(shifted, c, reverse=not reverse)
    np.testing.assert_allclose(pullback(c)["b"], want, rtol=1e-13, atol=1e-13)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    data=st.data(),
    reverse=st.booleans(),
    complex_=st.booleans(),
    fun=st.sampled_from(SCANS),
)
def test_scan_gradients_property(shape, data, reverse, complex_, fun):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    shape = tuple(shape)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    # a broadcast along a random subset of axes (size 1), h0 maybe absent
    a_shape = tuple(1 if data.draw(st.booleans()) else n for n in shape)
    a = _rand(rng, a_shape, complex_)
    b = _rand(rng, shape, complex_)
    kw = dict(a=a, b=b, axis=axis, reverse=reverse,
              return_final=data.draw(st.booleans()))
    names = ["a", "b"]
    if data.draw(st.booleans()):
        state = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
        kw["h0"] = _rand(rng, state[-1:] if state else (), complex_)
        names.append("h0")
    if fun is not zilla_muf.sequential_scan:
        kw["workers"] = data.draw(st.sampled_from([1, 2]))
    check_directional(fun, kw, names, rng, rtol=1e-6)


def test_scan_gradient_dtypes_and_broadcast_shapes(rng):
    a = np.float32(0.5)
    b = rng.standard_normal((2, 6)).astype(np.float32)
    h, pullback = zilla_muf.vjp(zilla_muf.linear_scan, np.full(6, a), b, h0=1.0)
    g = pullback(np.ones_like(h))
    assert g["a"].shape == (6,) and g["a"].dtype == np.float32
    assert g["b"].shape == (2, 6) and g["b"].dtype == np.float32
    assert g["h0"].shape == () and g["h0"].dtype == np.float32
    # d sum(h) / d h0 = sum over both rows of sum_t a^(t+1)
    want = 2 * sum(0.5 ** (t + 1) for t in range(6))
    np.testing.assert_allclose(g["h0"], want, rtol=1e-6)


def test_scan_empty_axis_final_cotangent(rng):
    a = np.zeros((2, 0))
    h0 = np.array([1.0, 2.0])
    out, pullback = zilla_muf.vjp(zilla_muf.linear_scan, a, a, h0=h0, return_final=True)
    g = pullback((None, np.array([3.0, 4.0])))
    np.testing.assert_array_equal(g["h0"], [3.0, 4.0])
    assert g["a"].shape == (2, 0)


def test_scan_pullback_uses_workers_and_agrees(rng):
    a = _rand(rng, (4, 3000), False)
    b = _rand(rng, (4, 3000), False)
    c = _rand(rng, (4, 3000), False)
    g1 = zilla_muf.vjp(zilla_muf.chunked_scan, a, b, workers=1)[1](c)
    g2 = zilla_muf.vjp(zilla_muf.chunked_scan, a, b, workers=2)[1](c)
    gs = zilla_muf.vjp(zilla_muf.sequential_scan, a, b)[1](c)
    for k in ("a", "b"):
        np.testing.assert_allclose(g1[k], gs[k], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(g2[k], gs[k], rtol=1e-12, atol=1e-12)


def test_scan_bad_cotangent():
    _, pullback = zilla_muf.vjp(zilla_muf.linear_scan, [0.5, 0.5], [1.0, 1.0],
                                return_final=True)
    with pytest.raises(ValueError, match="cotangent"):
        pullback(np.ones(2))
    with pytest.raises(ValueError, match="cotangent"):
        pullback((np.ones(3), None))
    _, pullback = zilla_muf.vjp(zilla_muf.linear_scan, [0.5, 0.5], [1.0, 1.0])
    with pytest.raises(ValueError, match="cotangent"):
        pullback(np.ones((2, 2)))


def test_unregistered_function_raises_type_error():
    with pytest.raises(TypeError, match="fun"):
        zilla_muf.vjp(np.cumsum, [1.0, 2.0])


def test_vjp_docstring_examples():
    import doctest

    import zilla_muf._vjp as mod
    tests = doctest.DocTestFinder(exclude_empty=True).find(mod, "zilla_muf._vjp",
                                                           globs={"np": np})
    tests = [t for t in tests if t.examples]
    assert any(t.name.endswith(".vjp") for t in tests)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS
                                   | doctest.NORMALIZE_WHITESPACE)
    with np.printoptions(legacy=False):
        for t in tests:
            runner.run(t)
    assert runner.summarize(verbose=False).failed == 0


def _loop_scan_gradients(a, b, h0, c, cf, reverse):
    """ga, gb, gh0 of sum(Re(conj(c) h)) + Re(conj(cf) h_final) for scans
    along the last axis: the forward states and then the chain rule step by
    step, in complex128 Python loops (vectorised across rows only)."""
    a = a.astype(np.complex128)
    b = b.astype(np.complex128)
    c = c.astype(np.complex128)
    n = a.shape[-1]
    order = list(range(n - 1, -1, -1)) if reverse else list(range(n))
    x = np.zeros(a.shape[:-1], np.complex128) if h0 is None else h0.astype(np.complex128)
    before = np.empty_like(a)
    for t in order:
        before[..., t] = x
        x = a[..., t] * x + b[..., t]
    ga = np.empty_like(a)
    gb = np.empty_like(a)
    g = np.zeros(a.shape[:-1], np.complex128) if cf is None else cf.astype(np.complex128)
    for t in reversed(order):
        g = g + c[..., t]
        gb[..., t] = g
        ga[..., t] = g * np.conj(before[..., t])
        g = np.conj(a[..., t]) * g
    return ga, gb, g


@pytest.mark.parametrize(("dtype", "stream"), [
    (np.float32, False), (np.float64, False), (np.complex64, False),
    (np.complex64, True), (np.complex128, False), (np.complex128, True)])
@pytest.mark.parametrize("n", [1, 3, 40, 8200])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_scan_rows_pullback_against_loop(dtype, stream, n, reverse, with_h0, rng,
                                         monkeypatch):
    # time last, rows enough for the fused row kernels (four per group for
    # complex, five rows: a full group and a partial one); n = 8200 crosses
    # their blocks of steps (8192 real, 1024 complex). stream: the complex
    # rows' outputs written by streaming stores whatever their size
    complex_ = np.dtype(dtype).kind == "c"
    monkeypatch.setattr(zilla_muf.scan, "_STREAM_BYTES", 0 if stream else 1 << 62)
    a = _rand(rng, (5, n), complex_).astype(dtype)
    b = _rand(rng, (5, n), complex_).astype(dtype)
    c = _rand(rng, (5, n), complex_).astype(dtype)
    cf = _rand(rng, (5,), complex_).astype(dtype)
    h0 = _rand(rng, (5,), complex_).astype(dtype) if with_h0 else None
    out, pullback = zilla_muf.vjp(zilla_muf.linear_scan, a, b, h0,
                                  reverse=reverse, return_final=True)
    g = pullback((c, cf))
    ga, gb, gh0 = _loop_scan_gradients(a, b, h0, c, cf, reverse)
    tol = 1e-4 if dtype in (np.float32, np.complex64) else 1e-11
    for name, want in (("a", ga), ("b", gb)) + ((("h0", gh0),) if with_h0 else ()):
        assert g[name].dtype == dtype
        np.testing.assert_allclose(g[name], want if complex_ else want.real,
                                   rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_rows_pullback_large_complex(dtype, reverse, rng, monkeypatch):
    # outputs of 4 MiB: the size from which the complex rows stream their
    # stores; the same bits as plain stores, and the loop's values
    n = (4 << 20) // (2 * 8 * np.dtype(dtype).itemsize)
    a, b, c = (_rand(rng, (8, n), True).astype(dtype) for _ in range(3))
    assert 2 * a.nbytes >= zilla_muf.scan._STREAM_BYTES
    _, pullback = zilla_muf.vjp(zilla_muf.linear_scan, a, b, reverse=reverse)
    g = pullback(c)
    monkeypatch.setattr(zilla_muf.scan, "_STREAM_BYTES", 1 << 62)
    plain = pullback(c)
    for name in ("a", "b"):
        np.testing.assert_array_equal(g[name], plain[name])
    ga, gb, _ = _loop_scan_gradients(a, b, None, c, None, reverse)
    tol = 1e-4 if dtype == np.complex64 else 1e-11
    for got, want in ((g["a"], ga), (g["b"], gb)):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
