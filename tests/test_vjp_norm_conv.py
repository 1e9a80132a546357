"""Gradients of rms_norm and causal_conv1d.

Oracles: central finite differences of the float64 forward, and torch
autograd through torch formulas written here (independent of the code
under test).
"""

import numpy as np
import pytest

from zilla_muf import causal_conv1d, rms_norm
from zilla_muf import vjp

from _gradcheck import assert_grads_close, fd_grads, random_cotangent

torch = pytest.importorskip("torch")


# ---------------------------------------------------------------- rms_norm

def _torch_rms_norm(x, w, z, group, eps, before):
    silu = torch.nn.functional.silu
    v = x if (z is None or before) else x * silu(z)
    c = v.shape[-1]
    vg = v.reshape(*v.shape[:-1], c // group, group)
    n = vg * torch.rsqrt((vg * vg).mean(-1, keepdim=True) + eps)
    y = n.reshape(v.shape) * w
    if z is not None and before:
        y = y * silu(z)
    return y


@pytest.mark.parametrize("gated", [None, True, False])
@pytest.mark.parametrize("group", [None, 2])
def test_rms_norm_fd(gated, group):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4))
    kw = dict(x=x, weight=rng.standard_normal(4), eps=1e-3, group_size=group)
    names = ["x", "weight"]
    if gated is not None:
        kw.update(z=rng.standard_normal((3, 4)), norm_before_gate=gated)
        names.append("z")
    out, pull = vjp(rms_norm, **kw)
    ct = random_cotangent(rng, out)
    got = pull(ct)
    assert sorted(got) == sorted(names)
    assert_grads_close(got, fd_grads(rms_norm, kw, ct, names), 1e-6)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
@pytest.mark.parametrize("before", [True, False])
def test_rms_norm_torch(dtype, rtol, before):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 12)).astype(dtype)
    w = rng.standard_normal(12).astype(dtype)
    # z broadcast over the middle axis: its gradient is summed back
    z = rng.standard_normal((2, 1, 12)).astype(dtype)
    out, pull = vjp(rms_norm, x, w, z=z, group_size=4, eps=1e-5,
                    norm_before_gate=before)
    ct = random_cotangent(rng, out)
    got = pull(ct)
    assert got["z"].shape == z.shape and got["z"].dtype == dtype
    tx, tw, tz = (torch.tensor(a, dtype=torch.float64, requires_grad=True)
                  for a in (x, w, z))
    ty = _torch_rms_norm(tx, tw, tz, 4, 1e-5, before)
    ty.backward(torch.tensor(ct, dtype=torch.float64))
    want = {"x": tx.grad.numpy(), "weight": tw.grad.numpy(), "z": tz.grad.numpy()}
    assert_grads_close(got, want, rtol)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
@pytest.mark.parametrize("before", [True, False])
def test_rms_norm_strided_rows_and_z_into_a_slice(dtype, rtol, before):
    # x, z and the cotangent as column slices of wider arrays (read in
    # place); z's gradient written into a column slice of a wider array
    from zilla_muf.stable_ops import _rms_norm_backward

    rng = np.random.default_rng(5)
    wide = rng.standard_normal((2, 6, 50)).astype(dtype)
    x, z, ct = wide[..., :12], wide[..., 15:27], wide[:, ::-1, 30:42]
    w = rng.standard_normal(12).astype(dtype)
    args = dict(x=x, weight=w, z=z, eps=1e-5, group_size=6,
                norm_before_gate=before, workers=2)
    tx, tw, tz = (torch.tensor(a, dtype=torch.float64, requires_grad=True)
                  for a in (x, w, z))
    _torch_rms_norm(tx, tw, tz, 6, 1e-5, before).backward(
        torch.tensor(ct.copy(), dtype=torch.float64))
    want = {"x": tx.grad.numpy(), "weight": tw.grad.numpy(), "z": tz.grad.numpy()}
    _, pull = vjp(rms_norm, **args)
    assert_grads_close(pull(ct), want, rtol)
    target = np.full((2, 6, 20), 7.0, dtype)
    got = _rms_norm_backward(args, np.dtype(dtype), x.shape)(ct, z_out=target[..., 4:16])
    assert np.shares_memory(got["z"], target)
    assert_grads_close(got, want, rtol)
    np.testing.assert_allclose(target[..., 4:16], want["z"], rtol=rtol, atol=rtol)
    assert (target[..., :4] == 7).all() and (target[..., 16:] == 7).all()


