"""Tests of zilla_muf.ssd (Mamba-2 structured state space duality).

Oracles: a plain Python loop in float64 written here (checks the sequential
kernel too), the recurrence kernel (`ssd_sequential`) and the dense attention
form (`ssd_quadratic`). The identities: the four stages chained ==
combined == sequential == quadratic == the loop, and decoding token by token
== combined.
"""

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zilla_muf
from zilla_muf import (
    selective_state_update,
    ssd_chunk_cumsum,
    ssd_chunk_scan,
    ssd_chunk_scan_combined,
    ssd_chunk_state,
    ssd_quadratic,
    ssd_sequential,
    ssd_state_passing,
)

from conftest import REAL_DTYPES, assert_close

# every test of this module runs on each build of the chunk kernels
pytestmark = pytest.mark.usefixtures("ssd_build")

# ---------------------------------------------------------------------------
# The independent oracle: one position, one head at a time, in float64.
# ---------------------------------------------------------------------------


def _softplus(v):
    return v if v > 20.0 else math.log1p(math.exp(v))


def loop_oracle(x, dt, A, B, C, *, D=None, z=None, dt_bias=None,
                initial_states=None, seq_idx=None, dt_softplus=False,
                dt_limit=(0.0, math.inf)):
    x, dt, A, B, C = (np.asarray(a, dtype=np.float64) for a in (x, dt, A, B, C))
    nb, L, H, P = x.shape
    G, N = B.shape[2:]
    y = np.zeros((nb, L, H, P))
    if initial_states is None:
        h = np.zeros((nb, H, P, N))
    else:
        h = np.array(initial_states, dtype=np.float64)
    for b in range(nb):
        for t in range(L):
            if seq_idx is not None and t > 0 and seq_idx[b][t] != seq_idx[b][t - 1]:
                h[b] = 0.0
            for k in range(H):
                g = k // (H // G)
                d = float(dt[b, t, k]) + (0.0 if dt_bias is None else float(dt_bias[k]))
                if dt_softplus:
                    d = _softplus(d)
                d = min(max(d, dt_limit[0]), dt_limit[1])
                for p in range(P):
                    for n in range(N):
                        h[b, k, p, n] = (math.exp(d * A[k]) * h[b, k, p, n]
                                         + d * x[b, t, k, p] * B[b, t, g, n])
                    acc = 0.0
                    for n in range(N):
                        acc += h[b, k, p, n] * C[b, t, g, n]
                    if D is not None:
                        dk = D[k] if np.ndim(D) == 1 else D[k][p]
                        acc += float(dk) * x[b, t, k, p]
                    if z is not None:
                        zz = float(z[b, t, k, p])
                        acc *= zz / (1.0 + math.exp(-zz)) if zz > -700 else 0.0
                    y[b, t, k, p] = acc
    return y, h


def make_problem(rng, nb=2, L=19, H=4, P=3, G=2, N=5, dtype=np.float64, *,
                 D=None, z=False, dt_bias=False, init=False, seq=False,
                 softplus=False):
    """Random inputs with realistic ranges (A < 0, small positive steps)."""
    kw = {}
    x = rng.standard_normal((nb, L, H, P)).astype(dtype)
    if softplus:
        dt = rng.uniform(-5.0, -1.0, (nb, L, H)).astype(dtype)
        kw["dt_softplus"] = True
    else:
        dt = rng.uniform(0.0, 0.5, (nb, L, H)).astype(dtype)
    A = (-rng.uniform(0.5, 4.0, H)).astype(dtype)
    B = rng.standard_normal((nb, L, G, N)).astype(dtype)
    C = rng.standard_normal((nb, L, G, N)).astype(dtype)
    if D == "head":
        kw["D"] = rng.standard_normal(H).astype(dtype)
    elif D == "channel":
        kw["D"] = rng.standard_normal((H, P)).astype(dtype)
    if z:
        kw["z"] = rng.standard_normal((nb, L, H, P)).astype(dtype)
    if dt_bias:
        kw["dt_bias"] = rng.uniform(-0.5, 0.5, H).astype(dtype)
    if init:
        kw["initial_states"] = rng.standard_normal((nb, H, P, N)).astype(dtype)
    if seq:
        kw["seq_idx"] = np.sort(rng.integers(0, 3, (nb, L)), axis=1)
    return (x, dt, A, B, C), kw


def run_stages(x, dt, A, B, C, chunk_size, *, D=None, z=None, dt_bias=None,
               initial_states=None, seq_idx=None, dt_softplus=False,
               dt_limit=(0.0, math.inf), workers=None):
    dt_out, dA_cumsum = ssd_chunk_cumsum(dt, A, chunk_size=chunk_size,
                                         dt_bias=dt_bias,
                                         dt_softplus=dt_softplus,
                                         dt_limit=dt_limit)
    states = ssd_chunk_state(x, B, dt_out, dA_cumsum, seq_idx=seq_idx,
                             workers=workers)
    entering, final = ssd_state_passing(states, dA_cumsum,
                                        initial_states=initial_states,
                                        seq_idx=seq_idx, workers=workers)
    y = ssd_chunk_scan(x, dt_out, dA_cumsum, B, C, entering, D=D, z=z,
                       seq_idx=seq_idx, workers=workers)
    return y, final


