"""zilla_muf.torch: the custom operators, their autograd, and the model patches.

Oracles: float64 recurrences written here in torch (forward, and through
torch.autograd for the gradients), torch.autograd.gradcheck (finite
differences of the operators themselves), torch.library.opcheck, and
transformers' own torch path for the patched models.
"""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
zt = pytest.importorskip("zilla_muf.torch")

F = torch.nn.functional
f64 = torch.float64


def test_import_zilla_muf_does_not_import_torch():
    code = ("import sys, zilla_muf; "
            "print(any(m == 'torch' or m.startswith('torch.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "False"


# --- oracles: the recurrences, written out in torch

def ssd_loop(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
             initial_states=None):
    b, L, h, p = x.shape
    g = B.shape[2]
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    rep = h // g
    Bh = B.repeat_interleave(rep, dim=2)
    Ch = C.repeat_interleave(rep, dim=2)
    state = (torch.zeros(b, h, p, B.shape[-1], dtype=x.dtype)
             if initial_states is None else initial_states)
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        state = decay * state + (dt[:, t, :, None, None] * x[:, t, :, :, None]
                                 * Bh[:, t, :, None, :])
        ys.append((state * Ch[:, t, :, None, :]).sum(-1))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z)
    return y, state


def selective_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                   delta_softplus=False):
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, L = u.shape
    state = torch.zeros(b, d, A.shape[-1], dtype=u.dtype)
    ys = []
    for t in range(L):
        state = (torch.exp(delta[:, :, t, None] * A) * state
                 + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None])
        ys.append((state * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y, state


def conv_ref(x, weight, bias=None, activation=None):
    width = weight.shape[1]
    y = F.conv1d(x, weight[:, None, :], bias, padding=width - 1,
                 groups=x.shape[1])[..., :x.shape[-1]]
    return F.silu(y) if activation == "silu" else y


def rms_ref(x, weight, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
    if z is not None and not norm_before_gate:
        x = x * F.silu(z)
    gs = group_size or x.shape[-1]
    xg = x.reshape(*x.shape[:-1], x.shape[-1] // gs, gs)
    xg = xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + eps)
    y = xg.reshape(x.shape) * weight
    if z is not None and norm_before_gate:
        y = y * F.silu(z)
    return y


def _ssd_inputs(gen, b=2, L=24, h=4, p=3, g=2, n=5, dtype=f64):
    x = torch.randn(b, L, h, p, generator=gen, dtype=dtype)
    dt = torch.rand(b, L, h, generator=gen, dtype=dtype) * 0.5 - 1.0
    A = -torch.rand(h, generator=gen, dtype=dtype) * 2 - 0.5
    B = torch.randn(b, L, g, n, generator=gen, dtype=dtype)
    C = torch.randn(b, L, g, n, generator=gen, dtype=dtype)
    return x, dt, A, B, C


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


# --- forward against the oracles

def test_mamba_chunk_scan_combined_forward(gen):
    x, dt, A, B, C = _ssd_inputs(gen)
    D = torch.randn(4, generator=gen, dtype=f64)
    z = torch.randn_like(x)
    dt_bias = torch.randn(4, generator=gen, dtype=f64) * 0.1
    h0 = torch.randn(2, 4, 3, 5, generator=gen, dtype=f64)
    y, final = zt.mamba_chunk_scan_combined(x, dt, A, B, C, 8, D=D, z=z,
                                            dt_bias=dt_bias, initial_states=h0,
                                            dt_softplus=True,
                                            return_final_states=True)
    y_ref, final_ref = ssd_loop(x, dt, A, B, C, D, z, dt_bias, True, h0)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-10)


def test_selective_scan_fn_forward(gen):
    b, d, n, L = 2, 6, 4, 17
    u = torch.randn(b, d, L, generator=gen, dtype=f64)
    delta = torch.randn(b, d, L, generator=gen, dtype=f64)
    A = -torch.rand(d, n, generator=gen, dtype=f64) - 0.1
    B = torch.randn(b, n, L, generator=gen, dtype=f64)
    C = torch.randn(b, n, L, generator=gen, dtype=f64)
    D = torch.randn(d, generator=gen, dtype=f64)
    z = torch.randn(b, d, L, generator=gen, dtype=f64)
    bias = torch.randn(d, generator=gen, dtype=f64)
    y, last = zt.selective_scan_fn(u, delta, A, B, C, D, z, bias, True,
                                   return_last_state=True)
    y_ref, last_ref = selective_loop(u, delta, A, B, C, D, z, bias, True)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)


def test_causal_conv1d_fn_and_rmsnorm_forward(gen):
    x = torch.randn(2, 5, 11, generator=gen, dtype=f64)
    w = torch.randn(5, 4, generator=gen, dtype=f64)
    bias = torch.randn(5, generator=gen, dtype=f64)
    torch.testing.assert_close(zt.causal_conv1d_fn(x, w, bias, activation="silu"),
                               conv_ref(x, w, bias, "silu"))
    xs = torch.randn(3, 8, generator=gen, dtype=f64)
    wt = torch.randn(8, generator=gen, dtype=f64)
    zz = torch.randn(3, 8, generator=gen, dtype=f64)
    bb = torch.randn(8, generator=gen, dtype=f64)
    for nbg in (True, False):
        got = zt.rmsnorm_fn(xs, wt, bb, z=zz, eps=1e-5, group_size=4,
                            norm_before_gate=nbg)
        torch.testing.assert_close(got, rms_ref(xs, wt, zz, 1e-5, 4, nbg) + bb)


def test_linear_scan_forward(gen):
    a = torch.rand(3, 9, generator=gen, dtype=f64)
    b = torch.randn(3, 9, generator=gen, dtype=f64)
    h = zt.linear_scan(a, b)
    ref = torch.zeros(3, dtype=f64)
    for t in range(9):
        ref = a[:, t] * ref + b[:, t]
        torch.testing.assert_close(h[:, t], ref)


def test_half_precision_is_computed_in_float32_and_returned_as_given(gen):
    x = torch.randn(2, 4, 9, generator=gen).to(torch.bfloat16)
    w = torch.randn(4, 3, generator=gen).to(torch.bfloat16)
    y = zt.causal_conv1d_fn(x, w, activation="silu")
    assert y.dtype == torch.bfloat16
    ref = conv_ref(x.float(), w.float(), None, "silu")
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=1e-2)