def test_rms_norm_no_weight():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6))
    out, pull = vjp(rms_norm, x, eps=0.0)
    ct = rng.standard_normal(out.shape)
    got = pull(ct)
    assert list(got) == ["x"]
    assert_grads_close(got, fd_grads(lambda x: rms_norm(x, eps=0.0), {"x": x}, ct,
                                     ["x"]), 1e-6)


# ------------------------------------------------------------ causal_conv1d

def _torch_conv(x, w, b, init, silu):
    W = w.shape[1]
    xt = torch.cat([init, x], dim=-1)
    L = x.shape[-1]
    out = sum(w[None, :, k, None] * xt[:, :, k:k + L] for k in range(W))
    if b is not None:
        out = out + b[None, :, None]
    if silu:
        out = torch.nn.functional.silu(out)
    return out, xt[:, :, L:]


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("L", [1, 2, 7])
def test_conv_fd(activation, L):
    rng = np.random.default_rng(4)
    kw = dict(x=rng.standard_normal((2, 3, L)), weight=rng.standard_normal((3, 4)),
              bias=rng.standard_normal(3), initial_states=rng.standard_normal((2, 3, 3)),
              activation=activation, return_final_states=True)
    out, pull = vjp(causal_conv1d, **kw)
    ct = random_cotangent(rng, out)
    names = ["x", "weight", "bias", "initial_states"]
    got = pull(ct)
    assert_grads_close(got, fd_grads(causal_conv1d, kw, ct, names), 1e-6)
    # the final-state cotangent matters (it is not dropped)
    got0 = pull((ct[0], None))
    assert not np.allclose(got0["initial_states"] if L < 3 else got0["x"],
                           got["initial_states"] if L < 3 else got["x"])


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-11), (np.float32, 1e-4)])
@pytest.mark.parametrize("time_major", [False, True])
def test_conv_torch(dtype, rtol, time_major):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 9)).astype(dtype)
    if time_major:
        x = np.ascontiguousarray(x.transpose(0, 2, 1)).transpose(0, 2, 1)
    w = rng.standard_normal((6, 4)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    out, pull = vjp(causal_conv1d, x, w, b, activation="silu")
    ct = random_cotangent(rng, out)
    got = pull(ct)
    assert sorted(got) == ["bias", "weight", "x"]
    tx, tw, tb = (torch.tensor(np.array(a), dtype=torch.float64, requires_grad=True)
                  for a in (x, w, b))
    ty, _ = _torch_conv(tx, tw, tb, torch.zeros(2, 6, 3, dtype=torch.float64), True)
    ty.backward(torch.tensor(ct, dtype=torch.float64))
    want = {"x": tx.grad.numpy(), "weight": tw.grad.numpy(), "bias": tb.grad.numpy()}
    assert_grads_close(got, want, rtol)
    assert got["x"].dtype == dtype


def test_conv_width_one():
    rng = np.random.default_rng(6)
    kw = dict(x=rng.standard_normal((1, 2, 5)), weight=rng.standard_normal((2, 1)),
              return_final_states=True)
    out, pull = vjp(causal_conv1d, **kw)
    assert out[1].shape == (1, 2, 0)
    ct = (rng.standard_normal(out[0].shape), None)
    assert_grads_close(pull(ct), fd_grads(causal_conv1d, kw, ct, ["x", "weight"]), 1e-6)


# ------------------------------------- compiled pullbacks: edges and threads

@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-11), (np.float32, 1e-4)])
@pytest.mark.parametrize("width,L", [(1, 5), (2, 1), (4, 2), (4, 3), (4, 11), (5, 3)])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_conv_torch_initial_and_final(dtype, rtol, width, L, activation):
    rng = np.random.default_rng(7)
    B, D = 3, 5
    x = rng.standard_normal((B, D, L)).astype(dtype)
    w = rng.standard_normal((D, width)).astype(dtype)
    b = rng.standard_normal(D).astype(dtype)
    h0 = rng.standard_normal((B, D, width - 1)).astype(dtype)
    out, pull = vjp(causal_conv1d, x, w, b, initial_states=h0,
                    activation=activation, return_final_states=True, workers=2)
    ct = random_cotangent(rng, out)
    got = pull(ct)
    assert sorted(got) == ["bias", "initial_states", "weight", "x"]
    assert all(got[k].dtype == dtype for k in got)
    assert got["initial_states"].shape == h0.shape
    tx, tw, tb, th = (torch.tensor(a, dtype=torch.float64, requires_grad=True)
                      for a in (x, w, b, h0))
    ty, tf = _torch_conv(tx, tw, tb, th, activation == "silu")
    loss = (ty * torch.tensor(ct[0], dtype=torch.float64)).sum()
    if width > 1:
        loss = loss + (tf * torch.tensor(ct[1], dtype=torch.float64)).sum()
    loss.backward()
    want = {"x": tx.grad.numpy(), "weight": tw.grad.numpy(), "bias": tb.grad.numpy(),
            "initial_states": th.grad.numpy()}
    assert_grads_close(got, want, rtol)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-11), (np.float32, 1e-4)])