# ---------------------------------------------------------------------------
# Against the loop oracle
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("options", [
    {},
    {"D": "head", "z": True, "dt_bias": True, "softplus": True},
    {"D": "channel", "init": True, "seq": True},
    {"init": True, "seq": True, "z": True, "dt_bias": True},
])
def test_all_methods_match_loop_oracle(rng, dtype, options):
    args, kw = make_problem(rng, dtype=dtype, **options)
    y_ref, h_ref = loop_oracle(*args, **kw)
    scale = 20.0  # sums over headdim*dstate and up to seqlen terms
    for chunk_size in (1, 4, 7, 64, None):
        y, h = ssd_chunk_scan_combined(*args, chunk_size, **kw,
                                       return_final_states=True, workers=2)
        assert y.dtype == dtype and h.dtype == dtype
        assert_close(y, y_ref, dtype, scale)
        assert_close(h, h_ref, dtype, scale)
        if chunk_size is not None:
            y4, h4 = run_stages(*args, chunk_size, **kw)
            assert y4.dtype == dtype and h4.dtype == dtype
            assert_close(y4, y_ref, dtype, scale)
            assert_close(h4, h_ref, dtype, scale)
    y, h = ssd_sequential(*args, **kw, return_final_states=True)
    assert y.dtype == dtype and h.dtype == dtype
    assert_close(y, y_ref, dtype, scale)
    assert_close(h, h_ref, dtype, scale)
    if "initial_states" not in kw and "seq_idx" not in kw:
        yq = ssd_quadratic(*args, **kw)
        assert yq.dtype == dtype
        assert_close(yq, y_ref, dtype, scale)


# The chunk products are tiles of 6 rows by two vectors (16 float32 or 8
# float64 columns): headdim, dstate and chunk lengths around those sizes
# exercise the partial tiles, the padded columns and the shared / per-head
# C B^T paths.
TILE_EDGE_CASES = [
    # (headdim, dstate, chunk_size, seqlen, nheads, ngroups)
    (1, 1, 5, 23, 2, 1),
    (7, 6, 6, 40, 2, 2),
    (9, 7, 7, 50, 3, 1),
    (16, 13, 16, 47, 2, 1),
    (17, 12, 17, 61, 2, 2),
    (33, 5, 64, 70, 2, 1),
    (24, 20, 13, 45, 4, 2),
]


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("case", TILE_EDGE_CASES)
def test_chunk_products_at_tile_edges(rng, dtype, case):
    P, N, chunk_size, L, H, G = case
    args, kw = make_problem(rng, nb=1, L=L, H=H, P=P, G=G, N=N, dtype=dtype,
                            D="head", init=True, seq=P % 2 == 1)
    y_ref, h_ref = loop_oracle(*args, **kw)
    scale = 20.0
    y, h = ssd_chunk_scan_combined(*args, chunk_size, **kw,
                                   return_final_states=True, workers=2)
    assert_close(y, y_ref, dtype, scale)
    assert_close(h, h_ref, dtype, scale)
    y4, h4 = run_stages(*args, chunk_size, **kw, workers=2)
    assert_close(y4, y_ref, dtype, scale)
    assert_close(h4, h_ref, dtype, scale)


def test_dt_limit_clamps_the_step(rng):
    args, kw = make_problem(rng, softplus=True, dt_bias=True)
    for lim in [(0.05, 0.1), (0.0, 0.02), (-1.0, 1.0)]:
        y_ref, h_ref = loop_oracle(*args, **kw, dt_limit=lim)
        y, h = ssd_chunk_scan_combined(*args, 5, **kw, dt_limit=lim,
                                       return_final_states=True)
        assert_close(y, y_ref, np.float64, 20)
        assert_close(h, h_ref, np.float64, 20)
        assert_close(ssd_quadratic(*args, **kw, dt_limit=lim), y_ref, np.float64, 20)


def test_negative_dt_is_clamped_to_zero_by_default(rng):
    args, _ = make_problem(rng, nb=1, L=6, H=2, G=1)
    x, dt, A, B, C = args
    dt = -np.abs(dt)
    assert not np.any(ssd_chunk_scan_combined(x, dt, A, B, C))
    assert not np.any(ssd_sequential(x, dt, A, B, C))


def test_growing_decay_is_not_clamped(rng):
    # A > 0 makes the state grow; the chunked form must not clip that.
    args, _ = make_problem(rng, nb=1, L=23, H=2, G=1)
    x, dt, A, B, C = args
    A = np.abs(A) * 0.3
    y_ref, _ = loop_oracle(x, dt, A, B, C)
    assert_close(ssd_chunk_scan_combined(x, dt, A, B, C, 8), y_ref, np.float64, 100)
    assert_close(ssd_sequential(x, dt, A, B, C), y_ref, np.float64, 100)


# ---------------------------------------------------------------------------
# Properties over random shapes and options
# ---------------------------------------------------------------------------