def test_rejects_other_devices_and_non_tensors(gen):
    x = torch.randn(2, 4, 9, generator=gen)
    w = torch.randn(4, 3, generator=gen)
    with pytest.raises(ValueError, match="`weight`"):
        zt.causal_conv1d_fn(x, w.to("meta"))
    with pytest.raises(TypeError, match="`x`"):
        zt.causal_conv1d_fn(x.numpy(), w)


# --- gradients: gradcheck (finite differences) and the torch oracles

def _gradcheck(fn, inputs):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_mamba_chunk_scan_combined(gen):
    x, dt, A, B, C = _ssd_inputs(gen, b=1, L=10, h=2, p=2, g=1, n=3)
    D = torch.randn(2, generator=gen, dtype=f64)
    z = torch.randn_like(x)
    dt_bias = torch.randn(2, generator=gen, dtype=f64) * 0.1
    h0 = torch.randn(1, 2, 2, 3, generator=gen, dtype=f64)

    def fn(x, dt, A, B, C, D, z, dt_bias, h0):
        y, s = zt.mamba_chunk_scan_combined(x, dt, A, B, C, 4, D=D, z=z,
                                            dt_bias=dt_bias, initial_states=h0,
                                            dt_softplus=True,
                                            return_final_states=True)
        return y, s

    _gradcheck(fn, [x, dt, A, B, C, D, z, dt_bias, h0])


def test_ssd_gradients_equal_autograd_of_the_loop(gen):
    x, dt, A, B, C = _ssd_inputs(gen)
    leaves = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C)]
    y = zt.mamba_chunk_scan_combined(*leaves, 8, dt_softplus=True)
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum(), leaves)
    leaves2 = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C)]
    y2, _ = ssd_loop(*leaves2, dt_softplus=True)
    grads2 = torch.autograd.grad((y2 * w).sum(), leaves2)
    for g1, g2 in zip(grads, grads2):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-9)


def test_gradcheck_ssd_without_gate(gen):
    # without z the backward operator works from the saved inputs alone
    x, dt, A, B, C = _ssd_inputs(gen, b=1, L=10, h=2, p=2, g=1, n=3)
    D = torch.randn(2, 2, generator=gen, dtype=f64)
    dt_bias = torch.randn(2, generator=gen, dtype=f64) * 0.1
    h0 = torch.randn(1, 2, 2, 3, generator=gen, dtype=f64)

    def fn(x, dt, A, B, C, D, dt_bias, h0):
        return zt.mamba_chunk_scan_combined(x, dt, A, B, C, 4, D=D, dt_bias=dt_bias,
                                            initial_states=h0, dt_softplus=True,
                                            dt_limit=(0.0, 2.0),
                                            return_final_states=True)

    _gradcheck(fn, [x, dt, A, B, C, D, dt_bias, h0])


def test_ssd_backward_does_not_run_the_forward_again(gen, monkeypatch):
    import zilla_muf.ssd as ssd_module

    calls = []
    real = ssd_module._ssd

    class Counting:
        def __getattr__(self, name):
            if name == "combined":
                calls.append(name)
            return getattr(real, name)

    monkeypatch.setattr(ssd_module, "_ssd", Counting())
    x, dt, A, B, C = _ssd_inputs(gen, dtype=torch.float32)
    x.requires_grad_(True)
    y = zt.mamba_chunk_scan_combined(x, dt, A, B, C, 8, dt_softplus=True)
    assert calls == ["combined"]
    y.sum().backward()
    assert calls == ["combined"]                 # no second forward
    # float32 gradients against the float64 loop's
    leaves = [t.double().requires_grad_(True) for t in (x.detach(), dt, A, B, C)]
    y_ref, _ = ssd_loop(*leaves, dt_softplus=True)
    y_ref.sum().backward()
    torch.testing.assert_close(x.grad, leaves[0].grad.float(), rtol=1e-4, atol=1e-4)


def test_gradcheck_selective_scan_fn(gen):
    b, d, n, L = 1, 3, 2, 7
    u = torch.randn(b, d, L, generator=gen, dtype=f64)
    delta = torch.randn(b, d, L, generator=gen, dtype=f64)
    A = -torch.rand(d, n, generator=gen, dtype=f64) - 0.1
    B = torch.randn(b, n, L, generator=gen, dtype=f64)
    C = torch.randn(b, n, L, generator=gen, dtype=f64)
    D = torch.randn(d, generator=gen, dtype=f64)
    z = torch.randn(b, d, L, generator=gen, dtype=f64)
    bias = torch.randn(d, generator=gen, dtype=f64)

    def fn(u, delta, A, B, C, D, z, bias):
        return zt.selective_scan_fn(u, delta, A, B, C, D, z, bias, True)

    _gradcheck(fn, [u, delta, A, B, C, D, z, bias])


def split_scan_ref(zxbcdt, w, wb, dt_bias, A, D, headdim, ngroups, h0=None,
                   rmsw=None, eps=1e-6, nbg=True, W=None, Wb=None):
    """mamba_ssm's split/conv/scan/norm/projection layer from the listings above."""
    nheads = D.shape[0]
    dim = nheads * headdim
    dstate = (w.shape[0] - dim) // ngroups // 2
    rest = zxbcdt.shape[-1] - 2 * dim - 2 * ngroups * dstate - nheads
    zx0, z, xBC, dt = torch.split(
        zxbcdt, [rest, dim, dim + 2 * ngroups * dstate, nheads], dim=-1)
    xBC = conv_ref(xBC.transpose(1, 2), w, wb, "silu").transpose(1, 2)
    x, B, C = torch.split(xBC, [dim, ngroups * dstate, ngroups * dstate], dim=-1)
    b, L = zxbcdt.shape[:2]
    y, last = ssd_loop(x.reshape(b, L, nheads, headdim), dt, A,
                       B.reshape(b, L, ngroups, dstate),
                       C.reshape(b, L, ngroups, dstate), D=D,
                       z=None if rmsw is not None else z.reshape(b, L, nheads, headdim),
                       dt_bias=dt_bias, dt_softplus=True, initial_states=h0)
    y = y.reshape(b, L, dim)
    if rmsw is not None:
        y = rms_ref(y, rmsw, z=z, eps=eps, group_size=dim // ngroups,
                    norm_before_gate=nbg)
    if rest:
        z0, x0 = zx0.chunk(2, dim=-1)
        y = torch.cat([F.silu(z0) * x0, y], dim=-1)
    if W is not None:
        y = F.linear(y, W, Wb)
    return y, last


