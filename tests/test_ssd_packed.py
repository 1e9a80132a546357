"""Packed sequences and decoding for the Mamba-2 SSD.

Oracles: every packed call is compared with the lone calls of its
sequences (different inputs, so a leak across a boundary shows), and the
lone calls with a float64 Python loop of the recurrence; decoding with
the same loop run token by token.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REAL_DTYPES, assert_close
from zilla_muf import (
    selective_state_update,
    ssd_chunk_scan_combined,
    ssd_sequential,
)

# every test of this module runs on each build of the chunk kernels
pytestmark = pytest.mark.usefixtures("ssd_build")

PACKED_FUNCS = [ssd_chunk_scan_combined, ssd_sequential]


def loop(x, dt, A, B, C, D=None, z=None, h0=None):
    """float64 recurrence of one sequence (batch 1); returns y, final."""
    x, dt, A, B, C = (np.asarray(a, np.float64) for a in (x, dt, A, B, C))
    _, L, H, P = x.shape
    G, N = B.shape[2:]
    rep = H // G
    h = np.zeros((H, P, N)) if h0 is None else np.array(h0, np.float64)
    y = np.zeros((L, H, P))
    for t in range(L):
        for hh in range(H):
            g = hh // rep
            h[hh] = np.exp(dt[0, t, hh] * A[hh]) * h[hh] + dt[0, t, hh] * np.outer(x[0, t, hh], B[0, t, g])
            y[t, hh] = h[hh] @ C[0, t, g]
    if D is not None:
        y += x[0] * np.asarray(D, np.float64)[:, None]
    if z is not None:
        zz = np.asarray(z, np.float64)[0]
        y *= zz / (1 + np.exp(-zz))
    return y[None], h


def problem(rng, lengths, H=4, P=5, G=2, N=6, dtype=np.float64):
    L = int(sum(lengths))
    x = rng.standard_normal((1, L, H, P)).astype(dtype)
    dt = rng.uniform(0.05, 0.6, (1, L, H)).astype(dtype)
    A = -rng.uniform(0.3, 2.0, H).astype(dtype)
    B = rng.standard_normal((1, L, G, N)).astype(dtype)
    C = rng.standard_normal((1, L, G, N)).astype(dtype)
    D = rng.standard_normal(H).astype(dtype)
    z = rng.standard_normal((1, L, H, P)).astype(dtype)
    init = rng.standard_normal((len(lengths), H, P, N)).astype(dtype)
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return (x, dt, A, B, C), dict(D=D, z=z), init, cu


def piece(args, kw, lo, hi):
    x, dt, A, B, C = args
    return ((x[:, lo:hi], dt[:, lo:hi], A, B[:, lo:hi], C[:, lo:hi]),
            {k: (v[:, lo:hi] if k == "z" else v) for k, v in kw.items()})


# lengths with boundaries inside chunks, on chunk edges (chunk 8), of
# length 1, and an empty sequence
LENGTHS = [
    [3, 5, 8, 1, 1, 13, 2],
    [8, 8, 16, 1],
    [1, 1, 1, 1, 1, 1, 1, 1, 1],
    [20, 0, 7, 9],
    [37],
]


@pytest.mark.parametrize("fn", PACKED_FUNCS)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("with_init", [False, True])
def test_packed_equals_each_sequence_alone(rng, fn, dtype, lengths, with_init):
    args, kw, init, cu = problem(rng, lengths, dtype=dtype)
    init_kw = {"initial_states": init} if with_init else {}
    y, last, varlen = fn(*args, 8, **kw, **init_kw, cu_seqlens=cu,
                         return_final_states=True, return_varlen_states=True,
                         workers=2)
    assert y.dtype == dtype and varlen.shape == (len(lengths), 4, 5, 6)
    for k in range(len(lengths)):
        lo, hi = cu[k], cu[k + 1]
        a, k_kw = piece(args, kw, lo, hi)
        h0 = init[k:k + 1] if with_init else None
        y_k, h_k = ssd_chunk_scan_combined(*a, 8, **k_kw, initial_states=h0,
                                           return_final_states=True)
        # isolation: the same numbers as the lone call (to rounding)
        assert_close(y[:, lo:hi], y_k, dtype, 10)
        assert_close(varlen[k], h_k[0], dtype, 10)
        # and the lone call against the float64 loop
        y_ref, h_ref = loop(*a, **k_kw, h0=None if h0 is None else h0[0])
        assert_close(y[:, lo:hi], y_ref, dtype, 50)
        assert_close(varlen[k], h_ref, dtype, 50)
    last_k = max(k for k in range(len(lengths)) if lengths[k] > 0)
    np.testing.assert_array_equal(last[0], varlen[last_k])


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("chunk", [4, 8, 16])
@pytest.mark.parametrize("where", ["x", "B", "C", "dt", "init"])
def test_nonfinite_stays_in_its_sequence(rng, poison, chunk, where):
    lengths = [5, 3, 8, 1, 6, 9]     # boundaries inside chunks and on edges
    args, kw, init, cu = problem(rng, lengths)
    x, dt, A, B, C = (a.copy() for a in args)
    init = init.copy()
    bad = 2                           # the poisoned sequence
    lo = cu[bad]
    if where == "x":
        x[0, lo + 3, 1, 2] = poison
    elif where == "B":
        B[0, lo + 4, 0, 1] = poison
    elif where == "C":
        C[0, lo + 2, 1, 0] = poison
    elif where == "dt":
        dt[0, lo + 5, 3] = abs(poison) if poison == poison else poison
    else:
        init[bad, 0, 0, 0] = poison
    for seq_kw in ({"cu_seqlens": cu, "initial_states": init},
                   {"seq_idx": np.repeat(np.arange(6), lengths)[None]}):
        if "seq_idx" in seq_kw and where == "init":
            continue
        for fn in PACKED_FUNCS:
            y = fn(x, dt, A, B, C, chunk, **kw, **seq_kw)
            for k in range(len(lengths)):
                if k == bad:
                    continue
                a, k_kw = piece((x, dt, A, B, C), kw, cu[k], cu[k + 1])
                h0 = init[k:k + 1] if "cu_seqlens" in seq_kw else None
                y_k = ssd_sequential(*a, **k_kw, initial_states=h0)
                assert np.all(np.isfinite(y[:, cu[k]:cu[k + 1]]))
                assert_close(y[:, cu[k]:cu[k + 1]], y_k, np.float64, 10)


def test_short_sequences_row_is_not_all_nan(rng):
    # a row of short sequences, one of them NaN: the others stay finite
    lengths = [3] * 10
    args, kw, init, cu = problem(rng, lengths)
    x = args[0].copy()
    x[0, 4] = np.nan
    y = ssd_chunk_scan_combined(x, *args[1:], 64, seq_idx=np.repeat(np.arange(10), 3)[None])
    assert np.isnan(y[0, 3:6]).any()
    assert np.isfinite(y[0, :3]).all() and np.isfinite(y[0, 6:]).all()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 19), min_size=1, max_size=8),
       st.integers(1, 12), st.sampled_from([1, 2]), st.integers(0, 2**31))
def test_random_packings(lengths, chunk, workers, seed):
    if sum(lengths) == 0:
        lengths = lengths + [1]
    rng = np.random.default_rng(seed)
    args, kw, init, cu = problem(rng, lengths, H=2, P=3, G=1, N=4)
    y, varlen = ssd_chunk_scan_combined(*args, chunk, **kw, initial_states=init,
                                        cu_seqlens=cu, return_varlen_states=True,
                                        workers=workers)
    for k in range(len(lengths)):
        a, k_kw = piece(args, kw, cu[k], cu[k + 1])
        y_ref, h_ref = loop(*a, **k_kw, h0=init[k])
        assert_close(y[:, cu[k]:cu[k + 1]], y_ref, np.float64, 50)
        assert_close(varlen[k], h_ref, np.float64, 50)


@pytest.mark.parametrize("fn", PACKED_FUNCS)
def test_bad_cu_seqlens(rng, fn):
    args, kw, init, cu = problem(rng, [4, 6])
    x, dt, A, B, C = args
    cases = [
        ([1, 4, 10], "start at 0"),
        ([0, 4, 9], "end at seqlen"),
        ([0, 6, 4, 10], "non-decreasing"),
        ([0.0, 4.0, 10.0], "integers"),
        ([[0, 4, 10]], "shape"),
        ([0], "shape"),
    ]
    for bad, words in cases:
        with pytest.raises(ValueError, match="cu_seqlens") as info:
            fn(*args, 4, cu_seqlens=np.array(bad))
        assert words in str(info.value)
    two = [np.concatenate([a, a]) if a.ndim > 1 else a for a in args]
    with pytest.raises(ValueError, match="`cu_seqlens`.*batch must be 1"):
        fn(*two, 4, cu_seqlens=cu)
    with pytest.raises(ValueError, match="initial_states"):
        fn(*args, 4, cu_seqlens=cu, initial_states=init[:1])
    with pytest.raises(ValueError, match="cu_seqlens"):
        fn(*args, 4, return_varlen_states=True)
    with pytest.raises(ValueError, match="seq_idx"):
        fn(*args, 4, cu_seqlens=cu, seq_idx=np.zeros((1, 10), np.int64))


# ---------------------------------------------------------------------------
# Decoding: the token axis, intermediate states, state pools
# ---------------------------------------------------------------------------

def decode_problem(rng, nb, T, H=4, P=5, G=2, N=6, dtype=np.float64):
    x = rng.standard_normal((nb, T, H, P)).astype(dtype)
    dt = rng.uniform(-1, 1, (nb, T, H)).astype(dtype)
    A = -rng.uniform(0.3, 2.0, H).astype(dtype)
    B = rng.standard_normal((nb, T, G, N)).astype(dtype)
    C = rng.standard_normal((nb, T, G, N)).astype(dtype)
    kw = dict(D=rng.standard_normal((H, P)).astype(dtype),
              z=rng.standard_normal((nb, T, H, P)).astype(dtype),
              dt_bias=rng.standard_normal(H).astype(dtype), dt_softplus=True)
    return (x, dt, A, B, C), kw


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_multi_token_decode_equals_token_by_token(rng, dtype):
    (x, dt, A, B, C), kw = decode_problem(rng, 3, 5, dtype=dtype)
    s0 = rng.standard_normal((3, 4, 5, 6)).astype(dtype)
    s_multi = s0.copy()
    y, inter = selective_state_update(s_multi, x, dt, A, B, C, **kw,
                                      return_intermediate_states=True)
    assert y.shape == x.shape and inter.shape == (3, 5, 4, 5, 6)
    s_one = s0.copy()
    for t in range(5):
        y_t = selective_state_update(
            s_one, x[:, t], dt[:, t], A, B[:, t], C[:, t], D=kw["D"],
            z=kw["z"][:, t], dt_bias=kw["dt_bias"], dt_softplus=True)
        assert_close(y[:, t], y_t, dtype, 10)
        assert_close(inter[:, t], s_one, dtype, 10)
    np.testing.assert_array_equal(inter[:, -1], s_multi)
    # and the whole decode equals a prefill from the same state
    for b in range(3):
        y_ref = ssd_sequential(x[b:b + 1], dt[b:b + 1], A, B[b:b + 1],
                               C[b:b + 1], D=kw["D"], z=kw["z"][b:b + 1],
                               dt_bias=kw["dt_bias"], dt_softplus=True,
                               initial_states=s0[b:b + 1])
        assert_close(y[b:b + 1], y_ref, dtype, 10)


def test_decode_skip_and_gate_against_loop(rng):
    # D of shape (nheads,), the gate, T tokens: against a float64 loop of
    # the recurrence written here; and an empty dstate (y is D x gated)
    H, P, N, T = 3, 5, 4, 6
    x = rng.standard_normal((2, T, H, P))
    dt = rng.uniform(0.1, 1.0, (2, T, H))
    A = -rng.uniform(0.3, 2.0, H)
    B = rng.standard_normal((2, T, 1, N))
    C = rng.standard_normal((2, T, 1, N))
    D = rng.standard_normal(H)
    z = rng.standard_normal((2, T, H, P))
    z[0, 0, 0, :2] = [-np.inf, 40.0]
    s0 = rng.standard_normal((2, H, P, N))
    state = s0.copy()
    y = selective_state_update(state, x, dt, A, B, C, D=D, z=z)
    h = s0.copy()
    want = np.zeros_like(x)
    for t in range(T):
        decay = np.exp(dt[:, t] * A)[:, :, None, None]
        h = decay * h + (dt[:, t, :, None, None] * x[:, t, :, :, None]
                         * B[:, t, 0][:, None, None, :])
        out = np.einsum("bhpn,bn->bhp", h, C[:, t, 0]) + D[:, None] * x[:, t]
        with np.errstate(over="ignore", invalid="ignore"):
            gate = np.where(np.isneginf(z[:, t]), -0.0,
                            z[:, t] / (1 + np.exp(-z[:, t])))
        want[:, t] = out * gate
    assert_close(y, want, np.float64, 10)
    assert_close(state, h, np.float64, 10)
    empty = np.zeros((2, H, P, 0))
    y0 = selective_state_update(empty, x, dt, A, B[..., :0], C[..., :0], D=D, z=z)
    with np.errstate(over="ignore", invalid="ignore"):
        gate = np.where(np.isneginf(z), -0.0, z / (1 + np.exp(-z)))
    assert_close(y0, D[:, None] * x * gate, np.float64, 10)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_decode_threads_blocks_and_tails(rng, dtype):
    # a state big enough for the call to run on several threads, rows in
    # more than one cache block, dstate with vector columns and a scalar
    # tail; D, the gate, a pool and intermediate states: the same bits for
    # every thread count, and the float64 loop of the recurrence
    nb, T, H, P, N = 2, 4, 4, 70, 37
    x = rng.standard_normal((nb, T, H, P)).astype(dtype)
    dt = rng.uniform(0.05, 1.0, (nb, T, H)).astype(dtype)
    A = -rng.uniform(0.3, 2.0, H).astype(dtype)
    B = rng.standard_normal((nb, T, 2, N)).astype(dtype)
    C = rng.standard_normal((nb, T, 2, N)).astype(dtype)
    D = rng.standard_normal((H, P)).astype(dtype)
    z = rng.standard_normal((nb, T, H, P)).astype(dtype)
    pool0 = rng.standard_normal((3, H, P, N)).astype(dtype)
    rows = np.array([2, 0])
    got = []
    for workers in (1, 2, -1):
        pool = pool0.copy()
        y, inter = selective_state_update(
            pool, x, dt, A, B, C, D=D, z=z, state_batch_indices=rows,
            return_intermediate_states=True, workers=workers)
        got.append((y, inter, pool))
    for y, inter, pool in got[1:]:
        np.testing.assert_array_equal(y, got[0][0])
        np.testing.assert_array_equal(inter, got[0][1])
        np.testing.assert_array_equal(pool, got[0][2])
    y, inter, pool = got[0]
    np.testing.assert_array_equal(pool[1], pool0[1])
    np.testing.assert_array_equal(pool[rows], inter[:, -1])
    h = pool0[rows].astype(np.float64)
    g = np.arange(H) // (H // 2)
    for t in range(T):
        d64 = dt[:, t].astype(np.float64)
        decay = np.exp(d64 * A)[:, :, None, None]
        Bt = B[:, t][:, g].astype(np.float64)           # (nb, H, N)
        Ct = C[:, t][:, g].astype(np.float64)
        h = decay * h + (d64[:, :, None, None] * x[:, t, :, :, None]
                         * Bt[:, :, None, :])
        out = np.einsum("bhpn,bhn->bhp", h, Ct) + D * x[:, t]
        zt = z[:, t].astype(np.float64)
        assert_close(y[:, t], out * zt / (1 + np.exp(-zt)), dtype, 50)
        assert_close(inter[:, t], h, dtype, 50)
    before = pool0.copy()
    with pytest.raises(ValueError, match="`workers`"):
        selective_state_update(pool0, x, dt, A, B, C, state_batch_indices=rows,
                               workers=0)
    np.testing.assert_array_equal(pool0, before)


def test_state_pool_rows(rng):
    (x, dt, A, B, C), kw = decode_problem(rng, 3, 2)
    pool = rng.standard_normal((7, 4, 5, 6))
    before = pool.copy()
    rows = np.array([5, 0, 3])
    y = selective_state_update(pool, x, dt, A, B, C, **kw,
                               state_batch_indices=rows)
    gathered = before[rows].copy()
    y_ref = selective_state_update(gathered, x, dt, A, B, C, **kw)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(pool[rows], gathered)
    untouched = [1, 2, 4, 6]
    np.testing.assert_array_equal(pool[untouched], before[untouched])
    for bad in ([5, 0, 7], [5, 0, -1]):
        with pytest.raises(ValueError, match="state_batch_indices"):
            selective_state_update(pool, x, dt, A, B, C, **kw,
                                   state_batch_indices=bad)
    with pytest.raises(ValueError, match="state_batch_indices"):
        selective_state_update(pool, x, dt, A, B, C, **kw,
                               state_batch_indices=[1, 1, 2])
    with pytest.raises(TypeError, match="state_batch_indices"):
        selective_state_update(pool, x, dt, A, B, C, **kw,
                               state_batch_indices=[1.0, 2.0, 3.0])
    np.testing.assert_array_equal(pool[untouched], before[untouched])


def test_speculative_rollback(rng):
    # decode 4 draft tokens, accept 2: the state after token 2 continues
    # exactly as if only the 2 accepted tokens had been decoded
    (x, dt, A, B, C), kw = decode_problem(rng, 1, 4)
    s0 = rng.standard_normal((1, 4, 5, 6))
    s = s0.copy()
    _, inter = selective_state_update(s, x, dt, A, B, C, **kw,
                                      return_intermediate_states=True)
    s2 = s0.copy()
    kw2 = dict(kw, z=kw["z"][:, :2])
    selective_state_update(s2, x[:, :2], dt[:, :2], A, B[:, :2], C[:, :2], **kw2)
    np.testing.assert_array_equal(inter[:, 1], s2)


@pytest.mark.torch
def test_torch_state_is_updated_in_place(rng):
    torch = pytest.importorskip("torch")
    (x, dt, A, B, C), kw = decode_problem(rng, 2, 3, dtype=np.float32)
    t_state = torch.zeros((2, 4, 5, 6), dtype=torch.float32)
    ref = np.zeros((2, 4, 5, 6), np.float32)
    y = selective_state_update(t_state, x, dt, A, B, C, **kw)
    y_ref = selective_state_update(ref, x, dt, A, B, C, **kw)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(t_state.numpy(), ref)
    assert np.any(ref != 0)
    # a tensor that cannot be viewed zero-copy is refused by name
    with pytest.raises((TypeError, ValueError), match="`state`"):
        selective_state_update(torch.zeros((2, 4, 5, 6)).requires_grad_(),
                               x, dt, A, B, C, **kw)
    with pytest.raises(ValueError, match="`state`"):
        selective_state_update(torch.zeros((2, 4, 6, 5)).transpose(2, 3),
                               x, dt, A, B, C, **kw)


def test_state_refusals(rng):
    (x, dt, A, B, C), kw = decode_problem(rng, 2, 3)
    s = np.zeros((2, 4, 5, 6))
    s.flags.writeable = False
    with pytest.raises(ValueError, match="`state`"):
        selective_state_update(s, x, dt, A, B, C, **kw)
    with pytest.raises(ValueError, match="`state`"):
        selective_state_update(np.zeros((2, 4, 6, 5)).transpose(0, 1, 3, 2),
                               x, dt, A, B, C, **kw)
    with pytest.raises(TypeError, match="`state`"):
        selective_state_update(np.zeros((2, 4, 5, 6), np.float32), x, dt, A, B, C, **kw)
    with pytest.raises(TypeError, match="`state`"):
        selective_state_update([[0.0]], x, dt, A, B, C, **kw)
    with pytest.raises(ValueError, match="`state`"):
        selective_state_update(np.zeros((3, 4, 5, 6)), x, dt, A, B, C, **kw)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("chunk", [16, 64, 100])
def test_long_rows_walked_in_blocks(rng, chunk, workers):
    # rows longer than the kernel's block of positions: sequences (and the
    # varlen states) cross block boundaries
    lengths = [700, 1, 1023, 1, 900, 300, 5]
    args, kw, init, cu = problem(rng, lengths, H=2, P=3, G=1, N=4)
    y, last, varlen = ssd_chunk_scan_combined(
        *args, chunk, **kw, initial_states=init, cu_seqlens=cu,
        return_final_states=True, return_varlen_states=True, workers=workers)
    y_s, last_s, varlen_s = ssd_sequential(
        *args, **kw, initial_states=init, cu_seqlens=cu,
        return_final_states=True, return_varlen_states=True)
    assert_close(y, y_s, np.float64, 50)
    assert_close(varlen, varlen_s, np.float64, 50)
    assert_close(last, last_s, np.float64, 50)
    # one sequence, no ids
    y1, h1 = ssd_chunk_scan_combined(*args, chunk, **kw, initial_states=init[:1],
                                     return_final_states=True, workers=workers)
    y1s, h1s = ssd_sequential(*args, **kw, initial_states=init[:1],
                              return_final_states=True)
    assert_close(y1, y1s, np.float64, 50)
    assert_close(h1, h1s, np.float64, 50)


@pytest.mark.parametrize("where", ["x", "B", "C"])
def test_stages_keep_nonfinite_in_its_sequence(rng, where):
    from zilla_muf import (ssd_chunk_cumsum, ssd_chunk_scan, ssd_chunk_state,
                           ssd_state_passing)

    lengths = [5, 3, 8, 1, 6, 9]
    args, kw, init, cu = problem(rng, lengths)
    x, dt, A, B, C = (a.copy() for a in args)
    {"x": x, "B": B, "C": C}[where][0, cu[2] + 2] = np.nan
    seq = np.repeat(np.arange(6), lengths)[None]
    dt_out, dA = ssd_chunk_cumsum(dt, A, chunk_size=8)
    states = ssd_chunk_state(x, B, dt_out, dA, seq_idx=seq)
    entering, final = ssd_state_passing(states, dA, seq_idx=seq)
    y = ssd_chunk_scan(x, dt_out, dA, B, C, entering, seq_idx=seq)
    for k in (0, 1, 3, 4, 5):
        a, _ = piece((x, dt, A, B, C), {}, cu[k], cu[k + 1])
        y_k, h_k = ssd_sequential(*a, return_final_states=True)
        assert_close(y[:, cu[k]:cu[k + 1]], y_k, np.float64, 10)
    assert_close(final, h_k, np.float64, 10)