@st.composite
def problems(draw):
    nb = draw(st.integers(1, 2))
    L = draw(st.sampled_from([1, 2, 3, 5, 8, 13, 16, 17, 31]))
    H = draw(st.sampled_from([1, 2, 4]))
    G = draw(st.sampled_from(sorted({1, min(2, H), H})))
    if H % G:
        G = 1
    P = draw(st.integers(1, 4))
    N = draw(st.integers(1, 5))
    chunk_size = draw(st.sampled_from([1, 2, 3, 4, 8, 16, 64]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    opts = {
        "D": draw(st.sampled_from([None, "head", "channel"])),
        "z": draw(st.booleans()),
        "dt_bias": draw(st.booleans()),
        "init": draw(st.booleans()),
        "softplus": draw(st.booleans()),
    }
    args, kw = make_problem(rng, nb, L, H, P, G, N, **opts)
    if draw(st.booleans()):
        # 1 to 3 packed sequences per row
        nseq = draw(st.integers(1, 3))
        cuts = np.sort(rng.integers(0, L + 1, (nb, nseq - 1)), axis=1)
        seq = np.zeros((nb, L), dtype=np.int32)
        for b in range(nb):
            for c in cuts[b]:
                seq[b, c:] += 1
        kw["seq_idx"] = seq
    if draw(st.booleans()):
        kw["dt_limit"] = (0.01, draw(st.sampled_from([0.2, math.inf])))
    workers = draw(st.sampled_from([1, 2]))
    return args, kw, chunk_size, workers


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_stages_combined_sequential_quadratic_agree(problem):
    args, kw, chunk_size, workers = problem
    y_ref, h_ref = loop_oracle(*args, **kw)
    y_seq, h_seq = ssd_sequential(*args, **kw, return_final_states=True,
                                  workers=workers)
    y_cmb, h_cmb = ssd_chunk_scan_combined(*args, chunk_size, **kw,
                                           return_final_states=True,
                                           workers=workers)
    y_stg, h_stg = run_stages(*args, chunk_size, **kw, workers=workers)
    for y, h in [(y_seq, h_seq), (y_cmb, h_cmb), (y_stg, h_stg)]:
        assert_close(y, y_ref, np.float64, 50)
        assert_close(h, h_ref, np.float64, 50)
    if "initial_states" not in kw and "seq_idx" not in kw:
        assert_close(ssd_quadratic(*args, **kw), y_ref, np.float64, 50)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("L", [1, 5, 64, 100])
def test_stage_shapes_and_padding(rng, dtype, L):
    args, kw = make_problem(rng, L=L, dtype=dtype, init=True)
    x, dt, A, B, C = args
    cs = 16
    nch = -(-L // cs)
    dt_out, dA_cumsum = ssd_chunk_cumsum(dt, A, chunk_size=cs)
    assert dt_out.shape == dA_cumsum.shape == (2, 4, nch, cs)
    assert dt_out.dtype == dA_cumsum.dtype == dtype
    flat = dt_out.reshape(2, 4, nch * cs)
    assert not np.any(flat[:, :, L:])                 # padding has dt = 0
    np.testing.assert_array_equal(flat[:, :, :L], np.clip(dt, 0, None).transpose(0, 2, 1))
    cum = dA_cumsum.reshape(2, 4, nch * cs)
    # padding repeats the last real value of the chunk
    last = (L - 1) % cs
    np.testing.assert_array_equal(dA_cumsum[..., -1, last:],
                                  np.repeat(dA_cumsum[..., -1, last:last + 1], cs - last, -1))
    assert np.all(np.diff(dA_cumsum, axis=-1) <= 0)   # A < 0: non-increasing
    assert_close(cum[..., :min(cs, L)],
                 np.cumsum(dt[:, :min(cs, L)].astype(np.float64).transpose(0, 2, 1)
                           * A[:, None], axis=-1), dtype)
    states = ssd_chunk_state(x, B, dt_out, dA_cumsum)
    assert states.shape == (2, nch, 4, 3, 5) and states.dtype == dtype
    entering, final = ssd_state_passing(states, dA_cumsum,
                                        initial_states=kw["initial_states"])
    assert entering.shape == states.shape and final.shape == (2, 4, 3, 5)
    np.testing.assert_array_equal(entering[:, 0], kw["initial_states"])
    # the final state is the state after the last real token
    _, h_ref = loop_oracle(*args, **kw)
    assert_close(final, h_ref, dtype, 20)
    # the state entering chunk k is the state after position k*cs - 1
    for k in range(1, nch):
        _, h_k = loop_oracle(x[:, :k * cs], dt[:, :k * cs], A, B[:, :k * cs],
                             C[:, :k * cs], **kw)
        assert_close(entering[:, k], h_k, dtype, 20)


def test_chunk_state_is_end_state_from_zero(rng):
    args, _ = make_problem(rng, L=12, G=1)
    x, dt, A, B, C = args
    dt_out, dA_cumsum = ssd_chunk_cumsum(dt, A, chunk_size=5)
    states = ssd_chunk_state(x, B, dt_out, dA_cumsum)
    for k in range(3):
        sl = slice(5 * k, min(5 * k + 5, 12))
        _, h = loop_oracle(x[:, sl], dt[:, sl], A, B[:, sl], C[:, sl])
        assert_close(states[:, k], h, np.float64, 10)


def test_seq_idx_resets_state(rng):
    # two packed sequences == two separate calls
    args, _ = make_problem(rng, nb=1, L=20, G=1)
    x, dt, A, B, C = args
    seq = np.array([[3] * 7 + [8] * 13])
    y, h = ssd_chunk_scan_combined(x, dt, A, B, C, 4, seq_idx=seq,
                                   return_final_states=True)
    y1 = ssd_chunk_scan_combined(x[:, :7], dt[:, :7], A, B[:, :7], C[:, :7], 4)
    y2, h2 = ssd_chunk_scan_combined(x[:, 7:], dt[:, 7:], A, B[:, 7:], C[:, 7:],
                                     4, return_final_states=True)
    assert_close(y, np.concatenate([y1, y2], axis=1), np.float64, 10)
    assert_close(h, h2, np.float64, 10)


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_selective_state_update_token_by_token(rng, dtype):
    args, kw = make_problem(rng, L=13, dtype=dtype, D="channel", z=True,
                            dt_bias=True, softplus=True, init=True)
    x, dt, A, B, C = args
    y_ref, h_ref = ssd_chunk_scan_combined(*args, 4, **kw,
                                           return_final_states=True)
    state = kw.pop("initial_states").copy()
    z = kw.pop("z")
    ys = []
    for t in range(x.shape[1]):
        ys.append(selective_state_update(state, x[:, t], dt[:, t], A, B[:, t],
                                         C[:, t], z=z[:, t], **kw))
        assert ys[-1].dtype == dtype
    assert_close(np.stack(ys, axis=1), y_ref, dtype, 20)
    assert_close(state, h_ref, dtype, 20)


def test_selective_state_update_state_checks(rng):
    x = rng.standard_normal((2, 4, 3))
    dt = rng.uniform(0, 1, (2, 4))
    A = -np.ones(4)
    B = rng.standard_normal((2, 2, 5))
    C = rng.standard_normal((2, 2, 5))
    state = np.zeros((2, 4, 3, 5))
    ro = state.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="`state`.*writeable"):
        selective_state_update(ro, x, dt, A, B, C)
    nc = np.zeros((2, 4, 5, 3)).transpose(0, 1, 3, 2)
    with pytest.raises(ValueError, match="`state`.*contiguous"):
        selective_state_update(nc, x, dt, A, B, C)
    with pytest.raises(TypeError, match="`state`"):
        selective_state_update(state.tolist(), x, dt, A, B, C)
    with pytest.raises(TypeError, match="`state`"):
        selective_state_update(state.astype(np.float32), x, dt, A, B, C)
    with pytest.raises(TypeError, match="`state`"):
        selective_state_update(state.astype(np.int64), x, dt, A, B, C)
    with pytest.raises(ValueError, match="`state`"):
        selective_state_update(np.zeros((2, 4, 3, 6)), x, dt, A, B, C)
    with pytest.raises(ValueError, match="`dt`"):
        selective_state_update(state, x, dt[:, :3], A, B, C)
    with pytest.raises(ValueError, match="`z`"):
        selective_state_update(state, x, dt, A, B, C, z=x[:, :2])
    # the state is untouched by a failed call, and advanced by a good one
    assert not np.any(state)
    selective_state_update(state, x, dt, A, B, C)
    assert np.any(state)


# ---------------------------------------------------------------------------
# float32 accuracy over a long sequence
# ---------------------------------------------------------------------------


def _mixer_step_loop(zxbcdt, conv_state, w, bias, dt_bias, A, D, nw, state, P, G, eps):
    """transformers' Mamba2Mixer decoding token, one number at a time (float64)."""
    nb, H = state.shape[:2]
    N = state.shape[3]
    di, cd, K = H * P, conv_state.shape[1], w.shape[1]
    out = np.zeros((nb, di))
    Wc = conv_state.shape[2]
    for b in range(nb):
        new = zxbcdt[b, di:di + cd]
        # the taps read the cache's last K - 1 inputs and the new one
        window = np.concatenate([conv_state[b, :, Wc - (K - 1):], new[:, None]], axis=1)
        if Wc:
            conv_state[b] = np.concatenate([conv_state[b, :, 1:], new[:, None]], axis=1)
        xbc = np.zeros(cd)
        for c in range(cd):
            v = bias[c] + sum(window[c, k] * w[c, k] for k in range(K))
            xbc[c] = v / (1.0 + math.exp(-v))
        y = np.zeros(di)
        for h in range(H):
            g = h // (H // G)
            d = _softplus(zxbcdt[b, di + cd + h] + dt_bias[h])
            for p in range(P):
                xv = xbc[h * P + p]
                acc = 0.0
                for n in range(N):
                    Bv = xbc[di + g * N + n]
                    Cv = xbc[di + G * N + g * N + n]
                    state[b, h, p, n] = (math.exp(d * A[h]) * state[b, h, p, n]
                                         + d * xv * Bv)
                    acc += state[b, h, p, n] * Cv
                z = zxbcdt[b, h * P + p]
                y[h * P + p] = (acc + D[h] * xv) * z / (1.0 + math.exp(-z))
        gs = di // G
        for g in range(G):
            seg = y[g * gs:(g + 1) * gs]
            out[b, g * gs:(g + 1) * gs] = (seg / math.sqrt(np.mean(seg ** 2) + eps)
                                           * nw[g * gs:(g + 1) * gs])
    return out


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("K,Wc", [(4, 4), (2, 2), (4, 3), (3, 5), (1, 0)])
def test_mamba2_mixer_step_against_a_loop(rng, dtype, K, Wc):
    from zilla_muf.ssd import _mamba2_mixer_step, _mamba2_step_params

    # Wc = K: transformers' layout (the cache holds the last K inputs);
    # K - 1: the window alone; more: older inputs kept and shifted along
    nb, H, P, G, N = 2, 4, 3, 2, 5
    di = H * P
    cd = di + 2 * G * N
    zxbcdt = rng.standard_normal((nb, di + cd + H))
    conv_state = rng.standard_normal((nb, cd, Wc))
    w = rng.standard_normal((cd, K)) * 0.5
    bias = rng.standard_normal(cd)
    dt_bias = rng.uniform(-2, 0, H)
    A = -rng.uniform(0.5, 2, H)
    D = rng.standard_normal(H)
    nw = rng.uniform(0.5, 1.5, di)
    state = rng.standard_normal((nb, H, P, N))
    cs, st = conv_state.astype(dtype), state.astype(dtype)
    for _ in range(3):  # three tokens, the states carried by both sides
        params = _mamba2_step_params(w, bias, dt_bias, A, D, nw, dtype=dtype,
                                     headdim=P)
        out = _mamba2_mixer_step(zxbcdt.astype(dtype), cs, st, params, ngroups=G,
                                 eps=1e-5)
        ref = _mixer_step_loop(zxbcdt, conv_state, w, bias, dt_bias, A, D, nw,
                               state, P, G, 1e-5)
        assert out.dtype == dtype
        assert_close(out, ref, dtype, 50)
        assert_close(st, state, dtype, 50)
        assert_close(cs, conv_state, dtype, 50)
        zxbcdt = rng.standard_normal(zxbcdt.shape)


def test_mamba2_mixer_step_refuses_a_state_it_cannot_update():
    from zilla_muf.ssd import _mamba2_mixer_step, _mamba2_step_params

    H, P, G, N = 2, 2, 1, 3
    cd = H * P + 2 * G * N
    z = np.zeros((1, H * P + cd + H), np.float32)
    params = _mamba2_step_params(np.zeros((cd, 4)), None, np.zeros(H), -np.ones(H),
                                 None, np.ones(H * P), dtype=np.float32, headdim=P)
    conv = np.zeros((1, cd, 4), np.float32)
    state = np.zeros((1, H, P, N), np.float32)
    kw = {"ngroups": G, "eps": 1e-5}
    with pytest.raises(TypeError, match="`state`"):
        _mamba2_mixer_step(z, conv, state.astype(np.float64), params, **kw)
    with pytest.raises(TypeError, match="`conv_state`"):
        _mamba2_mixer_step(z, conv[:, :, ::2], state, params, **kw)
    with pytest.raises(TypeError, match="`params`"):
        _mamba2_mixer_step(z.astype(np.float64), conv.astype(np.float64),
                           state.astype(np.float64), params, **kw)
    with pytest.raises(ValueError, match="must agree"):
        _mamba2_mixer_step(z[:, :-1], conv, state, params, **kw)
    with pytest.raises(ValueError, match="conv_state"):
        _mamba2_mixer_step(z, conv[:, :-1].copy(), state, params, **kw)
    out = _mamba2_mixer_step(z, conv, state, params, **kw)
    assert out.shape == (1, H * P) and np.all(out == 0)


def test_float32_long_sequence_accuracy():
    rng = np.random.default_rng(7)
    nb, L, H, P, G, N = 1, 4096, 2, 16, 1, 16
    x = rng.standard_normal((nb, L, H, P))
    # softplus(dt + dt_bias) between about 0.001 and 0.1
    dt = rng.uniform(-7.0, -2.3, (nb, L, H))
    A = -rng.uniform(1.0, 16.0, H)
    B = rng.standard_normal((nb, L, G, N))
    C = rng.standard_normal((nb, L, G, N))
    D = rng.standard_normal(H)
    y64 = ssd_sequential(x, dt, A, B, C, D=D, dt_softplus=True)
    args32 = [a.astype(np.float32) for a in (x, dt, A, B, C)]
    D32 = D.astype(np.float32)
    mag = np.max(np.abs(y64))
    for chunk_size in (64, 256, None):
        y32 = ssd_chunk_scan_combined(*args32, chunk_size, D=D32,
                                      dt_softplus=True, workers=2)
        assert y32.dtype == np.float32
        assert np.max(np.abs(y32 - y64)) <= 1e-4 * mag
    y32 = ssd_sequential(*args32, D=D32, dt_softplus=True)
    assert y32.dtype == np.float32
    assert np.max(np.abs(y32 - y64)) <= 1e-4 * mag


def test_strong_decay_underflows_cleanly(rng):
    # decays of e^-1000 per step: no overflow, no NaN, state ~ last input
    args, _ = make_problem(rng, nb=1, L=40, H=2, G=1)
    x, dt, A, B, C = args
    A = np.array([-1e4, -1e3])
    dt = np.full_like(dt, 1.0)
    y_ref, _ = loop_oracle(x, dt, A, B, C)
    for dtype in REAL_DTYPES:
        a = [v.astype(dtype) for v in (x, dt, A, B, C)]
        y = ssd_chunk_scan_combined(*a, 16)
        assert np.all(np.isfinite(y))
        assert_close(y, y_ref, dtype, 10)


@pytest.mark.parametrize("dtype, steps", [(np.float32, 8), (np.float64, 32)])
def test_decays_below_the_flush_threshold_are_zero(dtype, steps):
    # The chunked forms set a decay below the square root of the smallest
    # normal number to zero (its products would be subnormal, and slow),
    # forward and backward alike: in one chunk, an initial state decaying by
    # e^-12 a step, with no input, reaches the outputs exactly until its
    # decay passes that threshold, and not at all after. (Across chunks the
    # state is carried by one decay a chunk, each above the threshold here
    # in float64, so it fades through the subnormal range instead.)
    thr = math.sqrt(np.finfo(dtype).tiny)
    nb, H, P, G, N = 1, 1, 2, 1, 3
    rng = np.random.default_rng(5)
    x = np.zeros((nb, steps, H, P), dtype)
    dt = np.ones((nb, steps, H), dtype)
    A = np.array([-12.0], dtype)
    B = rng.standard_normal((nb, steps, G, N)).astype(dtype)
    C = rng.standard_normal((nb, steps, G, N)).astype(dtype)
    h0 = rng.uniform(1.0, 2.0, (nb, H, P, N)).astype(dtype)
    decay = np.exp(-12.0 * np.arange(1, steps + 1))
    kept = decay >= thr
    assert kept.any() and not kept.all()
    want = np.einsum("t,tn,hpn->thp", decay, C[0, :, 0].astype(np.float64),
                     h0[0].astype(np.float64))[None]
    y = ssd_chunk_scan_combined(x, dt, A, B, C, steps, initial_states=h0)
    assert (y[:, ~kept] == 0).all()
    np.testing.assert_allclose(y[:, kept], want[:, kept],
                               rtol=100 * np.finfo(dtype).eps)


# ---------------------------------------------------------------------------
# The Cython contract
# ---------------------------------------------------------------------------


def test_readonly_noncontiguous_memmapped_inputs_unmodified(rng, tmp_path):
    args, kw = make_problem(rng, L=21, D="head", z=True, dt_bias=True,
                            init=True, seq=True)
    y_ref, h_ref = ssd_sequential(*args, **kw, return_final_states=True)
    # non-contiguous views of the same values
    x, dt, A, B, C = args
    xs = np.asfortranarray(x)
    Bs = np.concatenate([B, B], axis=-1)[..., ::2]
    Bs[...] = B
    Cs = C[:, ::-1][:, ::-1]
    mm = np.lib.format.open_memmap(tmp_path / "dt.npy", mode="w+",
                                   dtype=dt.dtype, shape=dt.shape)
    mm[...] = dt
    mm.flush()
    dt_mm = np.load(tmp_path / "dt.npy", mmap_mode="r")
    new = [xs, dt_mm, A, Bs, Cs]
    kw = dict(kw)
    for v in list(new) + [kw["D"], kw["z"], kw["initial_states"], kw["seq_idx"]]:
        if isinstance(v, np.ndarray) and not isinstance(v, np.memmap):
            v.flags.writeable = False
    copies = [np.array(v) for v in new] + [np.array(kw[k]) for k in sorted(kw)]
    for fn in (ssd_chunk_scan_combined, ssd_sequential):
        y, h = fn(*new, 8, **kw, return_final_states=True, workers=2)
        assert_close(y, y_ref, np.float64, 10)
        assert_close(h, h_ref, np.float64, 10)
    y4, h4 = run_stages(*new, 8, **kw, workers=2)
    assert_close(y4, y_ref, np.float64, 10)
    # the chunk scan stage with read-only entering states
    dt_out, dA_cumsum = ssd_chunk_cumsum(dt_mm, A, chunk_size=8,
                                         dt_bias=kw["dt_bias"],
                                         dt_softplus=kw.get("dt_softplus", False))
    states = ssd_chunk_state(xs, Bs, dt_out, dA_cumsum, seq_idx=kw["seq_idx"])
    entering, _ = ssd_state_passing(states, dA_cumsum,
                                    initial_states=kw["initial_states"],
                                    seq_idx=kw["seq_idx"])
    entering.flags.writeable = False
    y5 = ssd_chunk_scan(xs, dt_out, dA_cumsum, Bs, Cs, entering, D=kw["D"],
                        z=kw["z"], seq_idx=kw["seq_idx"], workers=2)
    assert_close(y5, y_ref, np.float64, 10)
    for v, c in zip(new + [kw[k] for k in sorted(kw)], copies):
        np.testing.assert_array_equal(v, c)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_workers_agree(rng, dtype, monkeypatch):
    # every requested thread runs, however loaded the machine is
    monkeypatch.setattr(zilla_muf._config, "free_cores", lambda: 64)
    args, kw = make_problem(rng, nb=3, L=70, H=4, P=8, G=1, N=8, dtype=dtype,
                            init=True, seq=True)
    y1, h1 = ssd_chunk_scan_combined(*args, 16, **kw, return_final_states=True,
                                     workers=1)
    y2, h2 = ssd_chunk_scan_combined(*args, 16, **kw, return_final_states=True,
                                     workers=2)
    ya, ha = ssd_chunk_scan_combined(*args, 16, **kw, return_final_states=True,
                                     workers=-1)
    # one (batch, head) task per thread: the same operations in the same order
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(y1, ya)
    s1 = ssd_sequential(*args, **kw, workers=1)
    np.testing.assert_array_equal(s1, ssd_sequential(*args, **kw, workers=2))
    r1 = run_stages(*args, 16, **kw, workers=1)
    r2 = run_stages(*args, 16, **kw, workers=2)
    np.testing.assert_array_equal(r1[0], r2[0])
    np.testing.assert_array_equal(r1[1], r2[1])


@pytest.mark.parametrize("free", [1, 2])
def test_layer_runs_on_the_free_cores_only(rng, monkeypatch, free):
    """With other processes on the cores, workers=2 runs the kernels on the
    cores left free, with the same result."""
    from zilla_muf import _ssd

    args, kw = make_problem(rng, nb=2, L=40, H=4, P=8, G=1, N=8,
                            dtype=np.float64, init=True)
    monkeypatch.setattr(zilla_muf._config, "free_cores", lambda: 64)
    y_all, h_all = ssd_chunk_scan_combined(*args, 16, **kw, workers=2,
                                           return_final_states=True)
    seen = []
    real = _ssd.combined

    def spy(*a, **k):
        seen.append(a[8])          # the thread count
        return real(*a, **k)

    monkeypatch.setattr(_ssd, "combined", spy)
    monkeypatch.setattr(zilla_muf._config, "free_cores", lambda: free)
    y, h = ssd_chunk_scan_combined(*args, 16, **kw, workers=2,
                                   return_final_states=True)
    assert seen == [min(2, free)]
    np.testing.assert_array_equal(y, y_all)
    np.testing.assert_array_equal(h, h_all)


def test_kernels_run_on_the_requested_threads(rng):
    from zilla_muf import _ssd

    args, _ = make_problem(rng, nb=2, L=16, H=4, G=1)
    x, dt, A, B, C = args
    dt_out, dA = ssd_chunk_cumsum(dt, A, chunk_size=8)
    dt_out = dt_out.reshape(2, 4, 16)
    dA = dA.reshape(2, 4, 16)
    last = np.zeros((2, 4, 3, 5))
    y = np.empty_like(x)
    used = _ssd.combined(x, dt_out, dA, B, C, y, last, 8, 2)
    assert used == (2 if zilla_muf.have_openmp() else 1)
    assert _ssd.combined(x, dt_out, dA, B, C, y, last, 8, 1) == 1


def test_concurrent_calls_match_serial(rng):
    problems_ = [make_problem(rng, nb=2, L=50, H=4, P=8, G=2, N=8,
                              dtype=dt_, init=True, seq=True)
                 for dt_ in (np.float32, np.float64) * 4]

    def work(i):
        args, kw = problems_[i]
        return (ssd_chunk_scan_combined(*args, 16, **kw, workers=2),
                ssd_sequential(*args, **kw))

    serial = [work(i) for i in range(len(problems_))]
    barrier = threading.Barrier(4)

    def concurrent(i):
        if i < 4:
            barrier.wait()
        return work(i)

    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(concurrent, range(len(problems_))))
    for (a1, b1), (a2, b2) in zip(serial, results):
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(b1, b2)


def test_empty_and_degenerate_shapes(rng):
    x = np.zeros((2, 0, 4, 3), dtype=np.float32)
    dt = np.zeros((2, 0, 4), dtype=np.float32)
    A = -np.ones(4, dtype=np.float32)
    B = np.zeros((2, 0, 2, 5), dtype=np.float32)
    init = rng.standard_normal((2, 4, 3, 5)).astype(np.float32)
    for fn in (ssd_chunk_scan_combined, ssd_sequential):
        y, h = fn(x, dt, A, B, B, initial_states=init, return_final_states=True)
        assert y.shape == x.shape and y.dtype == np.float32
        np.testing.assert_array_equal(h, init)
    assert ssd_quadratic(x, dt, A, B, B).shape == x.shape
    # dstate 0: no state, the output is the skip connection alone
    args, _ = make_problem(rng, N=1)
    x, dt, A, B, C = args
    B0 = B[..., :0]
    D = np.arange(4.0)
    for fn in (ssd_chunk_scan_combined, ssd_sequential, ssd_quadratic):
        np.testing.assert_array_equal(fn(x, dt, A, B0, B0, D=D), x * D[:, None])


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def _good(rng):
    args, _ = make_problem(rng, nb=2, L=9, H=4, P=3, G=2, N=5)
    return list(args)


@pytest.mark.parametrize("fn", [ssd_chunk_scan_combined, ssd_sequential, ssd_quadratic])
def test_bad_shapes_name_the_argument(rng, fn):
    x, dt, A, B, C = _good(rng)
    cases = [
        ((x[0], dt, A, B, C), {}, "`x`"),
        ((x, dt[:1], A, B, C), {}, "`dt`"),          # batch
        ((x, dt[:, :5], A, B, C), {}, "`dt`"),       # seqlen
        ((x, dt[..., :3], A, B, C), {}, "`dt`"),     # heads
        ((x, dt, A[:3], B, C), {}, "`A`"),
        ((x, dt, A, B[:, :4], C), {}, "`B`"),
        ((x, dt, A, B, C[..., :4]), {}, "`C`"),
        ((x, dt, A, np.concatenate([B, B[:, :, :1]], 2),
          np.concatenate([C, C[:, :, :1]], 2)), {}, "ngroups"),
        ((x, dt, A, B, C), {"D": np.ones(3)}, "`D`"),
        ((x, dt, A, B, C), {"z": x[:, :, :2]}, "`z`"),
        ((x, dt, A, B, C), {"dt_bias": np.ones(5)}, "`dt_bias`"),
        ((x, dt, A, B, C), {"dt_limit": (1.0, 0.0)}, "`dt_limit`"),
    ]
    if fn is not ssd_quadratic:
        seq_bad = np.zeros((2, 9), dtype=np.int64)
        seq_bad[1, 5] = 2
        cases += [
            ((x, dt, A, B, C), {"initial_states": np.zeros((2, 4, 3, 4))},
             "`initial_states`"),
            ((x, dt, A, B, C), {"seq_idx": np.zeros((2, 8), dtype=int)}, "`seq_idx`"),
            ((x, dt, A, B, C), {"seq_idx": seq_bad}, "`seq_idx`.*non-decreasing"),
            ((x, dt, A, B, C, 0), {}, "`chunk_size`"),
            ((x, dt, A, B, C, -3), {}, "`chunk_size`"),
            ((x, dt, A, B, C), {"workers": 0}, "`workers`"),
        ]
    for args, kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            fn(*args, **kw)
    with pytest.raises(TypeError, match="`x`"):
        fn(x.astype(object), dt, A, B, C)
    with pytest.raises(TypeError, match="`B`"):
        fn(x, dt, A, B.astype(complex), C)
    if fn is not ssd_quadratic:
        with pytest.raises(TypeError, match="`seq_idx`"):
            fn(x, dt, A, B, C, seq_idx=np.zeros((2, 9)))


def test_stage_bad_inputs_name_the_argument(rng):
    x, dt, A, B, C = _good(rng)
    with pytest.raises(ValueError, match="`chunk_size`"):
        ssd_chunk_cumsum(dt, A, chunk_size=0)
    with pytest.raises(ValueError, match="`A`"):
        ssd_chunk_cumsum(dt, A[:2], chunk_size=4)
    with pytest.raises(ValueError, match="`dt_bias`"):
        ssd_chunk_cumsum(dt, A, chunk_size=4, dt_bias=np.ones(2))
    dt_out, dA = ssd_chunk_cumsum(dt, A, chunk_size=4)
    with pytest.raises(ValueError, match="`dt_out`"):
        ssd_chunk_state(x, B, dt_out[:, :, :2], dA[:, :, :2])
    with pytest.raises(ValueError, match="`dA_cumsum`"):
        ssd_chunk_state(x, B, dt_out, dA[..., :3])
    with pytest.raises(ValueError, match="`dt_out`"):
        ssd_chunk_state(x[:1], B[:1], dt_out, dA)
    with pytest.raises(ValueError, match="ngroups"):
        ssd_chunk_state(x, B[:, :, :0], dt_out, dA)
    with pytest.raises(ValueError, match="`seq_idx`"):
        ssd_chunk_state(x, B, dt_out, dA, seq_idx=np.array([[0] * 9, [1] * 4 + [0] * 5]))
    states = ssd_chunk_state(x, B, dt_out, dA)
    with pytest.raises(ValueError, match="`dA_cumsum`"):
        ssd_state_passing(states, dA[:, :, :2])
    with pytest.raises(ValueError, match="`initial_states`"):
        ssd_state_passing(states, dA, initial_states=np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match="`seq_idx`"):
        ssd_state_passing(states, dA, seq_idx=np.zeros((2, 20), dtype=int))
    entering, _ = ssd_state_passing(states, dA)
    with pytest.raises(ValueError, match="`chunk_states`"):
        ssd_chunk_scan(x, dt_out, dA, B, C, entering[:, :2])
    with pytest.raises(ValueError, match="`C`"):
        ssd_chunk_scan(x, dt_out, dA, B, C[..., :2], entering)
    with pytest.raises(ValueError, match="`D`"):
        ssd_chunk_scan(x, dt_out, dA, B, C, entering, D=np.ones((4, 2)))


def test_chunk_size_longer_than_the_sequence(rng):
    # scratch is sized by the longest real chunk, not by chunk_size
    args, kw = make_problem(rng, L=11, init=True, seq=True)
    y_ref, h_ref = loop_oracle(*args, **kw)
    y, h = ssd_chunk_scan_combined(*args, 10**9, **kw, return_final_states=True)
    assert_close(y, y_ref, np.float64, 10)
    assert_close(h, h_ref, np.float64, 10)
    y4, h4 = run_stages(*args, 10**5, **kw)
    assert_close(y4, y_ref, np.float64, 10)
    assert_close(h4, h_ref, np.float64, 10)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_exp_over_the_whole_range(dtype):
    # single head, one position per chunk row pair: the decay between two
    # positions is exp(dt * A) for dt*A across the dtype's exponent range
    # (growth included), checked against NumPy's exp
    vals = np.linspace(-85.0, 85.0, 341)
    x = np.ones((1, 2, len(vals), 1), dtype=dtype)
    dt = np.ones((1, 2, len(vals)), dtype=dtype)
    B = np.ones((1, 2, 1, 1), dtype=dtype)
    A = vals.astype(dtype)
    y = ssd_chunk_scan_combined(x, dt, A, B, B, 2, dt_limit=(-np.inf, np.inf))
    # y_1 = exp(A) * y_0 + 1 with y_0 = 1
    expect = np.exp(A.astype(np.float64)) + 1.0
    np.testing.assert_allclose(y[0, 1, :, 0], expect, rtol=5 * np.finfo(dtype).eps)


def test_kernel_builds_set_the_padding_and_refuse_unknown_names(ssd_build):
    """The kept states' padded head dimension is the running build's vector
    width (16 floats or 8 doubles in the AVX-512 build, 8 or 4 in the other,
    1 in a scalar-kernels build); unknown or unrunnable builds are
    refused."""
    from zilla_muf import _build_config, _ssd, _ssd_backward

    assert _ssd.kernel_build() == ssd_build
    if ssd_build == "avx512":
        single, double = 16, 8
    elif _build_config.scalar_kernels:
        single, double = 1, 1
    else:
        single, double = 8, 4
    assert _ssd_backward.padded(50, True) == -(-50 // single) * single
    assert _ssd_backward.padded(50, False) == -(-50 // double) * double
    with pytest.raises(ValueError, match="name must be one of"):
        _ssd.set_kernel_build("sse9")
    best = _ssd.set_kernel_build(None)
    try:
        if best == "avx2":
            with pytest.raises(ValueError, match="cannot run"):
                _ssd.set_kernel_build("avx512")
    finally:
        _ssd.set_kernel_build(ssd_build)
    assert _ssd.kernel_build() == ssd_build