@pytest.mark.parametrize("norm, nbg, d_mlp, proj", [
    (True, False, 0, True), (True, True, 3, True), (False, True, 0, False),
    (False, True, 2, True)])
def test_split_conv1d_scan_combined_against_the_listings(gen, norm, nbg, d_mlp, proj):
    # the layer after its input projection, forward and every gradient,
    # against the same layer written from the recurrence's loop, the
    # convolution and the norm in torch (float64, ngroups 2, D per head
    # with headdim given, initial and final states, 1-3 chunks)
    b, L, nheads, headdim, ngroups, dstate, width = 2, 11, 4, 3, 2, 5, 4
    dim = nheads * headdim
    conv_dim = dim + 2 * ngroups * dstate
    r = lambda *shape: torch.randn(*shape, generator=gen, dtype=f64)  # noqa: E731
    zxbcdt = r(b, L, 2 * d_mlp + dim + conv_dim + nheads)
    zxbcdt[..., -nheads:] = zxbcdt[..., -nheads:] * 0.5 - 1.0
    args = dict(w=r(conv_dim, width) * 0.5, wb=r(conv_dim), dt_bias=r(nheads) * 0.1,
                A=-torch.rand(nheads, generator=gen, dtype=f64) - 0.5, D=r(nheads),
                h0=r(b, nheads, headdim, dstate),
                rmsw=r(dim) if norm else None,
                W=r(7, dim + d_mlp) if proj else None, Wb=r(7) if proj else None)
    names = [k for k, v in args.items() if v is not None]
    leaves = {k: args[k].clone().requires_grad_(True) for k in names}
    x0 = zxbcdt.clone().requires_grad_(True)
    y, last = zt.mamba_split_conv1d_scan_combined(
        x0, leaves["w"], leaves["wb"], leaves["dt_bias"], leaves["A"], leaves["D"], 4,
        initial_states=leaves["h0"], return_final_states=True,
        rmsnorm_weight=leaves.get("rmsw"), rmsnorm_eps=1e-5,
        outproj_weight=leaves.get("W"), outproj_bias=leaves.get("Wb"),
        headdim=headdim, ngroups=ngroups, norm_before_gate=nbg)
    leaves2 = {k: args[k].clone().requires_grad_(True) for k in names}
    x2 = zxbcdt.clone().requires_grad_(True)
    y2, last2 = split_scan_ref(x2, leaves2["w"], leaves2["wb"], leaves2["dt_bias"],
                               leaves2["A"], leaves2["D"], headdim, ngroups,
                               h0=leaves2["h0"], rmsw=leaves2.get("rmsw"), eps=1e-5,
                               nbg=nbg, W=leaves2.get("W"), Wb=leaves2.get("Wb"))
    torch.testing.assert_close(y, y2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last2, rtol=1e-10, atol=1e-10)
    wy, wl = r(*y.shape), r(*last.shape)
    g = torch.autograd.grad((y * wy).sum() + (last * wl).sum(),
                            [x0] + [leaves[k] for k in names])
    g2 = torch.autograd.grad((y2 * wy).sum() + (last2 * wl).sum(),
                             [x2] + [leaves2[k] for k in names])
    for name, a, e in zip(["zxbcdt"] + names, g, g2):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_gradcheck_split_conv1d_scan_combined(gen):
    # finite differences through the whole layer (norm after the gate, the
    # MLP part, the projection; ngroups 2)
    nheads, headdim, ngroups, dstate, d_mlp = 2, 2, 2, 2, 1
    dim = nheads * headdim
    conv_dim = dim + 2 * ngroups * dstate
    r = lambda *shape: torch.randn(*shape, generator=gen, dtype=f64)  # noqa: E731
    zxbcdt = r(1, 5, 2 * d_mlp + dim + conv_dim + nheads)
    inputs = [zxbcdt, r(conv_dim, 3) * 0.5, r(conv_dim), r(nheads) * 0.1,
              -torch.rand(nheads, generator=gen, dtype=f64) - 0.5, r(nheads, headdim),
              r(dim) + 2.0, r(3, dim + d_mlp), r(3)]

    def fn(zxbcdt, w, wb, dtb, A, D, rmsw, W, Wb):
        return zt.mamba_split_conv1d_scan_combined(
            zxbcdt, w, wb, dtb, A, D, 2, rmsnorm_weight=rmsw, outproj_weight=W,
            outproj_bias=Wb, ngroups=ngroups, norm_before_gate=False)

    _gradcheck(fn, inputs)


@pytest.fixture
def layer_calls(monkeypatch):
    """The calls of the one-operator layer (zilla_muf.ssd._SplitLayer):
    ``("forward", keep)`` and ``"backward"``."""
    import zilla_muf.ssd as ssd_module

    calls = []
    cls = ssd_module._SplitLayer
    fwd, bwd = cls.forward, cls.backward

    def forward(self, keep):
        calls.append(("forward", keep))
        return fwd(self, keep)

    def backward(self, saved, gout):
        calls.append("backward")
        return bwd(self, saved, gout)

    monkeypatch.setattr(cls, "forward", forward)
    monkeypatch.setattr(cls, "backward", backward)
    return calls


def _layer_inputs(gen, nheads=4, headdim=3, ngroups=2, dstate=5, width=4, b=2, L=11,
                  D2=False):
    dim = nheads * headdim
    conv_dim = dim + 2 * ngroups * dstate
    r = lambda *shape: torch.randn(*shape, generator=gen, dtype=f64)  # noqa: E731
    zxbcdt = r(b, L, dim + conv_dim + nheads)
    zxbcdt[..., -nheads:] = zxbcdt[..., -nheads:] * 0.5 - 1.0
    return dict(zxbcdt=zxbcdt, w=r(conv_dim, width) * 0.5, wb=r(conv_dim),
                dt_bias=r(nheads) * 0.1,
                A=-torch.rand(nheads, generator=gen, dtype=f64) - 0.5,
                D=r(nheads, headdim) if D2 else r(nheads), rmsw=r(dim) + 2.0)


