"""zilla_muf.linear_attention: the forwards.

Oracles: the recurrences written out below as float64 loops over time (one
step at a time, no chunks), the SSD (`ssd_chunk_scan_combined`) for the
scalar gate, separate calls for packed sequences, and analytic cases. FLA's
own naive references are compared in tests/test_linear_attention_fla.py.
"""

import concurrent.futures

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zilla_muf
from zilla_muf.linear_attention import gated_delta_rule, linear_attention
from zilla_muf.ssd import ssd_chunk_scan_combined

from conftest import REAL_DTYPES, assert_close


# --- the oracles: float64 loops of the recurrences ---------------------------

def la_loop(q, k, v, g=None, scale=None, h0=None):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    S = np.zeros((B, H, K, V)) if h0 is None else np.array(h0, np.float64)
    o = np.zeros((B, T, H, V))
    for t in range(T):
        if g is not None:
            gt = np.asarray(g, np.float64)[:, t]
            decay = np.exp(gt)[..., None, None] if gt.ndim == 2 else np.exp(gt)[..., None]
            S = decay * S
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = scale * np.einsum("bhk,bhkv->bhv", q[:, t], S)
    return o, S


def l2n(x):
    x = np.asarray(x, np.float64)
    return x / np.sqrt((x * x).sum(-1, keepdims=True) + 1e-6)


def gdr_loop(q, k, v, g, beta, scale=None, h0=None, l2norm=False):
    q, k, v, beta = (np.asarray(x, np.float64) for x in (q, k, v, beta))
    if l2norm:
        q, k = l2n(q), l2n(k)
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    S = np.zeros((B, H, K, V)) if h0 is None else np.array(h0, np.float64)
    o = np.zeros((B, T, H, V))
    for t in range(T):
        if g is not None:
            S = np.exp(np.asarray(g, np.float64)[:, t])[..., None, None] * S
        pred = np.einsum("bhk,bhkv->bhv", k[:, t], S)
        S = S + beta[:, t, :, None, None] * k[:, t, :, :, None] * (v[:, t] - pred)[:, :, None, :]
        o[:, t] = scale * np.einsum("bhk,bhkv->bhv", q[:, t], S)
    return o, S


def make(rng, B, T, H, K, V, dtype, gate="scalar"):
    q = rng.standard_normal((B, T, H, K)).astype(dtype)
    k = rng.standard_normal((B, T, H, K)).astype(dtype)
    v = rng.standard_normal((B, T, H, V)).astype(dtype)
    if gate == "scalar":
        g = -rng.uniform(0.0, 0.5, (B, T, H)).astype(dtype)
    elif gate == "channel":
        g = -rng.uniform(0.0, 0.5, (B, T, H, K)).astype(dtype)
    else:
        g = None
    return q, k, v, g


# --- linear_attention ---------------------------------------------------------

@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("gate", ["none", "scalar", "channel"])
@pytest.mark.parametrize("T,chunk", [(1, None), (37, None), (37, 8), (64, 16), (50, 64)])
def test_linear_attention_equals_loop(rng, dtype, gate, T, chunk):
    q, k, v, g = make(rng, 2, T, 3, 5, 4, dtype, gate)
    h0 = rng.standard_normal((2, 3, 5, 4)).astype(dtype)
    o, S = linear_attention(q, k, v, g, initial_state=h0, output_final_state=True,
                            chunk_size=chunk)
    o_ref, S_ref = la_loop(q, k, v, g, h0=h0)
    assert o.dtype == dtype and S.dtype == dtype
    assert o.shape == (2, T, 3, 4) and S.shape == (2, 3, 5, 4)
    assert_close(o, o_ref, dtype, scale=50)
    assert_close(S, S_ref, dtype, scale=50)


def test_linear_attention_scale_and_default(rng):
    q, k, v, g = make(rng, 1, 9, 2, 4, 3, np.float64)
    assert_close(linear_attention(q, k, v, g), la_loop(q, k, v, g)[0])
    assert_close(linear_attention(q, k, v, g, scale=2.5),
                 la_loop(q, k, v, g, scale=2.5)[0])
    # no final state unless asked
    assert isinstance(linear_attention(q, k, v, g), np.ndarray)


