"""Packed sequences and decoding for the Mamba-1 operations.

Oracles: packed calls against the lone calls of their sequences and a
float64 Python loop (scan) or np.convolve (convolution); decoding steps
against the whole-sequence functions on the extended sequence.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REAL_DTYPES, assert_close
from zilla_muf import (
    causal_conv1d,
    causal_conv1d_update,
    selective_scan,
    selective_scan_update,
)


def scan_loop(u, delta, A, B, C, D, z, h0=None):
    """float64 selective scan of (1, dim, L) with B, C (1, N, L)."""
    u, delta, A, B, C, D, z = (np.asarray(a, np.float64) for a in (u, delta, A, B, C, D, z))
    _, dim, L = u.shape
    h = np.zeros((dim, A.shape[1])) if h0 is None else np.array(h0[0], np.float64)
    y = np.zeros((1, dim, L))
    for t in range(L):
        h = np.exp(delta[0, :, t, None] * A) * h + (delta[0, :, t] * u[0, :, t])[:, None] * B[0, :, t]
        y[0, :, t] = h @ C[0, :, t] + D * u[0, :, t]
    return y * z / (1 + np.exp(-z)), h


def scan_problem(rng, lengths, dim=5, N=7, dtype=np.float64):
    L = int(sum(lengths))
    u = rng.standard_normal((1, dim, L)).astype(dtype)
    delta = rng.uniform(0.05, 0.8, (1, dim, L)).astype(dtype)
    A = -rng.uniform(0.2, 2.0, (dim, N)).astype(dtype)
    B = rng.standard_normal((1, N, L)).astype(dtype)
    C = rng.standard_normal((1, N, L)).astype(dtype)
    D = rng.standard_normal(dim).astype(dtype)
    z = rng.standard_normal((1, dim, L)).astype(dtype)
    seq = np.repeat(np.arange(len(lengths)), lengths)[None]
    cu = np.concatenate([[0], np.cumsum(lengths)])
    return [u, delta, A, B, C, D, z], seq, cu


def cut(args, lo, hi):
    u, delta, A, B, C, D, z = args
    return [u[..., lo:hi], delta[..., lo:hi], A, B[..., lo:hi], C[..., lo:hi], D, z[..., lo:hi]]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("lengths", [[1024, 6, 1100, 1], [2500], [1023, 1, 1500]])
def test_selective_scan_long_rows_in_time_blocks(rng, lengths, workers):
    # rows longer than the kernel's time block (1024 steps) and more
    # channels than a group (16): sequences start on, just before and after
    # a block edge; against the float64 loop, each sequence alone
    args, seq, cu = scan_problem(rng, lengths, dim=19, N=5)
    h0 = rng.standard_normal((1, 19, 5))
    y, last = selective_scan(*args, seq_idx=seq, initial_state=h0,
                             return_last_state=True, workers=workers)
    for k in range(len(lengths)):
        want, h = scan_loop(*cut(args, cu[k], cu[k + 1]),
                            h0=h0 if k == 0 else None)
        assert_close(y[..., cu[k]:cu[k + 1]], want, np.float64, 100)
    assert_close(last[0], h, np.float64, 100)
    # without seq_idx: one sequence through every block
    y1, last1 = selective_scan(*args, initial_state=h0, return_last_state=True,
                               workers=workers)
    want, h = scan_loop(*args, h0=h0)
    assert_close(y1, want, np.float64, 100)
    assert_close(last1[0], h, np.float64, 100)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("lengths", [[3, 1, 17, 1, 40, 2], [1] * 7, [64]])
def test_selective_scan_packed_equals_alone(rng, dtype, lengths):
    args, seq, cu = scan_problem(rng, lengths, dtype=dtype)
    h0 = rng.standard_normal((1, 5, 7)).astype(dtype)
    y, last = selective_scan(*args, seq_idx=seq, initial_state=h0,
                             return_last_state=True, workers=2)
    for k in range(len(lengths)):
        a = cut(args, cu[k], cu[k + 1])
        init = h0 if k == 0 else None
        y_k, h_k = selective_scan(*a, initial_state=init, return_last_state=True)
        assert_close(y[..., cu[k]:cu[k + 1]], y_k, dtype, 10)
        y_ref, h_ref = scan_loop(*a, h0=init)
        assert_close(y[..., cu[k]:cu[k + 1]], y_ref, dtype, 50)
    assert_close(last, h_k, dtype, 10)


@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_selective_scan_nonfinite_stays_in_its_sequence(rng, poison):
    lengths = [4, 6, 5, 9]
    args, seq, cu = scan_problem(rng, lengths)
    args[0][0, 2, 5] = poison          # sequence 1
    args[3][0, 1, 7] = poison
    y = selective_scan(*args, seq_idx=seq)
    for k in (0, 2, 3):
        y_k = selective_scan(*cut(args, cu[k], cu[k + 1]))
        assert np.isfinite(y[..., cu[k]:cu[k + 1]]).all()
        assert_close(y[..., cu[k]:cu[k + 1]], y_k, np.float64, 10)


def test_selective_scan_complex_packed(rng):
    lengths = [5, 1, 9]
    args, seq, cu = scan_problem(rng, lengths)
    args[2] = args[2] + 1j * rng.uniform(-3, 3, args[2].shape)
    y = selective_scan(*args, seq_idx=seq)
    for k in range(3):
        assert_close(y[..., cu[k]:cu[k + 1]],
                     selective_scan(*cut(args, cu[k], cu[k + 1])), np.float64, 10)


def test_seq_idx_checks(rng):
    args, seq, cu = scan_problem(rng, [3, 4])
    with pytest.raises(ValueError, match="seq_idx"):
        selective_scan(*args, seq_idx=seq[:, ::-1])
    with pytest.raises(ValueError, match="seq_idx"):
        selective_scan(*args, seq_idx=seq[:, :5])
    with pytest.raises(TypeError, match="seq_idx"):
        selective_scan(*args, seq_idx=seq.astype(float))
    with pytest.raises(ValueError, match="seq_idx"):
        causal_conv1d(args[0], np.ones((5, 3)), seq_idx=seq[:, :5])


def conv_loop(x, w, b, init):
    """np.convolve per channel of one (dim, L) row preceded by init."""
    dim, L = x.shape
    W = w.shape[1]
    out = np.empty((dim, L))
    for d in range(dim):
        ext = np.concatenate([init[d], x[d]])
        out[d] = np.convolve(ext, w[d, ::-1], mode="valid")[-L:] + b[d]
    return out


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("W", [1, 2, 4])
def test_causal_conv1d_packed_equals_alone(rng, dtype, activation, W):
    lengths = [1, 2, 5, 1, 8]
    L = sum(lengths)
    x = rng.standard_normal((2, 3, L)).astype(dtype)
    w = rng.standard_normal((3, W)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    init = rng.standard_normal((2, 3, W - 1)).astype(dtype)
    seq = np.repeat(np.arange(5), lengths)[None].repeat(2, 0)
    cu = np.concatenate([[0], np.cumsum(lengths)])
    out, final = causal_conv1d(x, w, b, activation=activation, initial_states=init,
                               seq_idx=seq, return_final_states=True, workers=2)
    for k in range(5):
        lo, hi = cu[k], cu[k + 1]
        h0 = init if k == 0 else None
        o_k, f_k = causal_conv1d(x[..., lo:hi], w, b, activation=activation,
                                 initial_states=h0, return_final_states=True)
        assert_close(out[..., lo:hi], o_k, dtype, 10)
        for r in range(2):
            ref = conv_loop(x[r, :, lo:hi], w, b,
                            init[r] if k == 0 else np.zeros((3, W - 1)))
            if activation:
                ref = ref / (1 + np.exp(-ref))
            assert_close(out[r, :, lo:hi], ref, dtype, 10)
    np.testing.assert_array_equal(final, f_k)
    # NaN in sequence 2 stays there
    xn = x.copy()
    xn[:, 1, cu[2] + 1] = np.nan
    outn = causal_conv1d(xn, w, b, activation=activation, initial_states=init, seq_idx=seq)
    keep = np.ones(L, bool)
    keep[cu[2]:cu[3]] = False
    np.testing.assert_array_equal(outn[..., keep], out[..., keep])


# ---------------------------------------------------------------------------
# Decoding steps
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("groups", [None, 1, 5])
def test_selective_scan_update_is_the_last_step(rng, dtype, groups):
    batch, dim, N, L = 3, 5, 7, 6
    u = rng.standard_normal((batch, dim, L)).astype(dtype)
    delta = rng.uniform(-1, 1, (batch, dim, L)).astype(dtype)
    A = -rng.uniform(0.2, 2.0, (dim, N)).astype(dtype)
    shape = (batch, N, L) if groups is None else (batch, groups, N, L)
    B = rng.standard_normal(shape).astype(dtype)
    C = rng.standard_normal(shape).astype(dtype)
    D = rng.standard_normal(dim).astype(dtype)
    z = rng.standard_normal((batch, dim, L)).astype(dtype)
    bias = rng.standard_normal(dim).astype(dtype)
    kw = dict(D=D, delta_bias=bias, delta_softplus=True)
    y_all = selective_scan(u, delta, A, B, C, z=z, **kw)
    state = np.zeros((batch, dim, N), dtype)
    for t in range(L):
        y_t = selective_scan_update(state, u[..., t], delta[..., t], A,
                                    B[..., t], C[..., t], D=D, z=z[..., t],
                                    dt_bias=bias, dt_softplus=True)
        assert y_t.dtype == dtype
        assert_close(y_t, y_all[..., t], dtype, 10)
    _, last = selective_scan(u, delta, A, B, C, z=z, **kw, return_last_state=True)
    assert_close(state, last, dtype, 10)


def _step_loop(h, x, dt, A, B, C, D, z, bias, softplus):
    """float64 oracle of one token: (y, new state) for rows of h (batch, dim, N)."""
    h, x, dt, A, B, C = (np.asarray(a, np.float64) for a in (h, x, dt, A, B, C))
    d = dt + (0 if bias is None else np.asarray(bias, np.float64))
    if softplus:
        d = np.log1p(np.exp(d))
    h = np.exp(d[:, :, None] * A) * h + (d * x)[:, :, None] * B[:, None]
    y = np.einsum("bdn,bn->bd", h, C)
    if D is not None:
        y = y + np.asarray(D, np.float64) * x
    if z is not None:
        z = np.asarray(z, np.float64)
        y = y * z / (1 + np.exp(-z))
    return y, h


def _step_problem(rng, dtype, batch, dim, N, pool, optional):
    """A random one-token problem of real A: a (pool, dim, N) state, x, dt,
    A, B, C, and D, z, dt_bias (None unless `optional`)."""
    state = rng.standard_normal((pool, dim, N)).astype(dtype)
    x = rng.standard_normal((batch, dim)).astype(dtype)
    dt = rng.uniform(-1, 1, (batch, dim)).astype(dtype)
    A = -rng.uniform(0.2, 2.0, (dim, N)).astype(dtype)
    B = rng.standard_normal((batch, N)).astype(dtype)
    C = rng.standard_normal((batch, N)).astype(dtype)
    D = z = bias = None
    if optional:
        D = rng.standard_normal(dim).astype(dtype)
        z = rng.standard_normal((batch, dim)).astype(dtype)
        bias = rng.standard_normal(dim).astype(dtype)
    return state, x, dt, A, B, C, D, z, bias


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("optional", [False, True])
@pytest.mark.parametrize("b_shape", ["flat", "one group"])
@pytest.mark.parametrize("dim", [6, 150])
def test_selective_scan_update_real_pool_against_a_loop(rng, dtype, optional, b_shape,
                                                        dim):
    # N not a multiple of the vector width; dim 150: channels in three blocks
    batch, N, pool = 3, 19, 5
    rows = [3, 0, 4]
    state, x, dt, A, B, C, D, z, bias = _step_problem(rng, dtype, batch, dim, N, pool,
                                                      optional)
    before = state.copy()
    if not optional:
        dt = np.abs(dt)
    Bp, Cp = (B, C) if b_shape == "flat" else (B[:, None], C[:, None])
    y = selective_scan_update(state, x, dt, A, Bp, Cp, D=D, z=z, dt_bias=bias,
                              dt_softplus=optional, state_batch_indices=rows)
    y_ref, h_ref = _step_loop(before[rows], x, dt, A, B, C, D, z, bias, optional)
    assert y.dtype == dtype
    assert_close(y, y_ref, dtype, 20)
    assert_close(state[rows], h_ref, dtype, 20)
    np.testing.assert_array_equal(state[[1, 2]], before[[1, 2]])
    # without a pool, the state itself
    own = before[rows].copy()
    y2 = selective_scan_update(own, x, dt, A, Bp, Cp, D=D, z=z, dt_bias=bias,
                               dt_softplus=optional)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(own, state[rows])


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_selective_scan_update_threads_over_batch_rows(rng, dtype):
    # 7 x 160 x 64 state elements (above the one-thread limit of 65536), a
    # pool: the same bits on one, two and three threads, against the loop
    batch, dim, N, pool = 7, 160, 64, 9
    rows = [8, 0, 3, 5, 1, 7, 2]
    state, x, dt, A, B, C, D, z, bias = _step_problem(rng, dtype, batch, dim, N, pool,
                                                      True)
    before = state.copy()
    results = []
    for workers in (None, 2, 3):
        st = before.copy()
        y = selective_scan_update(st, x, dt, A, B, C, D=D, z=z, dt_bias=bias,
                                  dt_softplus=True, state_batch_indices=rows,
                                  workers=workers)
        results.append((y, st))
    y_ref, h_ref = _step_loop(before[rows], x, dt, A, B, C, D, z, bias, True)
    assert_close(results[0][0], y_ref, dtype, 20)
    assert_close(results[0][1][rows], h_ref, dtype, 20)
    np.testing.assert_array_equal(results[0][1][[4, 6]], before[[4, 6]])
    for y, st in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(st, results[0][1])
    # the kernel itself on 2 and 3 threads (the public call caps its
    # threads at the free cores)
    from zilla_muf import _selective
    for threads in (2, 3):
        h = before[rows]
        y = np.empty((batch, dim), dtype)
        _selective.mamba_step(x, dt, A, B, C, D, z, bias, True, True, True, h, y,
                              threads)
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(h, results[0][1][rows])
    for bad in (0, -100000):
        with pytest.raises(ValueError, match="workers"):
            selective_scan_update(state, x, dt, A, B, C, workers=bad)
    with pytest.raises(TypeError, match="workers"):
        selective_scan_update(state, x, dt, A, B, C, workers=1.5)
    np.testing.assert_array_equal(state, before)


def test_selective_scan_update_promotes_and_refuses_like_the_scan(rng):
    batch, dim, N = 2, 3, 4
    x, dt = rng.standard_normal((batch, dim)), rng.uniform(0.1, 1, (batch, dim))
    A = -rng.uniform(0.2, 2.0, (dim, N))
    B, C = rng.standard_normal((batch, N)), rng.standard_normal((batch, N))
    # float32 inputs into a float64 state compute in float64
    h = np.zeros((batch, dim, N))
    y = selective_scan_update(h, *(a.astype(np.float32) for a in (x, dt, A, B, C)))
    y_ref, h_ref = _step_loop(np.zeros((batch, dim, N)),
                              *(a.astype(np.float32) for a in (x, dt, A, B, C)),
                              None, None, None, False)
    assert y.dtype == np.float64
    assert_close(y, y_ref, np.float64, 10)
    assert_close(h, h_ref, np.float64, 10)
    for bad in (A[:, :3], A[:2]):
        with pytest.raises(ValueError, match="`A`"):
            selective_scan_update(h, x, dt, bad, B, C)
    with pytest.raises(ValueError, match="`D`"):
        selective_scan_update(h, x, dt, A, B, C, D=np.ones(dim + 1))
    with pytest.raises(ValueError, match="`dt_bias`"):
        selective_scan_update(h, x, dt, A, B, C, dt_bias=np.ones(dim + 1))
    with pytest.raises(TypeError, match="`B`"):
        selective_scan_update(h, x, dt, A, B + 1j, C)
    with pytest.raises(TypeError, match="`z`"):
        selective_scan_update(h, x, dt, A, B, C, z=x + 1j)


def test_selective_scan_update_pool_complex_and_refusals(rng):
    dim, N = 4, 3
    A = -rng.uniform(0.2, 2.0, (dim, N)) + 1j * rng.uniform(-2, 2, (dim, N))
    pool = (rng.standard_normal((6, dim, N)) + 1j * rng.standard_normal((6, dim, N)))
    before = pool.copy()
    x = rng.standard_normal((2, dim))
    dt = rng.uniform(0.1, 1, (2, dim))
    B = rng.standard_normal((2, N)) + 1j * rng.standard_normal((2, N))
    C = rng.standard_normal((2, N)) + 1j * rng.standard_normal((2, N))
    rows = [4, 1]
    y = selective_scan_update(pool, x, dt, A, B, C, state_batch_indices=rows)
    y_ref, last = selective_scan(x[..., None], dt[..., None], A, B[..., None],
                                 C[..., None], initial_state=before[rows],
                                 return_last_state=True)
    assert_close(y, y_ref[..., 0], np.float64, 10)
    assert_close(pool[rows], last, np.complex128, 10)
    np.testing.assert_array_equal(pool[[0, 2, 3, 5]], before[[0, 2, 3, 5]])
    # direct oracle of one step
    h = np.exp(dt[:, :, None] * A) * before[rows] + (dt * x)[:, :, None] * B[:, None]
    assert_close(pool[rows], h, np.complex128, 10)
    with pytest.raises(ValueError, match="state_batch_indices"):
        selective_scan_update(pool, x, dt, A, B, C, state_batch_indices=[6, 0])
    with pytest.raises(TypeError, match="`state`"):
        selective_scan_update(pool.real.copy(), x, dt, A, B, C)
    with pytest.raises(TypeError, match="`state`"):
        selective_scan_update(np.zeros((2, dim, N), np.float32), x, dt, A.real, B.real, C.real)
    ro = np.zeros((2, dim, N))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="`state`"):
        selective_scan_update(ro, x, dt, A.real, B.real, C.real)


@pytest.mark.torch
def test_selective_scan_update_torch_in_place(rng):
    torch = pytest.importorskip("torch")
    dim, N = 4, 3
    t_state = torch.ones((2, dim, N), dtype=torch.float64)
    ref = np.ones((2, dim, N))
    args = (rng.standard_normal((2, dim)), rng.uniform(0.1, 1, (2, dim)),
            -rng.uniform(0.2, 2, (dim, N)), rng.standard_normal((2, N)),
            rng.standard_normal((2, N)))
    y = selective_scan_update(t_state, *args)
    np.testing.assert_array_equal(y, selective_scan_update(ref, *args))
    np.testing.assert_array_equal(t_state.numpy(), ref)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("W, extra", [(4, 0), (4, 3), (1, 2), (2, 0)])
@pytest.mark.parametrize("T", [1, 3, 7])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_conv_update_tokens_and_wide_cache(rng, dtype, W, extra, T, activation):
    batch, dim, L0 = 2, 3, 9
    w = rng.standard_normal((dim, W)).astype(dtype)
    b = rng.standard_normal(dim).astype(dtype)
    x = rng.standard_normal((batch, dim, L0 + 2 * T)).astype(dtype)
    full = causal_conv1d(x, w, b, activation=activation)
    # the cache: the last W - 1 + extra inputs of the prefix
    keep = W - 1 + extra
    cache = np.ascontiguousarray(x[..., L0 - keep:L0])
    for step in range(2):
        lo = L0 + step * T
        xt = x[..., lo:lo + T]
        out = causal_conv1d_update(xt if T > 1 else xt[..., 0], cache, w, b,
                                   activation=activation)
        assert_close(out.reshape(batch, dim, T), full[..., lo:lo + T], dtype, 10)
        np.testing.assert_array_equal(cache, x[..., lo + T - keep:lo + T])


def test_conv_update_pool_and_refusals(rng):
    dim, W = 3, 4
    w = rng.standard_normal((dim, W))
    pool = rng.standard_normal((5, dim, W))
    before = pool.copy()
    x = rng.standard_normal((2, dim, 2))
    rows = np.array([3, 0])
    out = causal_conv1d_update(x, pool, w, conv_state_indices=rows)
    gathered = before[rows].copy()
    ref = causal_conv1d_update(x, gathered, w)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(pool[rows], gathered)
    np.testing.assert_array_equal(pool[[1, 2, 4]], before[[1, 2, 4]])
    for bad in ([3, 5], [-1, 0], [3, 3]):
        with pytest.raises(ValueError, match="conv_state_indices"):
            causal_conv1d_update(x, pool, w, conv_state_indices=bad)
    with pytest.raises(ValueError, match="conv_state"):
        causal_conv1d_update(x, np.zeros((2, dim, W - 2)), w)
    np.testing.assert_array_equal(pool[[1, 2, 4]], before[[1, 2, 4]])


@pytest.mark.torch
def test_conv_update_torch_in_place(rng):
    torch = pytest.importorskip("torch")
    w = rng.standard_normal((3, 4)).astype(np.float32)
    t_cache = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    ref = t_cache.numpy().copy()
    x = rng.standard_normal((2, 3, 2)).astype(np.float32)
    out = causal_conv1d_update(x, t_cache, w)
    np.testing.assert_array_equal(out, causal_conv1d_update(x, ref, w))
    np.testing.assert_array_equal(t_cache.numpy(), ref)
    with pytest.raises(ValueError, match="`conv_state`"):
        causal_conv1d_update(x, torch.zeros((2, 5, 3)).transpose(1, 2), w)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=6), st.integers(0, 2**31))
def test_random_packings_mamba1(lengths, seed):
    rng = np.random.default_rng(seed)
    args, seq, cu = scan_problem(rng, lengths, dim=3, N=4)
    y = selective_scan(*args, seq_idx=seq)
    w = rng.standard_normal((3, 4))
    out = causal_conv1d(args[0], w, seq_idx=seq)
    for k in range(len(lengths)):
        lo, hi = cu[k], cu[k + 1]
        y_ref, _ = scan_loop(*cut(args, lo, hi))
        assert_close(y[..., lo:hi], y_ref, np.float64, 50)
        ref = conv_loop(args[0][0, :, lo:hi], w, np.zeros(3), np.zeros((3, 3)))
        assert_close(out[0, :, lo:hi], ref, np.float64, 10)