@pytest.mark.parametrize("nbg, ngroups, D2, bias, width", [
    (False, 1, False, True, 4), (True, 2, True, False, 3), (False, 2, False, True, 1)])
def test_training_layer_operator_against_the_listings(gen, layer_calls, nbg, ngroups,
                                                      D2, bias, width):
    # the training step's case (no MLP part, no states, the gated norm) runs
    # as one operator: its output and every gradient against the listings
    # (the recurrence's loop, the convolution and the norm in torch)
    nheads, headdim = 4, 3
    a = _layer_inputs(gen, nheads, headdim, ngroups, width=width, D2=D2)
    if not bias:
        a["wb"] = None
    names = [k for k, v in a.items() if v is not None]
    ours = {k: a[k].clone().requires_grad_(True) for k in names}
    ref = {k: a[k].clone().requires_grad_(True) for k in names}
    Wp = torch.randn(7, nheads * headdim, generator=gen, dtype=f64)
    y = zt.mamba_split_conv1d_scan_combined(
        ours["zxbcdt"], ours["w"], ours.get("wb"), ours["dt_bias"], ours["A"],
        ours["D"], 4, rmsnorm_weight=ours["rmsw"], rmsnorm_eps=1e-5,
        outproj_weight=Wp, headdim=headdim, ngroups=ngroups, norm_before_gate=nbg)
    assert layer_calls == [("forward", True)]
    y2, _ = split_scan_ref(ref["zxbcdt"], ref["w"], ref.get("wb"), ref["dt_bias"],
                           ref["A"], ref["D"], headdim, ngroups, rmsw=ref["rmsw"],
                           eps=1e-5, nbg=nbg, W=Wp)
    torch.testing.assert_close(y, y2, rtol=1e-10, atol=1e-10)
    wy = torch.randn(*y.shape, generator=gen, dtype=f64)
    g = torch.autograd.grad((y * wy).sum(), [ours[k] for k in names], retain_graph=True)
    g2 = torch.autograd.grad((y2 * wy).sum(), [ref[k] for k in names])
    for name, u, e in zip(names, g, g2):
        torch.testing.assert_close(u, e, rtol=1e-9, atol=1e-9,
                                   msg=lambda m, n=name: f"{n}: {m}")
    assert layer_calls == [("forward", True), "backward"]
    # a second backward through the same graph reads the kept tensors unchanged
    g3 = torch.autograd.grad((y * wy).sum(), [ours[k] for k in names])
    for u, v in zip(g, g3):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_training_layer_operator_gradcheck_opcheck_and_compile(gen, layer_calls):
    a = _layer_inputs(gen, nheads=2, headdim=2, ngroups=2, dstate=2, width=3, b=1, L=6,
                      D2=True)
    order = ["zxbcdt", "w", "wb", "dt_bias", "A", "D", "rmsw"]

    def fn(zxbcdt, w, wb, dtb, A, D, rmsw):
        return zt.mamba_split_conv1d_scan_combined(
            zxbcdt, w, wb, dtb, A, D, 4, rmsnorm_weight=rmsw, ngroups=2,
            dt_limit=(0.05, 0.6), norm_before_gate=False)

    _gradcheck(fn, [a[k] for k in order])
    assert ("forward", True) in layer_calls and "backward" in layer_calls
    leaves = [a[k].clone().requires_grad_(True) for k in order]
    torch.library.opcheck(zt._ops.SPLIT_LAYER.forward,
                          (*leaves, 4, 2, 2, 1e-6, False, 0.05, 0.6))
    compiled = torch.compile(lambda *t: fn(*t).square().sum(), backend="aot_eager",
                             fullgraph=True)
    out = compiled(*leaves)
    out.backward()
    again = [a[k].clone().requires_grad_(True) for k in order]
    fn(*again).square().sum().backward()
    for u, v in zip(leaves, again):
        torch.testing.assert_close(u.grad, v.grad)


def test_training_layer_operator_without_gradients_keeps_nothing(gen, layer_calls):
    a = _layer_inputs(gen)
    args = (a["zxbcdt"].float(), a["w"].float(), a["wb"].float(), a["dt_bias"].float(),
            a["A"].float(), a["D"].float(), 4)
    with torch.no_grad():
        y = zt.mamba_split_conv1d_scan_combined(*args, rmsnorm_weight=a["rmsw"].float(),
                                                headdim=3, ngroups=2)
    assert layer_calls == [("forward", False)]
    assert y.dtype == torch.float32
    y2, _ = split_scan_ref(a["zxbcdt"], a["w"], a["wb"], a["dt_bias"], a["A"], a["D"],
                           3, 2, rmsw=a["rmsw"])
    torch.testing.assert_close(y, y2.float(), rtol=1e-4, atol=1e-4)
    # other cases compose the functions' operators
    layer_calls.clear()
    zt.mamba_split_conv1d_scan_combined(*args, headdim=3, ngroups=2)
    assert layer_calls == []