@pytest.mark.parametrize("gate", ["scalar", "channel"])
def test_linear_attention_extreme_gates(rng, gate):
    """g = 0 exactly (no decay) and g very negative (state wiped each step)."""
    q, k, v, g = make(rng, 1, 40, 2, 4, 3, np.float64, gate)
    zero = np.zeros_like(g)
    assert_close(linear_attention(q, k, v, zero, chunk_size=16),
                 linear_attention(q, k, v, None, chunk_size=16))
    assert_close(linear_attention(q, k, v, zero, chunk_size=16), la_loop(q, k, v)[0])
    big = np.full_like(g, -1e4)
    o = linear_attention(q, k, v, big, chunk_size=16)
    assert np.all(np.isfinite(o))
    # each step sees only its own key and value
    local = np.einsum("bthk,bthk->bth", q, k)[..., None] * v * 4 ** -0.5
    assert_close(o, local)
    mixed = g.copy()
    mixed[:, ::7] = -800.0
    assert_close(linear_attention(q, k, v, mixed, chunk_size=16), la_loop(q, k, v, mixed)[0])


def test_linear_attention_equals_ssd(rng):
    """Scalar gate: the SSD with q=C, k=B, v=x*dt, g=A*dt, scale=1."""
    Bt, T, H, P, N = 2, 45, 3, 4, 6
    x = rng.standard_normal((Bt, T, H, P))
    dt = rng.uniform(0.05, 0.5, (Bt, T, H))
    A = -rng.uniform(0.5, 2.0, H)
    Bm = rng.standard_normal((Bt, T, H, N))
    Cm = rng.standard_normal((Bt, T, H, N))
    h0 = rng.standard_normal((Bt, H, P, N))
    y, hT = ssd_chunk_scan_combined(x, dt, A, Bm, Cm, chunk_size=16,
                                    initial_states=h0, return_final_states=True)
    o, S = linear_attention(Cm, Bm, x * dt[..., None], A * dt, scale=1.0,
                            initial_state=h0.transpose(0, 1, 3, 2),
                            output_final_state=True)
    assert_close(o, y, scale=100)
    assert_close(S, hT.transpose(0, 1, 3, 2), scale=100)


@pytest.mark.parametrize("gate", ["none", "scalar", "channel"])
def test_linear_attention_packed_equals_separate(rng, gate):
    lens = [5, 0, 17, 1, 30]
    cu = np.cumsum([0] + lens)
    q, k, v, g = make(rng, 1, int(cu[-1]), 2, 4, 3, np.float64, gate)
    h0 = rng.standard_normal((len(lens), 2, 4, 3))
    o, S = linear_attention(q, k, v, g, initial_state=h0, output_final_state=True,
                            cu_seqlens=cu, chunk_size=8)
    assert S.shape == (len(lens), 2, 4, 3)
    for i, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        gi = None if g is None else g[:, a:b]
        o_ref, S_ref = la_loop(q[:, a:b], k[:, a:b], v[:, a:b], gi, h0=h0[i:i + 1])
        assert_close(o[:, a:b], o_ref)
        assert_close(S[i:i + 1], S_ref)


# --- gated_delta_rule ------------------------------------------------------------

