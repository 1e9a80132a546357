"""The compiled kernel of zilla_muf.linear_attention (_linear_attention.pyx).

Oracle: the per-channel-gated scores written as a float64 NumPy product over
a (C, C, K) block of decays.
"""

import numpy as np
import pytest

import zilla_muf
from zilla_muf import _linear_attention as kernels

from conftest import REAL_DTYPES, assert_close


def scores_oracle(q, k, gc):
    q, k, gc = (np.asarray(x, np.float64) for x in (q, k, gc))
    C = q.shape[1]
    d = gc[:, :, None, :] - gc[:, None, :, :]              # (M, C, C, K)
    mask = np.tri(C, dtype=bool)[None, :, :, None]
    w = np.exp(np.where(mask, d, -np.inf))
    return np.einsum("mik,mjk,mijk->mij", q, k, w)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_channel_gate_scores(rng, dtype):
    M, C, K = 7, 9, 5
    q = rng.standard_normal((M, C, K)).astype(dtype)
    k = rng.standard_normal((M, C, K)).astype(dtype)
    gc = np.cumsum(-rng.uniform(0, 1, (M, C, K)), axis=1).astype(dtype)
    out = np.full((M, C, C), np.nan, dtype=dtype)
    kernels.channel_gate_scores(q, k, gc, out, 1)
    assert_close(out, scores_oracle(q, k, gc), dtype, scale=10)
    assert np.all(np.triu(out, 1) == 0)


def test_channel_gate_scores_threads(rng):
    M, C, K = 40, 8, 6
    q, k = rng.standard_normal((2, M, C, K))
    gc = np.cumsum(-rng.uniform(0, 3, (M, C, K)), axis=1)
    gc[:, 3:] -= 1e4                                       # very negative gates
    one = np.empty((M, C, C))
    two = np.empty((M, C, C))
    assert kernels.channel_gate_scores(q, k, gc, one, 1) == 1
    used = kernels.channel_gate_scores(q, k, gc, two, 2)
    assert used == (2 if zilla_muf.have_openmp() else 1)
    np.testing.assert_array_equal(one, two)
    assert np.all(np.isfinite(one))
    assert_close(one, scores_oracle(q, k, gc))


def test_channel_gate_scores_bad_shapes():
    a = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match="shape"):
        kernels.channel_gate_scores(a, np.zeros((2, 3, 5)), a, np.zeros((2, 3, 3)), 1)
    with pytest.raises(ValueError, match="out"):
        kernels.channel_gate_scores(a, a, a, np.zeros((2, 3, 4)), 1)
    with pytest.raises(ValueError, match="num_threads"):
        kernels.channel_gate_scores(a, a, a, np.zeros((2, 3, 3)), 0)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_unit_lower_solve(rng, dtype):
    from scipy.linalg import solve_triangular

    Bn, C, W = 6, 11, 7
    M = (0.3 * rng.standard_normal((Bn, C, C))).astype(dtype)
    X = rng.standard_normal((Bn, C, W)).astype(dtype)
    L = np.tril(M.astype(np.float64), -1) + np.eye(C)
    ref = np.stack([solve_triangular(L[i], X[i].astype(np.float64), lower=True)
                    for i in range(Bn)])
    got = X.copy()
    kernels.unit_lower_solve(M, got, 1)   # the diagonal and upper part of M unread
    assert_close(got, ref, dtype, scale=10)
    two = X.copy()
    kernels.unit_lower_solve(M, two, 2)
    np.testing.assert_array_equal(two, got)
    with pytest.raises(ValueError, match="M"):
        kernels.unit_lower_solve(np.ascontiguousarray(M[:, :3]), X.copy(), 1)


# --- the compiled chunk forward (chunk_forward), every build -----------------
# Oracle: the recurrences of linear attention and of the gated delta rule as
# float64 loops over the positions of each sequence, written here.