def test_split_conv1d_scan_combined_refusals(gen):
    zxbcdt = torch.randn(1, 5, 2 * 8 + 2 * 3 + 2, dtype=f64)
    w, A, dtb = torch.randn(8 + 6, 4, dtype=f64), -torch.ones(2, dtype=f64), torch.zeros(2, dtype=f64)
    f = zt.mamba_split_conv1d_scan_combined
    with pytest.raises(ValueError, match="`headdim`"):
        f(zxbcdt, w, None, dtb, A, torch.ones(2, dtype=f64), 4)
    with pytest.raises(ValueError, match="`zxbcdt`"):
        f(zxbcdt[..., 1:], w, None, dtb, A, torch.ones(2, dtype=f64), 4, headdim=4)
    with pytest.raises(ValueError, match="`conv1d_weight`"):
        f(zxbcdt, w[1:], None, dtb, A, torch.ones(2, dtype=f64), 4, headdim=4)
    with pytest.raises(ValueError, match="`ngroups`"):
        f(zxbcdt, w, None, dtb, A, torch.ones(2, 4, dtype=f64), 4, ngroups=3)
    with pytest.raises(ValueError, match="`activation`"):
        f(zxbcdt, w, None, dtb, A, torch.ones(2, 4, dtype=f64), 4, activation="relu")
    with pytest.raises(TypeError, match="`zxbcdt`"):
        f(zxbcdt.numpy(), w, None, dtb, A, torch.ones(2, 4, dtype=f64), 4)
    with pytest.raises(ValueError, match="`outproj_bias`"):
        f(zxbcdt, w, None, dtb, A, torch.ones(2, 4, dtype=f64), 4,
          outproj_bias=torch.zeros(3, dtype=f64))
    with pytest.raises(ValueError, match="`outproj_bias`"):
        f(zxbcdt, w, None, dtb, A, torch.ones(2, 4, dtype=f64), 4,
          rmsnorm_weight=torch.ones(8, dtype=f64), outproj_bias=torch.zeros(3, dtype=f64))
    with pytest.raises(ValueError, match="`A`"):
        f(zxbcdt, w, None, dtb, A[:1], torch.ones(2, 4, dtype=f64), 4)
    # the one-operator case checks the rest of its arguments
    norm = dict(rmsnorm_weight=torch.ones(8, dtype=f64))
    with pytest.raises(ValueError, match="`rmsnorm_weight`"):
        f(zxbcdt, w, None, dtb, A, torch.ones(2, 4, dtype=f64), 4,
          rmsnorm_weight=torch.ones(7, dtype=f64))
    with pytest.raises(ValueError, match="`conv1d_bias`"):
        f(zxbcdt, w, torch.zeros(3, dtype=f64), dtb, A, torch.ones(2, 4, dtype=f64), 4,
          **norm)
    with pytest.raises(ValueError, match="`dt_bias`"):
        f(zxbcdt, w, None, dtb[:1], A, torch.ones(2, 4, dtype=f64), 4, **norm)
    with pytest.raises(ValueError, match="must be a CPU tensor"):
        f(zxbcdt, w, None, dtb, A, torch.ones(2, 4, dtype=f64), 4,
          rmsnorm_weight=torch.ones(8, dtype=f64, device="meta"))


def test_gradcheck_conv_norm_and_scan(gen):
    x = torch.randn(1, 3, 6, generator=gen, dtype=f64)
    w = torch.randn(3, 4, generator=gen, dtype=f64)
    bias = torch.randn(3, generator=gen, dtype=f64)
    _gradcheck(lambda x, w, b: zt.causal_conv1d_fn(x, w, b, activation="silu"),
               [x, w, bias])
    xs = torch.randn(2, 6, generator=gen, dtype=f64)
    wt = torch.randn(6, generator=gen, dtype=f64)
    zz = torch.randn(2, 6, generator=gen, dtype=f64)
    _gradcheck(lambda x, w, z: zt.rmsnorm_fn(x, w, None, z=z, group_size=3,
                                             norm_before_gate=False),
               [xs, wt, zz])
    a = torch.rand(2, 5, generator=gen, dtype=f64)
    b = torch.randn(2, 5, generator=gen, dtype=f64)
    h0 = torch.randn(2, generator=gen, dtype=f64)
    _gradcheck(lambda a, b, h0: zt.linear_scan(a, b, h0, reverse=True), [a, b, h0])


def test_gradients_flow_to_leaves_that_require_them_only(gen):
    a = torch.rand(2, 5, generator=gen, dtype=f64, requires_grad=True)
    b = torch.randn(2, 5, generator=gen, dtype=f64)
    zt.linear_scan(a, b).sum().backward()
    assert a.grad is not None and b.grad is None
    assert torch.isfinite(a.grad).all()


def test_gradients_of_non_contiguous_inputs(gen):
    # transposed and split views, as transformers' layers pass them: made
    # contiguous in the graph, their gradients come back in their own layout
    xt = torch.randn(1, 6, 3, generator=gen, dtype=f64)
    w = torch.randn(3, 4, generator=gen, dtype=f64)
    _gradcheck(lambda xt, w: zt.causal_conv1d_fn(xt.transpose(1, 2), w,
                                                 activation="silu"), [xt, w])
    x, dt, A, B, C = _ssd_inputs(gen, b=1, L=10, h=2, p=2, g=1, n=3)
    xBC = torch.cat([x.reshape(1, 10, 4), B.reshape(1, 10, 3), C.reshape(1, 10, 3)],
                    dim=-1)

    def fn(xBC, dt, A):
        xs, Bs, Cs = torch.split(xBC, [4, 3, 3], dim=-1)
        return zt.mamba_chunk_scan_combined(xs.view(1, 10, 2, 2), dt, A,
                                            Bs.view(1, 10, 1, 3), Cs.view(1, 10, 1, 3),
                                            4, dt_softplus=True)

    _gradcheck(fn, [xBC, dt, A])


def test_calls_without_gradient_skip_the_dispatcher(gen, monkeypatch):
    # with no tensor needing a gradient, the operator's kernel runs directly;
    # a tensor that requires grad (or torch.compile) goes through the operator
    x = torch.randn(2, 8, generator=gen, dtype=f64)
    wt = torch.randn(8, generator=gen, dtype=f64, requires_grad=True)
    zz = torch.randn(2, 8, generator=gen, dtype=f64)
    op = zt._ops.OPS["rms_norm"]

    def refuse(*args):
        raise AssertionError("the dispatcher was used")

    monkeypatch.setattr(op, "forward", refuse)
    with torch.no_grad():
        got = zt.rmsnorm_fn(x, wt, None, z=zz, norm_before_gate=False)
    assert not got.requires_grad
    torch.testing.assert_close(got, rms_ref(x, wt.detach(), zz, 1e-6, None, False))
    with pytest.raises(AssertionError, match="dispatcher"):
        zt.rmsnorm_fn(x, wt, None, z=zz)


def test_fake_tensors_and_transforms_go_through_the_operator():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 4, 9)
        y = zt.causal_conv1d_fn(x, torch.empty(4, 3), activation="silu")
        assert y.shape == (2, 4, 9)          # the fake kernel's result
    a = torch.rand(5, dtype=f64)
    with pytest.raises(RuntimeError, match="zilla_muf::linear_scan"):
        torch.func.vmap(lambda b: zt.linear_scan(a, b))(torch.randn(3, 5, dtype=f64))