@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("T,chunk", [(1, None), (37, None), (37, 8), (64, 16)])
def test_gated_delta_rule_equals_loop(rng, dtype, gated, T, chunk):
    q, k, v, g = make(rng, 2, T, 3, 5, 4, dtype, "scalar" if gated else "none")
    k = (k / np.linalg.norm(k, axis=-1, keepdims=True)).astype(dtype)
    beta = rng.uniform(0.1, 0.9, (2, T, 3)).astype(dtype)
    h0 = rng.standard_normal((2, 3, 5, 4)).astype(dtype)
    o, S = gated_delta_rule(q, k, v, g, beta, initial_state=h0,
                            output_final_state=True, chunk_size=chunk)
    o_ref, S_ref = gdr_loop(q, k, v, g, beta, h0=h0)
    assert o.dtype == dtype and S.dtype == dtype
    assert_close(o, o_ref, dtype, scale=50)
    assert_close(S, S_ref, dtype, scale=50)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_gated_delta_rule_l2norm(rng, dtype):
    q, k, v, g = make(rng, 1, 30, 2, 6, 3, dtype)
    beta = rng.uniform(0.1, 0.9, (1, 30, 2)).astype(dtype)
    o = gated_delta_rule(q, k, v, g, beta, use_qk_l2norm=True, scale=0.7, chunk_size=8)
    assert_close(o, gdr_loop(q, k, v, g, beta, scale=0.7, l2norm=True)[0], dtype, scale=50)


def test_gated_delta_rule_extreme_gates(rng):
    q, k, v, g = make(rng, 1, 33, 2, 4, 3, np.float64)
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    beta = rng.uniform(0.1, 0.9, (1, 33, 2))
    assert_close(gated_delta_rule(q, k, v, np.zeros_like(g), beta, chunk_size=8),
                 gated_delta_rule(q, k, v, None, beta, chunk_size=8))
    mixed = g.copy()
    mixed[:, ::5] = -1e4
    o = gated_delta_rule(q, k, v, mixed, beta, chunk_size=8)
    assert np.all(np.isfinite(o))
    assert_close(o, gdr_loop(q, k, v, mixed, beta)[0])


def test_gated_delta_rule_packed_equals_separate(rng):
    lens = [9, 0, 20, 3]
    cu = np.cumsum([0] + lens)
    q, k, v, g = make(rng, 1, int(cu[-1]), 2, 4, 3, np.float64)
    beta = rng.uniform(0.1, 0.9, (1, int(cu[-1]), 2))
    h0 = rng.standard_normal((len(lens), 2, 4, 3))
    o, S = gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                            cu_seqlens=cu, chunk_size=8, use_qk_l2norm=True)
    for i, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        o_ref, S_ref = gdr_loop(q[:, a:b], k[:, a:b], v[:, a:b], g[:, a:b], beta[:, a:b],
                                h0=h0[i:i + 1], l2norm=True)
        assert_close(o[:, a:b], o_ref)
        assert_close(S[i:i + 1], S_ref)


# --- the contract: workers, threads, inputs, errors ----------------------------

@pytest.mark.parametrize("fn", ["la", "gdr"])
def test_workers_and_concurrency_agree(rng, fn):
    q, k, v, g = make(rng, 3, 40, 3, 4, 5, np.float32)
    beta = rng.uniform(0.1, 0.9, (3, 40, 3)).astype(np.float32)

    def call(workers):
        if fn == "la":
            return linear_attention(q, k, v, g, chunk_size=16, workers=workers)
        return gated_delta_rule(q, k, v, g, beta, chunk_size=16, workers=workers)

    one = call(1)
    np.testing.assert_array_equal(call(2), one)
    np.testing.assert_array_equal(call(-1), one)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for r in pool.map(call, [1, 2, 1, 2]):
            np.testing.assert_array_equal(r, one)


def test_inputs_unmodified_readonly_noncontiguous(rng):
    q, k, v, g = make(rng, 2, 20, 3, 4, 5, np.float64)
    h0 = rng.standard_normal((2, 3, 4, 5))
    ref = linear_attention(q, k, v, g, initial_state=h0)
    copies = [x.copy() for x in (q, k, v, g, h0)]
    for x in (q, k, v, g, h0):
        x.setflags(write=False)
    assert_close(linear_attention(q, k, v, g, initial_state=h0), ref)
    for x, c in zip((q, k, v, g, h0), copies):
        np.testing.assert_array_equal(x, c)
    # non-contiguous views: (B, H, T, K) transposed
    qt = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    vt = np.asfortranarray(v)
    assert not qt.flags.c_contiguous and not vt.flags.c_contiguous
    assert_close(linear_attention(qt, k, vt, g, initial_state=h0), ref)