@pytest.mark.parametrize("width,L,D", [(4, 150, 37), (4, 2, 37), (1, 70, 37),
                                       (3, 64, 37), (4, 67, 70)])
@pytest.mark.parametrize("silu", [True, False])
def test_conv_time_major_backward_kernel(dtype, rtol, width, L, D, silu):
    # the time-major pullback of the Mamba-2 training layer: strided rows
    # (channels sliced out of a wider activation, the gradient written into
    # such a slice) against torch autograd of the convolution written here;
    # the same result on one thread and on two
    from zilla_muf import _vjp_kernels

    rng = np.random.default_rng(11)
    B = 2
    wide = rng.standard_normal((B, L, D + 9)).astype(dtype)
    x = wide[:, :, 4:4 + D]
    w = rng.standard_normal((D, width)).astype(dtype)
    g = rng.standard_normal((B, L, D)).astype(dtype)
    tx, tw = (torch.tensor(np.ascontiguousarray(a), dtype=torch.float64,
                           requires_grad=True) for a in (x.transpose(0, 2, 1), w))
    tb = torch.zeros(D, dtype=torch.float64, requires_grad=True)
    pre, _ = _torch_conv(tx, tw, tb, torch.zeros(B, D, width - 1, dtype=torch.float64),
                         False)
    out = torch.nn.functional.silu(pre) if silu else pre
    out.backward(torch.tensor(g.transpose(0, 2, 1), dtype=torch.float64))
    pre_tm = np.ascontiguousarray(pre.detach().numpy().transpose(0, 2, 1)).astype(dtype)
    results = []
    for threads in (1, 2):
        gwide = np.full((B, L, D + 5), np.nan, dtype)
        gx = gwide[:, :, 3:3 + D]
        gwt = np.empty((width, D), dtype)
        gb = np.empty(D, dtype)
        _vjp_kernels.causal_conv1d_backward_time_major(
            g, pre_tm, silu, x, np.ascontiguousarray(w.T), gx, gwt, gb, threads)
        assert np.isnan(gwide[:, :, :3]).all() and np.isnan(gwide[:, :, 3 + D:]).all()
        results.append((gx.copy(), gwt, gb))
        want = {"x": tx.grad.numpy().transpose(0, 2, 1), "weight": tw.grad.numpy(),
                "bias": tb.grad.numpy()}
        assert_grads_close({"x": gx, "weight": gwt.T, "bias": gb}, want, rtol)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="inconsistent"):
        _vjp_kernels.causal_conv1d_backward_time_major(
            g, pre_tm, silu, x[:, :, :-1], np.ascontiguousarray(w.T), gx, gwt, gb, 1)