def test_direct_in_place_steps_bump_the_version_counter(gen):
    # autograd must see the direct (dispatcher-free) update of a state that
    # a recorded graph saved, exactly as with the operator
    b, h, p, n = 1, 2, 3, 4
    state = torch.randn(b, h, p, n, generator=gen)
    scale = torch.ones((), requires_grad=True)
    loss = (scale * state).sum()          # saves `state` for the backward
    version = state._version
    zt.selective_state_update(state, torch.randn(b, h, p, generator=gen),
                              torch.rand(b, h, p, generator=gen),
                              -torch.rand(h, p, n, generator=gen),
                              torch.randn(b, 1, n, generator=gen),
                              torch.randn(b, 1, n, generator=gen))
    assert state._version > version
    with pytest.raises(RuntimeError, match="inplace operation"):
        loss.backward()
    conv_state = torch.randn(1, 3, 3, generator=gen)
    version = conv_state._version
    zt.causal_conv1d_update(torch.randn(1, 3, generator=gen), conv_state,
                            torch.randn(3, 4, generator=gen))
    assert conv_state._version > version


def test_backward_leaves_the_blas_threads_as_it_found_them(gen):
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [d["num_threads"] for d in threadpoolctl.threadpool_info()
                if d["user_api"] == "blas"]

    before = blas_threads()
    x, dt, A, B, C = _ssd_inputs(gen, b=1, L=16, h=2, p=2, g=1, n=3)
    x.requires_grad_(True)
    zt.mamba_chunk_scan_combined(x, dt, A, B, C, 8).sum().backward()
    assert x.grad is not None
    assert blas_threads() == before


def test_small_calls_run_on_one_thread(gen, monkeypatch):
    seen = []
    real = zt._ops.OPS["rms_norm"].fun

    def spy(*args, **kw):
        seen.append(kw.get("workers"))
        return real(*args, **kw)

    monkeypatch.setattr(zt._ops.OPS["rms_norm"], "fun", spy)
    zt.rmsnorm_fn(torch.randn(1, 64, generator=gen), torch.ones(64), None)
    zt.rmsnorm_fn(torch.randn(256, 256, generator=gen), torch.ones(256), None)
    assert seen[0] is None                      # one thread: a decoding step
    assert seen[1] == max(1, torch.get_num_threads())


# --- torch.library contracts

def test_opcheck_every_operator(gen):
    x, dt, A, B, C = _ssd_inputs(gen, b=1, L=8, h=2, p=2, g=1, n=3)
    args = [t.requires_grad_(True) for t in (x, dt, A, B, C)]
    torch.library.opcheck(zt._ops.OPS["ssd_combined"].forward,
                          (*args, 4, None, None, None, None, None, None, True,
                           0.0, float("inf"), True, False))
    u = torch.randn(1, 3, 6, generator=gen, dtype=f64, requires_grad=True)
    w = torch.randn(3, 4, generator=gen, dtype=f64, requires_grad=True)
    torch.library.opcheck(zt._ops.OPS["causal_conv1d"].forward,
                          (u, w, None, None, None, False, "silu"))
    a = torch.rand(2, 5, generator=gen, dtype=f64, requires_grad=True)
    torch.library.opcheck(zt._ops.OPS["linear_scan"].forward,
                          (a, a.detach() * 2, None, -1, False))


def test_torch_compile_traces_without_graph_breaks(gen):
    x = torch.randn(1, 3, 6, generator=gen, dtype=f64, requires_grad=True)
    w = torch.randn(3, 4, generator=gen, dtype=f64)

    def f(x, w):
        return zt.causal_conv1d_fn(x, w, activation="silu").sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    out = compiled(x, w)
    out.backward()
    x2 = x.detach().clone().requires_grad_(True)
    f(x2, w).backward()
    torch.testing.assert_close(out, f(x2, w))
    torch.testing.assert_close(x.grad, x2.grad)


# --- in-place decode steps

def test_selective_state_update_updates_the_tensor_in_place(gen):
    b, h, p, n, g = 2, 4, 3, 5, 2
    state = torch.randn(b, h, p, n, generator=gen)
    before = state.clone()
    ptr = state.data_ptr()
    x = torch.randn(b, h, p, generator=gen)
    dt = torch.rand(b, h, generator=gen)
    A = -torch.rand(h, generator=gen)
    B = torch.randn(b, g, n, generator=gen)
    C = torch.randn(b, g, n, generator=gen)
    # the Mamba-2 layout of mamba_ssm: per-head values broadcast over (p, n)
    y = zt.selective_state_update(state, x, dt[..., None].expand(b, h, p),
                                  A[:, None, None].expand(h, p, n), B, C)
    assert state.data_ptr() == ptr
    rep = h // g
    decay = torch.exp(dt * A)[..., None, None]
    new = decay * before + (dt[..., None, None] * x[..., None]
                            * B.repeat_interleave(rep, 1)[:, :, None, :])
    torch.testing.assert_close(state, new)
    torch.testing.assert_close(y, (new * C.repeat_interleave(rep, 1)[:, :, None, :]).sum(-1))


def test_causal_conv1d_update_in_place(gen):
    b, d, w = 2, 3, 4
    conv_state = torch.randn(b, d, w - 1, generator=gen)
    weight = torch.randn(d, w, generator=gen)
    x = torch.randn(b, d, generator=gen)
    window = torch.cat([conv_state, x[..., None]], dim=-1)
    y = zt.causal_conv1d_update(x, conv_state, weight, activation="silu")
    torch.testing.assert_close(y, F.silu((window * weight).sum(-1)))
    torch.testing.assert_close(conv_state, window[..., 1:])


# --- transformers' models, patched and not

transformers = pytest.importorskip("transformers")


def _tiny_mamba2(seed=0):
    cfg = transformers.Mamba2Config(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_heads=4,
        head_dim=16, expand=2, state_size=8, n_groups=1, chunk_size=8,
        conv_kernel=4)
    torch.manual_seed(seed)
    return transformers.Mamba2ForCausalLM(cfg)