def test_mixed_dtypes_promote(rng):
    q, k, v, g = make(rng, 1, 10, 2, 4, 3, np.float32)
    o = linear_attention(q, k, v.astype(np.float64), g)
    assert o.dtype == np.float64
    o = linear_attention(q.astype(np.int64), k, v, g)
    assert o.dtype == np.float64


def test_module_is_callable(rng):
    q, k, v, g = make(rng, 1, 10, 2, 4, 3, np.float64)
    np.testing.assert_array_equal(zilla_muf.linear_attention(q, k, v, g),
                                  linear_attention(q, k, v, g))
    assert "linear_attention" in zilla_muf.__all__
    assert "gated_delta_rule" in zilla_muf.__all__


def test_bad_input(rng):
    q, k, v, g = make(rng, 1, 10, 2, 4, 3, np.float64)
    beta = np.full((1, 10, 2), 0.5)
    with pytest.raises(ValueError, match="`q`"):
        linear_attention(q[0], k, v)
    with pytest.raises(ValueError, match="`k`"):
        linear_attention(q, k[:, :5], v)
    with pytest.raises(ValueError, match="`v`"):
        linear_attention(q, k, v[:, :5])
    with pytest.raises(ValueError, match="`g`"):
        linear_attention(q, k, v, g[..., :1])
    with pytest.raises(ValueError, match="`g`"):
        gated_delta_rule(q, k, v, np.zeros((1, 10, 2, 4)), beta)
    with pytest.raises(ValueError, match="`beta`"):
        gated_delta_rule(q, k, v, g, beta[:, :3])
    with pytest.raises(TypeError, match="`beta`"):
        gated_delta_rule(q, k, v, g, None)
    with pytest.raises(ValueError, match="`initial_state`"):
        linear_attention(q, k, v, g, initial_state=np.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match="`chunk_size`"):
        linear_attention(q, k, v, g, chunk_size=0)
    with pytest.raises(ValueError, match="`workers`"):
        linear_attention(q, k, v, g, workers=0)
    with pytest.raises(TypeError, match="`q`"):
        linear_attention(q.astype(complex), k, v)
    with pytest.raises(TypeError, match="`v`"):
        linear_attention(q, k, v.astype(object))
    with pytest.raises(TypeError, match="`scale`"):
        linear_attention(q, k, v, scale="1")
    with pytest.raises(ValueError, match="`scale`"):
        linear_attention(q, k, v, scale=np.nan)
    with pytest.raises(ValueError, match="`cu_seqlens`"):
        linear_attention(q, k, v, cu_seqlens=[0, 4, 9])
    with pytest.raises(ValueError, match="`cu_seqlens`"):
        linear_attention(q, k, v, cu_seqlens=[0, 6, 4, 10])
    with pytest.raises(TypeError, match="`cu_seqlens`"):
        linear_attention(q, k, v, cu_seqlens=[0.0, 10.0])
    with pytest.raises(ValueError, match="`cu_seqlens`"):
        linear_attention(np.concatenate([q, q]), np.concatenate([k, k]),
                         np.concatenate([v, v]), cu_seqlens=[0, 10])
    with pytest.raises(ValueError, match="`initial_state`"):
        linear_attention(q, k, v, initial_state=np.zeros((1, 2, 4, 3)),
                         cu_seqlens=[0, 4, 10])


# --- property: chunked == the loop, for random shapes, chunks and workers ------


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 2), T=st.integers(1, 40), H=st.integers(1, 3),
       K=st.integers(1, 6), V=st.integers(1, 5), chunk=st.integers(1, 20),
       workers=st.integers(1, 3), gate=st.sampled_from(["none", "scalar", "channel"]),
       seed=st.integers(0, 2**31 - 1))
