"""Gradients of zilla_muf.linear_attention through vjp.

Oracle: central finite differences of the float64 forward, entry by entry,
for every differentiable argument, with cotangents for the output and the
final state.
"""

import numpy as np
import pytest

import zilla_muf
from zilla_muf.linear_attention import gated_delta_rule, linear_attention
from zilla_muf import vjp


def fd_grads(fun, args, kwargs, names, co, cS, eps=1e-6):
    """d/dx of sum(co*o) + sum(cS*S) by central differences."""
    pos_names = ["q", "k", "v", "g", "beta"][:len(args)]
    out = {}
    for name in names:
        base = dict(zip(pos_names, args))
        base.update({n: kwargs[n] for n in kwargs if n == name})
        x = base[name]
        gr = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            vals = []
            for sgn in (1, -1):
                xp = x.copy()
                xp[idx] += sgn * eps
                a = dict(base)
                a[name] = xp
                pos = [a[n] for n in pos_names]
                kw = {n: a[n] for n in a if n not in pos_names}
                o, S = fun(*pos, **{**kwargs, **kw}, output_final_state=True)
                vals.append(np.sum(co * o) + np.sum(cS * S))
            gr[idx] = (vals[0] - vals[1]) / (2 * eps)
        out[name] = gr
    return out


def setup(rng, T, gate, delta, nseq=None):
    B, H, K, V = 1, 2, 3, 2
    q = rng.standard_normal((B, T, H, K))
    k = rng.standard_normal((B, T, H, K))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((B, T, H, V))
    if gate == "scalar":
        g = -rng.uniform(0.05, 0.6, (B, T, H))
    elif gate == "channel":
        g = -rng.uniform(0.05, 0.6, (B, T, H, K))
    else:
        g = None
    beta = rng.uniform(0.2, 0.8, (B, T, H))
    h0 = rng.standard_normal(((nseq or B), H, K, V))
    return q, k, v, g, beta, h0


@pytest.mark.parametrize("gate", ["none", "scalar", "channel"])
@pytest.mark.parametrize("with_final", [True, False])
def test_linear_attention_vjp_fd(rng, gate, with_final):
    q, k, v, g, _, h0 = setup(rng, 7, gate, False)
    kw = dict(initial_state=h0, chunk_size=3, scale=0.8)
    out, pullback = vjp(linear_attention, q, k, v, g, output_final_state=with_final, **kw)
    o = out[0] if with_final else out
    co = rng.standard_normal(o.shape)
    cS = rng.standard_normal(h0.shape) if with_final else np.zeros(h0.shape)
    grads = pullback((co, cS) if with_final else co)
    names = ["q", "k", "v", "initial_state"] + ([] if g is None else ["g"])
    assert sorted(grads) == sorted(names)
    args = (q, k, v, g)
    ref = fd_grads(linear_attention, args, kw, names, co, cS)
    for n in names:
        assert grads[n].shape == ref[n].shape
        np.testing.assert_allclose(grads[n], ref[n], rtol=1e-6, atol=1e-7, err_msg=n)


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("l2norm", [False, True])
def test_gated_delta_rule_vjp_fd(rng, gated, l2norm):
    q, k, v, g, beta, h0 = setup(rng, 7, "scalar" if gated else "none", True)
    kw = dict(initial_state=h0, chunk_size=3, use_qk_l2norm=l2norm)
    (o, S), pullback = vjp(gated_delta_rule, q, k, v, g, beta,
                           output_final_state=True, **kw)
    co = rng.standard_normal(o.shape)
    cS = rng.standard_normal(S.shape)
    grads = pullback((co, cS))
    names = ["q", "k", "v", "beta", "initial_state"] + (["g"] if gated else [])
    assert sorted(grads) == sorted(names)
    ref = fd_grads(gated_delta_rule, (q, k, v, g, beta), kw, names, co, cS)
    for n in names:
        np.testing.assert_allclose(grads[n], ref[n], rtol=1e-6, atol=1e-7, err_msg=n)


@pytest.mark.parametrize("delta", [False, True])
def test_vjp_packed_sequences(rng, delta):
    cu = np.array([0, 3, 3, 8])
    q, k, v, g, beta, h0 = setup(rng, 8, "scalar", delta, nseq=3)
    fun = gated_delta_rule if delta else linear_attention
    args = (q, k, v, g, beta) if delta else (q, k, v, g)
    kw = dict(initial_state=h0, chunk_size=2, cu_seqlens=cu)
    (o, S), pullback = vjp(fun, *args, output_final_state=True, **kw)
    co = rng.standard_normal(o.shape)
    cS = rng.standard_normal(S.shape)
    grads = pullback((co, cS))
    names = ["q", "k", "v", "g", "initial_state"] + (["beta"] if delta else [])
    ref = fd_grads(fun, args, kw, names, co, cS)
    for n in names:
        np.testing.assert_allclose(grads[n], ref[n], rtol=1e-6, atol=1e-7, err_msg=n)
    # the empty sequence passes its state through
    np.testing.assert_allclose(grads["initial_state"][1], cS[1])


def test_vjp_float32_and_module_call(rng):
    q, k, v, g, _, h0 = setup(rng, 9, "scalar", False)
    o64, pb64 = vjp(linear_attention, q, k, v, g, chunk_size=4)
    co = rng.standard_normal(o64.shape)
    ref = pb64(co)
    f32 = [x.astype(np.float32) for x in (q, k, v, g)]
    o32, pb32 = vjp(linear_attention, *f32, chunk_size=4)
    assert o32.dtype == np.float32
    got = pb32(co.astype(np.float32))
    for n in ref:
        assert got[n].dtype == np.float32
        np.testing.assert_allclose(got[n], ref[n], rtol=1e-4, atol=1e-4 * np.abs(ref[n]).max())
    # the callable module differentiates as the function
    o_m, pb_m = vjp(zilla_muf.linear_attention, q, k, v, g, chunk_size=4)
    np.testing.assert_array_equal(o_m, o64)
    for n, x in pb_m(co).items():
        np.testing.assert_array_equal(x, ref[n])


def test_vjp_cotangent_checked(rng):
    q, k, v, g, beta, h0 = setup(rng, 5, "scalar", True)
    out, pullback = vjp(gated_delta_rule, q, k, v, g, beta, output_final_state=True)
    with pytest.raises(ValueError, match="cotangent"):
        pullback(np.zeros(out[0].shape))
    # None means zeros: the state's cotangent alone
    grads = pullback((None, np.ones(out[1].shape)))
    assert np.all(np.isfinite(grads["q"]))
    np.testing.assert_array_equal(grads["q"][:, -1], 0.0)