def _tiny_mamba(seed=0):
    cfg = transformers.MambaConfig(vocab_size=64, hidden_size=32,
                                   num_hidden_layers=2, state_size=8, expand=2,
                                   conv_kernel=4)
    torch.manual_seed(seed)
    return transformers.MambaForCausalLM(cfg)


def _train_steps(model, ids, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        out = model(ids, labels=ids)
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    return losses


@pytest.fixture
def unpatched_transformers():
    """Undo the process-wide patch after a test, so tests stay independent."""
    import transformers.models.mamba.modeling_mamba as m1
    import transformers.models.mamba2.modeling_mamba2 as m2

    saved = {(mod, k): v for mod in (m1, m2) for k, v in vars(mod).items()
             if callable(v) and not isinstance(v, type)}
    norm_forward = m2.MambaRMSNormGated.forward
    mixer_forward = m2.Mamba2Mixer.forward
    block_norm_forward = m2.Mamba2RMSNorm.forward
    mamba_mixer_forward = m1.MambaMixer.forward
    yield
    for (mod, k), v in saved.items():
        setattr(mod, k, v)
    m2.MambaRMSNormGated.forward = norm_forward
    m2.Mamba2Mixer.forward = mixer_forward
    m2.Mamba2RMSNorm.forward = block_norm_forward
    m1.MambaMixer.forward = mamba_mixer_forward


def _run_model(model, ids):
    """Logits, every gradient, a greedy generation, then three SGD steps."""
    with torch.no_grad():
        logits = model(ids).logits
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.eval()
    generated = model.generate(ids[:1, :9], max_new_tokens=10, do_sample=False)
    model.train()
    losses = _train_steps(model, ids)
    return logits, grads, generated, losses


@pytest.mark.parametrize("build,apply", [(_tiny_mamba2, "apply_to_mamba2"),
                                         (_tiny_mamba, "apply_to_mamba")])
def test_patched_models_match_transformers(build, apply, unpatched_transformers):
    ids = torch.randint(0, 64, (2, 21), generator=torch.Generator().manual_seed(5))
    ref, ours = build(), build()
    ours.load_state_dict(ref.state_dict())
    # transformers' own torch path first: the patch is process-wide
    logits_ref, grads_ref, gen_ref, losses_ref = _run_model(ref, ids)
    getattr(zt, apply)(ours)
    logits, grads, gen, losses = _run_model(ours, ids)
    torch.testing.assert_close(logits, logits_ref, rtol=2e-4, atol=2e-4)
    for name, g_ref in grads_ref.items():
        torch.testing.assert_close(grads[name], g_ref, rtol=2e-3, atol=2e-5,
                                   msg=lambda m, n=name: f"{n}: {m}")
    assert torch.equal(gen, gen_ref)
    np.testing.assert_allclose(losses, losses_ref, rtol=1e-4)


def _fused_steps_against_transformers(model, mod, mixer_cls, update_name, apply, ids,
                                     dtype):
    """Cached steps of `model` (a 7-token prompt, then one token at a time):
    transformers' own, then patched by `apply` through the mixer's own path
    (on zilla_muf's kernels) and through the fused step, which must take
    every decoding token (the module's one-token state update, `update_name`
    of `mod`, is removed meanwhile). The logits and both caches agree.
    Returns (steps, fused forward, fused steps, transformers' steps,
    tolerance of ours against the mixer's own path)."""
    nlayers = model.config.num_hidden_layers

    def steps():
        with torch.no_grad():
            out = model(ids[:, :7], use_cache=True)
            cache, logits = out.cache_params, [out.logits[:, -1]]
            for t in range(7, ids.shape[1]):
                out = model(ids[:, t:t + 1], cache_params=cache, use_cache=True)
                logits.append(out.logits[:, -1])
        return (torch.stack(logits), [cache.get_conv_state(i) for i in range(nlayers)],
                [cache.get_recurrent_state(i) for i in range(nlayers)])

    transformers_steps = steps()
    apply(model)
    fused = mixer_cls.forward
    mixer_cls.forward = fused.__wrapped_original__
    pieces = steps()  # the mixer's own path on zilla_muf's kernels
    calls = []
    mixer_cls.forward = lambda *a, **k: calls.append(1) or fused(*a, **k)
    state_update = getattr(mod, update_name)
    setattr(mod, update_name, None)  # a decoding step must not reach it
    ours = steps()
    setattr(mod, update_name, state_update)
    mixer_cls.forward = fused
    assert len(calls) == (ids.shape[1] - 6) * nlayers
    # transformers computes in float32 some of what a float64 model gives
    # it (the Mamba-2 gated norm and cached state)
    loose = {"rtol": 2e-4, "atol": 2e-5} if dtype == torch.float32 else {
        "rtol": 1e-5, "atol": 1e-6}
    tight = {"rtol": 2e-5, "atol": 2e-6} if dtype == torch.float32 else {}
    for ref, tol in ((transformers_steps, loose), (pieces, tight)):
        torch.testing.assert_close(ours[0], ref[0], **tol)
        for a, b in zip(ours[1] + ours[2], ref[1] + ref[2]):
            torch.testing.assert_close(a, b.to(a.dtype), **tol)
    return steps, fused, ours, transformers_steps, tight


def _random_skip_and_bias(model, mixer_cls, *scales):
    """D and the convolution's bias of every mixer drawn from N(0, 1), the
    `scales` (parameter names) from U(0.5, 1.5): initialised as ones and
    zeros, they would let a step that drops them pass."""
    with torch.no_grad():
        for mixer in model.modules():
            if isinstance(mixer, mixer_cls):
                mixer.D.normal_()
                mixer.conv1d.bias.normal_()
                for name in scales:
                    mixer.get_parameter(name).uniform_(0.5, 1.5)


def _updated_parameters_reach_the_steps(model, mixer_cls, names, fused, steps,
                                        transformers_steps, tight):
    """Parameters updated in place (an optimizer step) reach the next fused
    steps: they agree with the mixer's own path, not with the old steps."""
    with torch.no_grad():
        for mixer in model.modules():
            if isinstance(mixer, mixer_cls):
                for name in names:
                    mixer.get_parameter(name).mul_(0.9)
    mixer_cls.forward = fused.__wrapped_original__
    pieces = steps()
    mixer_cls.forward = fused
    ours = steps()
    torch.testing.assert_close(ours[0], pieces[0], **tight)
    assert not torch.allclose(ours[0], transformers_steps[0], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_patched_mamba2_decoding_steps(dtype, unpatched_transformers):
    # the fused decoding step: logits of every cached step and the caches
    # themselves, batch 2, two groups, against transformers' own steps
    import transformers.models.mamba2.modeling_mamba2 as m2

    cfg = transformers.Mamba2Config(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_heads=4,
        head_dim=8, expand=1, state_size=8, n_groups=2, chunk_size=8,
        conv_kernel=4, time_step_limit=(0.0, 0.5))
    torch.manual_seed(3)
    model = transformers.Mamba2ForCausalLM(cfg).to(dtype).eval()
    _random_skip_and_bias(model, m2.Mamba2Mixer, "norm.weight")
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(4))
    steps, fused, ours, transformers_steps, tight = _fused_steps_against_transformers(
        model, m2, m2.Mamba2Mixer, "mamba2_selective_state_update", zt.apply_to_mamba2,
        ids, dtype)
    # a hooked projection is called as a module (an adapter would be)
    seen = []
    handle = model.backbone.layers[1].mixer.in_proj.register_forward_hook(
        lambda mod, args, out: seen.append(out.shape))
    again = steps()
    handle.remove()
    assert seen.count(torch.Size([2, 1, seen[-1][-1]])) == 4
    torch.testing.assert_close(again[0], ours[0], **tight)
    # accelerate's hook (offloading) on a module inside a mixer: the
    # mixer's own path, where transformers fires it, at every token;
    # removed, the fused step again
    class Hook:
        calls = 0

        def pre_forward(self, module, *args, **kwargs):
            Hook.calls += 1
            return args, kwargs

        def post_forward(self, module, output):
            return output

    conv = model.backbone.layers[1].mixer.conv1d
    conv._hf_hook = Hook()
    hooked = steps()
    assert Hook.calls == ids.shape[1] - 6      # the prompt and every token
    del conv._hf_hook
    torch.testing.assert_close(hooked[0], ours[0], **tight)
    again = steps()
    assert Hook.calls == ids.shape[1] - 6
    torch.testing.assert_close(again[0], ours[0], **tight)
    _updated_parameters_reach_the_steps(
        model, m2.Mamba2Mixer, ("A_log", "D", "dt_bias", "norm.weight", "conv1d.weight",
                                "conv1d.bias"), fused, steps, transformers_steps, tight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_patched_mamba_decoding_steps(dtype, unpatched_transformers):
    # Mamba-1's fused decoding step: logits of every cached step and the
    # caches, batch 2, against transformers' own steps and the mixer's own
    # path on zilla_muf's kernels
    import transformers.models.mamba.modeling_mamba as m1

    cfg = transformers.MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                   state_size=4, expand=2, conv_kernel=4,
                                   time_step_rank=3)
    torch.manual_seed(5)
    model = transformers.MambaForCausalLM(cfg).to(dtype).eval()
    _random_skip_and_bias(model, m1.MambaMixer)
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(6))
    steps, fused, ours, transformers_steps, tight = _fused_steps_against_transformers(
        model, m1, m1.MambaMixer, "mamba_selective_state_update", zt.apply_to_mamba,
        ids, dtype)
    # a hooked x_proj: the mixer's own path, which calls it as a module (its
    # one-token state update then runs: removed, the step fails)
    seen = []
    handle = model.backbone.layers[0].mixer.x_proj.register_forward_hook(
        lambda mod, args, out: seen.append(out.shape))
    state_update = m1.mamba_selective_state_update
    m1.mamba_selective_state_update = None
    with pytest.raises(TypeError):
        steps()
    m1.mamba_selective_state_update = state_update
    again = steps()
    handle.remove()
    assert len(seen) >= 5
    torch.testing.assert_close(again[0], ours[0], **tight)
    _updated_parameters_reach_the_steps(
        model, m1.MambaMixer, ("A_log", "D", "x_proj.weight", "dt_proj.weight",
                               "dt_proj.bias", "conv1d.weight", "conv1d.bias"),
        fused, steps, transformers_steps, tight)