def test_property_chunked_equals_loop(B, T, H, K, V, chunk, workers, gate, seed):
    rng = np.random.default_rng(seed)
    q, k, v, g = make(rng, B, T, H, K, V, np.float64, gate)
    h0 = rng.standard_normal((B, H, K, V))
    o, S = linear_attention(q, k, v, g, initial_state=h0, output_final_state=True,
                            chunk_size=chunk, workers=workers)
    o_ref, S_ref = la_loop(q, k, v, g, h0=h0)
    assert_close(o, o_ref, scale=100)
    assert_close(S, S_ref, scale=100)
    if gate != "channel":
        k = k / np.sqrt((k * k).sum(-1, keepdims=True) + 1.0)
        beta = rng.uniform(0.0, 1.0, (B, T, H))
        o, S = gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                chunk_size=chunk, workers=workers)
        o_ref, S_ref = gdr_loop(q, k, v, g, beta, h0=h0)
        assert_close(o, o_ref, scale=100)
        assert_close(S, S_ref, scale=100)


def test_memmapped_inputs(rng, tmp_path):
    q, k, v, g = make(rng, 1, 30, 2, 4, 3, np.float32, "channel")
    beta = rng.uniform(0.1, 0.9, (1, 30, 2)).astype(np.float32)
    maps = []
    for i, x in enumerate((q, k, v, g, beta)):
        m = np.memmap(tmp_path / f"a{i}.bin", dtype=x.dtype, mode="w+", shape=x.shape)
        m[...] = x
        m.flush()
        maps.append(np.memmap(tmp_path / f"a{i}.bin", dtype=x.dtype, mode="r", shape=x.shape))
    mq, mk, mv, mg, mb = maps
    np.testing.assert_array_equal(linear_attention(mq, mk, mv, mg), linear_attention(q, k, v, g))
    np.testing.assert_array_equal(gated_delta_rule(mq, mk, mv, mg[..., 0], mb),
                                  gated_delta_rule(q, k, v, g[..., 0], beta))
    del maps, mq, mk, mv, mg, mb


def test_blas_thread_limit_restored_after_concurrent_calls(rng):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [i["num_threads"] for i in threadpoolctl.threadpool_info()
              if i["user_api"] == "blas"]
    q, k, v, g = make(rng, 2, 64, 4, 8, 8, np.float32)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda w: linear_attention(q, k, v, g, workers=w), [1, 2] * 4))
    after = [i["num_threads"] for i in threadpoolctl.threadpool_info()
             if i["user_api"] == "blas"]
    assert after == before


def test_empty_batch_and_sequence(rng):
    q, k, v, g = make(rng, 0, 5, 2, 3, 4, np.float64)
    o, S = linear_attention(q, k, v, g, output_final_state=True)
    assert o.shape == (0, 5, 2, 4) and S.shape == (0, 2, 3, 4)
    q, k, v, g = make(rng, 2, 0, 2, 3, 4, np.float64)
    h0 = rng.standard_normal((2, 2, 3, 4))
    o, S = gated_delta_rule(q, k, v, g, np.zeros((2, 0, 2)), initial_state=h0,
                            output_final_state=True)
    assert o.shape == (2, 0, 2, 4)
    np.testing.assert_array_equal(S, h0)


def test_function_and_module_names():
    import types

    assert isinstance(zilla_muf.linear_attention, types.ModuleType)
    assert isinstance(linear_attention, types.FunctionType)
    assert zilla_muf.gated_delta_rule is gated_delta_rule


def test_large_outputs_reuse_cached_memory(rng):
    """With the buffer cache on, a large output (>= 1 MiB) takes a freed
    block back, and the numbers are those of a fresh array."""
    limit = zilla_muf.buffer_cache()["max_bytes"]
    zilla_muf.buffer_cache(0)
    zilla_muf.buffer_cache(64 << 20)
    try:
        q, k, v, g = make(rng, 1, 520, 2, 8, 128, np.float64)      # o: 1.04 MiB
        beta = rng.uniform(0.1, 0.9, g.shape)
        want_la = la_loop(q, k, v, g)[0]
        want_gdr = gdr_loop(q, k, v, g, beta)[0]
        first = linear_attention(q, k, v, g)
        del first
        hits = zilla_muf.buffer_cache()["hits"]
        kept = linear_attention(q, k, v, g)
        assert zilla_muf.buffer_cache()["hits"] == hits + 1
        other = gated_delta_rule(q, k, v, g, beta)       # `kept` is alive: a new block
        assert not np.shares_memory(kept, other)
        assert_close(kept, want_la)
        assert_close(other, want_gdr)
    finally:
        zilla_muf.buffer_cache(0)
        zilla_muf.buffer_cache(limit)