def seq_loop(q, k, v, g, beta, h0, scale):
    """One sequence and head: q, k (L, K), v (L, V), g and beta (L,) or None."""
    K, V = q.shape[1], v.shape[1]
    S = np.zeros((K, V)) if h0 is None else np.array(h0, np.float64)
    o = np.zeros((len(q), V))
    for t in range(len(q)):
        if g is not None:
            S = np.exp(float(g[t])) * S
        if beta is None:
            S = S + np.outer(k[t], v[t])
        else:
            S = S + float(beta[t]) * np.outer(k[t], v[t] - k[t] @ S)
        o[t] = scale * (q[t] @ S)
    return o, S


def forward_oracle(q, k, v, g, beta, h0, seqs, scale):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    H = q.shape[2]
    o = np.zeros(v.shape)
    hT = np.zeros((len(seqs), H, q.shape[3], v.shape[3]))
    for s, (b, a, e) in enumerate(seqs):
        for h in range(H):
            o[b, a:e, h], hT[s, h] = seq_loop(
                q[b, a:e, h], k[b, a:e, h], v[b, a:e, h],
                None if g is None else g[b, a:e, h],
                None if beta is None else beta[b, a:e, h],
                None if h0 is None else h0[s, h], scale)
    return o, hT


def run_kernel(q, k, v, g, beta, h0, seqs, scale, chunk, threads):
    B, T, H, K = q.shape
    V = v.shape[3]
    o = np.full((B, T, H, V), np.nan, dtype=q.dtype)
    hT = np.full((len(seqs), H, K, V), np.nan, dtype=q.dtype)
    sb, sa, se = (np.array([s[i] for s in seqs], dtype=np.intp) for i in range(3))
    kernels.chunk_forward(q, k, v, o, g, beta, h0, hT, sb, sa, se, scale, chunk, threads)
    return o, hT


def runnable_builds():
    best = kernels.kernel_build()
    names = ["baseline", "avx2", "avx512"]
    return names[:names.index(best) + 1]


# every build this CPU and this compilation can run (a build without the
# vector paths, or a CPU without AVX-512, runs fewer)
@pytest.fixture(params=runnable_builds())
def build(request):
    kernels.set_kernel_build(request.param)
    yield request.param
    kernels.set_kernel_build(None)