def test_patched_block_norm(unpatched_transformers, monkeypatch):
    import transformers.models.mamba2.modeling_mamba2 as m2

    import zilla_muf.stable_ops as so

    norm = m2.Mamba2RMSNorm(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 24, generator=torch.Generator().manual_seed(2))
    xt = torch.randn(24, 5, generator=torch.Generator().manual_seed(3)).t()
    ref, ref_t = norm(x).detach(), norm(xt).detach()
    xg_ref = x.clone().requires_grad_()
    norm(xg_ref).square().sum().backward()
    gw_ref = norm.weight.grad
    norm.weight.grad = None
    zt.apply_to_mamba2()
    calls = []
    kernel = so._rms_norm_rows
    monkeypatch.setattr(so, "_rms_norm_rows", lambda *a: calls.append(1) or kernel(*a))
    with torch.no_grad():
        got, got_t = norm(x), norm(xt)
        wide = norm(x.double())  # float64 input: the module's own path
        leaf = norm(x.clone().requires_grad_())  # nothing recorded: the kernel
    assert len(calls) == 3
    torch.testing.assert_close(leaf, got, rtol=0, atol=0)
    torch.testing.assert_close(got, ref, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(got_t, ref_t, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(wide, ref.double(), rtol=2e-6, atol=2e-6)
    # a gradient to record: the differentiable norm operator, whose
    # gradients are the module's own
    backward = so._rms_norm_backward
    monkeypatch.setattr(so, "_rms_norm_backward",
                        lambda *a: calls.append(2) or backward(*a))
    xg = x.clone().requires_grad_()
    norm(xg).square().sum().backward()
    assert calls == [1, 1, 1, 2]
    torch.testing.assert_close(xg.grad, xg_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.weight.grad, gw_ref, rtol=1e-5, atol=1e-5)


def test_apply_checks_the_model(unpatched_transformers):
    with pytest.raises(TypeError, match="`model`"):
        zt.apply_to_mamba2(torch.nn.Linear(2, 2))


def test_docstring_examples():
    import doctest

    result = doctest.testmod(zt, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