@pytest.mark.parametrize("dtype, steps", [(np.float32, 8), (np.float64, 32)])
@pytest.mark.parametrize("form", ["scalar", "channel"])
def test_intra_chunk_decays_below_the_flush_threshold_are_zero(form, dtype, steps):
    # The same threshold inside a chunk: only the first position has a value,
    # so position t reads it through the score q_t . k_0 e^(-12 t), exactly
    # until that decay passes the threshold, and not at all after.
    thr = np.sqrt(np.finfo(dtype).tiny)
    B, H, K, V = 1, 1, 3, 2
    rng = np.random.default_rng(7)
    q = rng.uniform(0.5, 1.0, (B, steps, H, K)).astype(dtype)
    k = rng.uniform(0.5, 1.0, (B, steps, H, K)).astype(dtype)
    v = np.zeros((B, steps, H, V), dtype)
    v[0, 0, 0] = rng.uniform(1.0, 2.0, V)
    shape = (B, steps, H, K) if form == "channel" else (B, steps, H)
    g = np.full(shape, -12.0, dtype)
    decay = np.exp(-12.0 * np.arange(steps))
    kept = decay >= thr
    assert kept.any() and not kept.all()
    q64, k64 = q[0, :, 0].astype(np.float64), k[0, 0, 0].astype(np.float64)
    want = K ** -0.5 * np.outer(decay * (q64 @ k64), v[0, 0, 0])
    o = linear_attention(q, k, v, g, chunk_size=steps)[0, :, 0]
    assert (o[~kept] == 0).all()
    np.testing.assert_allclose(o[kept], want[kept], rtol=100 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype, steps", [(np.float32, 8), (np.float64, 32)])
@pytest.mark.parametrize("form", ["scalar", "channel", "delta"])
def test_decays_below_the_flush_threshold_are_zero(form, dtype, steps):
    # As the SSD does, the chunked forms set a decay below the square root
    # of the smallest normal number to zero (its products would be
    # subnormal, and slow): in one chunk, an initial state decaying by e^-12
    # a step, with zero keys, reaches the outputs exactly until its decay
    # passes that threshold, and not at all after.
    thr = np.sqrt(np.finfo(dtype).tiny)
    B, H, K, V = 1, 1, 3, 2
    rng = np.random.default_rng(6)
    q = rng.standard_normal((B, steps, H, K)).astype(dtype)
    k = np.zeros((B, steps, H, K), dtype)
    v = rng.standard_normal((B, steps, H, V)).astype(dtype)
    h0 = rng.uniform(1.0, 2.0, (B, H, K, V)).astype(dtype)
    shape = (B, steps, H, K) if form == "channel" else (B, steps, H)
    g = np.full(shape, -12.0, dtype)
    decay = np.exp(-12.0 * np.arange(1, steps + 1))
    kept = decay >= thr
    assert kept.any() and not kept.all()
    want = K ** -0.5 * np.einsum("t,tk,kv->tv", decay, q[0, :, 0].astype(np.float64),
                                 h0[0, 0].astype(np.float64))
    if form == "delta":
        beta = np.full((B, steps, H), 0.5, dtype)
        o = gated_delta_rule(q, k, v, g, beta, initial_state=h0, chunk_size=steps)
    else:
        o = linear_attention(q, k, v, g, initial_state=h0, chunk_size=steps)
    o = o[0, :, 0]
    assert (o[~kept] == 0).all()
    np.testing.assert_allclose(o[kept], want[kept], rtol=100 * np.finfo(dtype).eps)