def chunk_inputs(rng, B, T, H, K, V, dtype, gate, delta, state, nseq):
    q = rng.standard_normal((B, T, H, K)).astype(dtype)
    k = (0.5 * rng.standard_normal((B, T, H, K))).astype(dtype)
    v = rng.standard_normal((B, T, H, V)).astype(dtype)
    g = -rng.uniform(0, 0.5, (B, T, H)).astype(dtype) if gate else None
    beta = rng.uniform(0.1, 0.9, (B, T, H)).astype(dtype) if delta else None
    h0 = rng.standard_normal((nseq, H, K, V)).astype(dtype) if state else None
    return q, k, v, g, beta, h0


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("delta", [False, True])
@pytest.mark.parametrize("gate,state", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("K,V,chunk", [(5, 37, 7), (16, 16, 4), (33, 20, 64), (3, 1, 1),
                                       (20, 9, 24)])
def test_chunk_forward_equals_loop(rng, build, dtype, delta, gate, state, K, V, chunk):
    """Odd K, V (partial tiles, padded scratch), chunks longer and shorter
    than the sequences, a batch of two rows; K 20 and chunk 24 take k^T in
    8 by 8 blocks with edges on both sides (the last chunk has 21 rows)."""
    B, T, H = 2, 45, 2
    seqs = [(0, 0, T), (1, 0, T)]
    args = chunk_inputs(rng, B, T, H, K, V, dtype, gate, delta, state, len(seqs))
    o, hT = run_kernel(*args, seqs, 0.7, chunk, 1)
    ro, rh = forward_oracle(*args, seqs, 0.7)
    assert_close(o, ro, dtype, scale=50)
    assert_close(hT, rh, dtype, scale=50)


@pytest.mark.parametrize("delta", [False, True])
def test_chunk_forward_packed_sequences_and_threads(rng, build, delta):
    """Sequences as ranges of one batch row (one empty, one shorter than a
    chunk), each from its own entering state; threads give the same bits;
    positions outside every sequence are not written."""
    B, T, H, K, V = 1, 50, 3, 8, 12
    seqs = [(0, 0, 17), (0, 17, 17), (0, 17, 20), (0, 20, 48)]
    args = chunk_inputs(rng, B, T, H, K, V, np.float64, True, delta, True, len(seqs))
    o1, h1 = run_kernel(*args, seqs, 0.5, 8, 1)
    o2, h2 = run_kernel(*args, seqs, 0.5, 8, 3)
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(h1, h2)
    ro, rh = forward_oracle(*args, seqs, 0.5)
    assert_close(o1[:, :48], ro[:, :48], scale=50)
    assert_close(h1, rh, scale=50)
    np.testing.assert_array_equal(h1[1], args[5][1])      # the empty sequence
    assert np.all(np.isnan(o1[:, 48:]))


def test_chunk_forward_extreme_gates(rng, build):
    """g = 0 is no decay, exactly; g = -1e4 wipes the state each step with
    nothing overflowing (no decay is divided by another)."""
    B, T, H, K, V = 1, 40, 2, 6, 5
    seqs = [(0, 0, T)]
    for delta in (False, True):
        q, k, v, g, beta, h0 = chunk_inputs(rng, B, T, H, K, V, np.float64, True, delta,
                                            True, 1)
        zero = np.zeros_like(g)
        a = run_kernel(q, k, v, zero, beta, h0, seqs, 1.0, 16, 1)
        b = run_kernel(q, k, v, None, beta, h0, seqs, 1.0, 16, 1)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        big = np.full_like(g, -1e4)
        o, hT = run_kernel(q, k, v, big, beta, h0, seqs, 1.0, 16, 1)
        assert np.all(np.isfinite(o)) and np.all(np.isfinite(hT))
        ro, rh = forward_oracle(q, k, v, big, beta, h0, seqs, 1.0)
        assert_close(o, ro, scale=10)
        assert_close(hT, rh, scale=10)


def test_chunk_forward_bad_arguments():
    q = np.zeros((1, 4, 2, 3))
    v = np.zeros((1, 4, 2, 5))
    o = np.zeros_like(v)
    hT = np.zeros((1, 2, 3, 5))
    one = np.zeros(1, dtype=np.intp)
    four = np.full(1, 4, dtype=np.intp)
    ok = (q, q, v, o, None, None, None, hT, one, one, four, 1.0, 2, 1)
    kernels.chunk_forward(*ok)
    with pytest.raises(ValueError, match="do not match"):
        kernels.chunk_forward(q, np.zeros((1, 4, 2, 4)), *ok[2:])
    with pytest.raises(ValueError, match="g must"):
        kernels.chunk_forward(*ok[:4], np.zeros((1, 3, 2)), *ok[5:])
    with pytest.raises(ValueError, match="hT"):
        kernels.chunk_forward(*ok[:7], np.zeros((2, 2, 3, 5)), *ok[8:])
    with pytest.raises(ValueError, match="outside"):
        kernels.chunk_forward(*ok[:10], np.full(1, 5, dtype=np.intp), *ok[11:])
    with pytest.raises(ValueError, match="outside"):
        kernels.chunk_forward(*ok[:8], np.ones(1, dtype=np.intp), *ok[9:])
    with pytest.raises(ValueError, match="chunk"):
        kernels.chunk_forward(*ok[:12], 0, 1)
    with pytest.raises(ValueError):
        kernels.set_kernel_build("sse9")


def test_chunk_forward_large_state_one_head_per_task(rng):
    """States too large to group heads (K * V * 8 bytes > 512 KiB): one head
    per task, the same numbers."""
    B, T, H, K, V = 1, 10, 3, 520, 130
    seqs = [(0, 0, T)]
    args = chunk_inputs(rng, B, T, H, K, V, np.float64, True, True, True, 1)
    o1, h1 = run_kernel(*args, seqs, 0.1, 4, 1)
    o2, h2 = run_kernel(*args, seqs, 0.1, 4, 2)
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(h1, h2)
    ro, rh = forward_oracle(*args, seqs, 0.1)
    assert_close(o1, ro, scale=50)
    assert_close(h1, rh, scale=50)