def test_conv_threads_deterministic():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 37, 300)).astype(np.float32)
    w = rng.standard_normal((37, 4)).astype(np.float32)
    h0 = rng.standard_normal((2, 37, 3)).astype(np.float32)
    res = []
    for workers in (1, 2, 2):
        out, pull = vjp(causal_conv1d, x, w, initial_states=h0, activation="silu",
                        workers=workers)
        res.append(pull(np.ones_like(out)))
    for r in res[1:]:
        for k in res[0]:
            np.testing.assert_array_equal(r[k], res[0][k])
    # against a float64 loop written here
    xt = np.concatenate([h0, x], axis=-1).astype(np.float64)
    pre = sum(w[None, :, k, None].astype(np.float64) * xt[:, :, k:k + 300]
              for k in range(4))
    s = 1 / (1 + np.exp(-pre))
    g = s * (1 + pre * (1 - s))
    gw = np.stack([(g * xt[:, :, k:k + 300]).sum(axis=(0, 2)) for k in range(4)], 1)
    np.testing.assert_allclose(res[0]["weight"], gw, rtol=2e-4, atol=2e-3)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 3e-4)])
@pytest.mark.parametrize("gate", [None, True, False])
@pytest.mark.parametrize("group", [1, 3, 8, 24])
def test_rms_norm_torch_groups(dtype, rtol, gate, group):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 7, 24)).astype(dtype)
    w = rng.standard_normal(24).astype(dtype)
    kw = dict(group_size=group, eps=1e-5, workers=2)
    z = None
    if gate is not None:
        z = rng.standard_normal((3, 7, 24)).astype(dtype)
        kw.update(z=z, norm_before_gate=gate)
    out, pull = vjp(rms_norm, x, w, **kw)
    ct = random_cotangent(rng, out)
    got = pull(ct)
    assert all(got[k].dtype == dtype for k in ("x",) + (("z",) if z is not None else ()))
    tx, tw = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w))
    tz = None if z is None else torch.tensor(z, dtype=torch.float64, requires_grad=True)
    ty = _torch_rms_norm(tx, tw, tz, group, 1e-5, gate)
    ty.backward(torch.tensor(ct, dtype=torch.float64))
    want = {"x": tx.grad.numpy(), "weight": tw.grad.numpy()}
    if z is not None:
        want["z"] = tz.grad.numpy()
    assert_grads_close(got, want, rtol)


@pytest.mark.parametrize("gate", [None, False])
def test_rms_norm_no_weight_gated_fd(gate):
    rng = np.random.default_rng(10)
    kw = dict(x=rng.standard_normal((5, 6)), eps=1e-4, group_size=3)
    names = ["x"]
    if gate is not None:
        kw.update(z=rng.standard_normal((5, 6)), norm_before_gate=gate)
        names.append("z")
    out, pull = vjp(rms_norm, **kw)
    ct = random_cotangent(rng, out)
    got = pull(ct)
    assert sorted(got) == sorted(names)
    assert_grads_close(got, fd_grads(rms_norm, kw, ct, names), 1e-6)


def test_rms_norm_threads_deterministic():
    # more rows than one block of weight-gradient partials
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 333, 40)).astype(np.float32)
    z = rng.standard_normal((2, 333, 40)).astype(np.float32)
    w = rng.standard_normal(40).astype(np.float32)
    ct = rng.standard_normal(x.shape).astype(np.float32)
    res = []
    for workers in (1, 2, 2):
        _, pull = vjp(rms_norm, x, w, z=z, group_size=8, norm_before_gate=False,
                      workers=workers)
        res.append(pull(ct))
    for r in res[1:]:
        for k in res[0]:
            np.testing.assert_array_equal(r[k], res[0][k])
    tx, tw, tz = (torch.tensor(a, dtype=torch.float64, requires_grad=True)
                  for a in (x, w, z))
    _torch_rms_norm(tx, tw, tz, 8, 1e-6, False).backward(
        torch.tensor(ct, dtype=torch.float64))
    np.testing.assert_allclose(res[0]["weight"], tw.grad.numpy(), rtol=1e-3, atol=1e-3)
