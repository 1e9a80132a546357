"""Gradients of selective_scan.

Oracles: central finite differences of the float64 forward, and torch
autograd through a float64 transcription of the recurrence written here
(the logic of mamba_ssm's ``selective_scan_ref``, plus an initial state and
a cotangent for the last state).
"""

import numpy as np
import pytest

from zilla_muf import selective_scan
from zilla_muf import vjp

from _gradcheck import assert_grads_close, fd_grads, random_cotangent

torch = pytest.importorskip("torch")

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


def _torch_scan(u, delta, A, B, C, D, z, bias, softplus, h0):
    batch, dim, L = u.shape
    d = delta if bias is None else delta + bias[:, None]
    if softplus:
        d = torch.nn.functional.softplus(d)
    if B.dim() == 4:
        B = B.repeat_interleave(dim // B.shape[1], dim=1)
    if C.dim() == 4:
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    h = h0
    ys = []
    for t in range(L):
        dA = torch.exp(d[:, :, t, None] * A)
        Bt = B[None] if B.dim() == 2 else (B[:, None, :, t] if B.dim() == 3 else B[..., t])
        Ct = C[None] if C.dim() == 2 else (C[:, None, :, t] if C.dim() == 3 else C[..., t])
        h = dA * h + (d[:, :, t] * u[:, :, t])[..., None] * Bt
        yt = (h * Ct).sum(-1)
        ys.append(2 * yt.real if torch.is_complex(yt) else yt)
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * torch.nn.functional.silu(z)
    return y, h


def _problem(rng, layout, cplx, batch=2, dim=4, N=3, L=9, full=True):
    def bc():
        shape = {"const": (dim, N), "shared": (batch, N, L),
                 "groups": (batch, 2, N, L)}[layout]
        a = rng.standard_normal(shape)
        return a + 1j * rng.standard_normal(shape) if cplx else a
    A = -rng.uniform(0.5, 2.0, (dim, N))
    if cplx:
        A = A + 1j * rng.uniform(-3, 3, (dim, N))
    kw = dict(u=rng.standard_normal((batch, dim, L)),
              delta=rng.uniform(-1.0, 1.0, (batch, dim, L)), A=A, B=bc(), C=bc())
    if full:
        h0 = rng.standard_normal((batch, dim, N))
        if cplx:
            h0 = h0 + 1j * rng.standard_normal((batch, dim, N))
        kw.update(D=rng.standard_normal(dim), z=rng.standard_normal((batch, dim, L)),
                  delta_bias=rng.uniform(-0.5, 0.5, dim), delta_softplus=True,
                  initial_state=h0)
    return kw


@pytest.mark.parametrize("layout", ["const", "shared", "groups"])
@pytest.mark.parametrize("cplx", [False, True])
def test_fd(layout, cplx):
    rng = np.random.default_rng(10)
    kw = _problem(rng, layout, cplx, batch=1, dim=2, N=2, L=5)
    kw["return_last_state"] = True
    out, pull = vjp(selective_scan, **kw)
    ct = random_cotangent(rng, out)
    got = pull(ct)
    assert sorted(got) == sorted(NAMES)
    assert_grads_close(got, fd_grads(selective_scan, kw, ct, NAMES), 1e-6)


@pytest.mark.parametrize("layout", ["const", "shared", "groups"])
@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("last", [False, True])
def test_torch(layout, cplx, last):
    rng = np.random.default_rng(11)
    kw = _problem(rng, layout, cplx, L=40)
    out, pull = vjp(selective_scan, return_last_state=last, **kw)
    ct = random_cotangent(rng, out)
    got = pull(ct)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in kw.items()
         if k in NAMES}
    ty, th = _torch_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                         t["delta_bias"], True, t["initial_state"])
    loss = (ty * torch.tensor(ct[0] if last else ct)).sum()
    if last:
        loss = loss + (torch.conj(torch.tensor(ct[1])) * th).real.sum()
    loss.backward()
    want = {k: v.grad.numpy() for k, v in t.items()}
    assert_grads_close(got, want, 1e-9)


def test_minimal_and_no_softplus():
    rng = np.random.default_rng(12)
    kw = _problem(rng, "groups", False, full=False, L=6)
    out, pull = vjp(selective_scan, **kw)
    ct = random_cotangent(rng, out)
    got = pull(ct)
    assert sorted(got) == ["A", "B", "C", "delta", "u"]
    assert_grads_close(got, fd_grads(selective_scan, kw, ct, list(got)), 1e-6)


def test_long_segments_float32():
    """Several checkpoint segments; float32 within 1e-3 of float64."""
    rng = np.random.default_rng(13)
    kw = _problem(rng, "shared", False, batch=1, dim=3, N=4, L=700)
    out, pull = vjp(selective_scan, **kw)
    ct = rng.standard_normal(out.shape)
    g64 = pull(ct)
    kw32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v)
            for k, v in kw.items()}
    _, pull32 = vjp(selective_scan, **kw32)
    g32 = pull32(ct.astype(np.float32))
    for k in g64:
        assert g32[k].dtype == np.float32
    assert_grads_close(g32, g64, 1e-3)
    # and the float64 one against torch
    t = {k: torch.tensor(v, requires_grad=True) for k, v in kw.items() if k in NAMES}
    ty, _ = _torch_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                        t["delta_bias"], True, t["initial_state"])
    (ty * torch.tensor(ct)).sum().backward()
    assert_grads_close(g64, {k: v.grad.numpy() for k, v in t.items()}, 1e-9)


def test_softplus_threshold():
    """Above 20 the softplus is the identity: d delta' / d delta = 1."""
    rng = np.random.default_rng(14)
    kw = _problem(rng, "const", False, full=False, L=4, dim=1, N=1, batch=1)
    kw["A"] = np.array([[-1e-3]])
    kw["delta"] = np.array([[[21.0, 25.0, -1.0, 30.0]]])
    out, pull = vjp(selective_scan, delta_softplus=True, **kw)
    ct = rng.standard_normal(out.shape)
    got = pull(ct)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in kw.items()}
    ty, _ = _torch_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], None, None, None,
                        True, torch.zeros(1, 1, 1, dtype=torch.float64))
    (ty * torch.tensor(ct)).sum().backward()
    assert_grads_close(got, {k: v.grad.numpy() for k, v in t.items()}, 1e-9)


@pytest.mark.parametrize("layout", ["const", "shared", "groups"])
def test_workers_agree(layout):
    """The compiled backward gives the same gradients on 1 and 3 threads."""
    rng = np.random.default_rng(15)
    kw = _problem(rng, layout, False, batch=3, dim=4, N=5, L=300)
    out, pull1 = vjp(selective_scan, workers=1, return_last_state=True, **kw)
    _, pull3 = vjp(selective_scan, workers=3, return_last_state=True, **kw)
    ct = random_cotangent(rng, out)
    g1, g3 = pull1(ct), pull3(ct)
    assert_grads_close(g3, g1, 1e-12)


def test_empty_sequence():
    rng = np.random.default_rng(16)
    kw = _problem(rng, "const", False, L=0)
    out, pull = vjp(selective_scan, return_last_state=True, **kw)
    glast = rng.standard_normal(out[1].shape)
    g = pull((np.zeros(out[0].shape), glast))
    np.testing.assert_array_equal(g["initial_state"], glast)
    assert g["u"].shape == (2, 4, 0) and not np.any(g["A"])


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 2), dim=st.sampled_from([1, 2, 4]),
       N=st.integers(1, 9), L=st.integers(1, 30),
       layout=st.sampled_from(["const", "shared", "groups"]), cplx=st.booleans(),
       full=st.booleans(), last=st.booleans())
def test_property_against_torch(seed, batch, dim, N, L, layout, cplx, full, last):
    rng = np.random.default_rng(seed)
    if layout == "groups" and dim == 1:
        layout = "shared"
    kw = _problem(rng, layout, cplx, batch=batch, dim=dim, N=N, L=L, full=full)
    out, pull = vjp(selective_scan, return_last_state=last, **kw)
    ct = random_cotangent(rng, out)
    got = pull(ct)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in kw.items() if k in NAMES}
    h0 = t.get("initial_state")
    if h0 is None:
        h0 = torch.zeros(batch, dim, N, dtype=t["A"].dtype)
    ty, th = _torch_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t.get("D"),
                         t.get("z"), t.get("delta_bias"), full, h0)
    loss = (ty * torch.tensor(ct[0] if last else ct)).sum()
    if last:
        loss = loss + (torch.conj(torch.tensor(ct[1])) * th).real.sum()
    loss.backward()
    assert_grads_close(got, {k: v.grad.numpy() for k, v in t.items()}, 1e-8)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-9), (np.float32, 1e-3)])
def test_dstate_16(dtype, rtol):
    """dstate 16 (the compiled kernel's unrolled path), two segments."""
    rng = np.random.default_rng(17)
    kw = _problem(rng, "groups", False, batch=2, dim=4, N=16, L=300)
    out, pull = vjp(selective_scan, return_last_state=True,
                    **{k: (v.astype(dtype) if isinstance(v, np.ndarray) else v)
                       for k, v in kw.items()})
    ct = random_cotangent(rng, out)
    got = pull(ct)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in kw.items() if k in NAMES}
    ty, th = _torch_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                         t["delta_bias"], True, t["initial_state"])
    loss = (ty * torch.tensor(ct[0], dtype=torch.float64)).sum() \
        + (th * torch.tensor(ct[1], dtype=torch.float64)).sum()
    loss.backward()
    assert_grads_close(got, {k: v.grad.numpy() for k, v in t.items()}, rtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["const", "shared", "groups"])
def test_primal_is_the_forward(dtype, layout):
    """The pullback's own (checkpointing) forward returns selective_scan's
    output and last state to the last bit."""
    rng = np.random.default_rng(18)
    kw = _problem(rng, layout, False, batch=2, dim=4, N=16, L=300)
    kw = {k: (v.astype(dtype) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    for extra in (dict(), dict(z=None), dict(delta_softplus=False, delta_bias=None)):
        args = dict(kw, **extra)
        out, _ = vjp(selective_scan, return_last_state=True, workers=2, **args)
        y, last = selective_scan(return_last_state=True, **args)
        assert out[0].dtype == y.dtype == dtype
        np.testing.assert_array_equal(out[0], y)
        np.testing.assert_array_equal(out[1], last)


def _torch_grads(kw, ct, last):
    t = {k: torch.tensor(v, requires_grad=True) for k, v in kw.items() if k in NAMES}
    ty, th = _torch_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t.get("D"),
                         t.get("z"), t.get("delta_bias"), kw.get("delta_softplus", False),
                         t["initial_state"])
    loss = (ty * torch.tensor(ct[0] if last else ct)).sum()
    if last:
        loss = loss + (th * torch.tensor(ct[1])).sum()
    loss.backward()
    return {k: v.grad.numpy() for k, v in t.items()}


@pytest.mark.parametrize("N", [4, 8, 12, 16, 20])
@pytest.mark.parametrize("layout", ["const", "shared", "groups"])
def test_state_widths_float64(N, layout):
    """Every dstate path of the compiled backward (the state in 1 to 4
    vectors of registers, dstate 16 unrolled, or in scratch) over three
    checkpoint segments, against torch autograd in float64."""
    rng = np.random.default_rng(19 + N)
    kw = _problem(rng, layout, False, batch=2, dim=4, N=N, L=300)
    out, pull = vjp(selective_scan, return_last_state=True, workers=2, **kw)
    ct = random_cotangent(rng, out)
    assert_grads_close(pull(ct), _torch_grads(kw, ct, True), 1e-9)


@pytest.mark.parametrize("N", [5, 8, 16, 24, 32, 40])
def test_state_widths_float32(N):
    """float32 on every dstate path within 1e-3 of float64, with realistic
    parameters (A in [-16, -1], softplus steps 0.001-0.1) at L = 4096."""
    rng = np.random.default_rng(20 + N)
    batch, dim, L = 1, 4, 4096
    kw = dict(u=rng.standard_normal((batch, dim, L)),
              delta=np.log(np.expm1(rng.uniform(0.001, 0.1, (batch, dim, L)))),
              A=-rng.uniform(1.0, 16.0, (dim, N)),
              B=rng.standard_normal((batch, 2, N, L)),
              C=rng.standard_normal((batch, 2, N, L)),
              D=rng.standard_normal(dim), z=rng.standard_normal((batch, dim, L)),
              delta_bias=rng.uniform(-0.1, 0.1, dim), delta_softplus=True,
              initial_state=rng.standard_normal((batch, dim, N)))
    out, pull = vjp(selective_scan, return_last_state=True, **kw)
    ct = random_cotangent(rng, out)
    g64 = pull(ct)
    kw32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v)
            for k, v in kw.items()}
    _, pull32 = vjp(selective_scan, return_last_state=True, **kw32)
    g32 = pull32(tuple(c.astype(np.float32) for c in ct))
    for k in g64:
        assert g32[k].dtype == np.float32
    assert_grads_close(g32, g64, 1e-3)


def test_large_decay_stays_finite():
    """|A| dt far past exp's range (decays of exactly 0) and steps above the
    softplus threshold: finite gradients, equal to torch's in float64."""
    rng = np.random.default_rng(21)
    kw = _problem(rng, "shared", False, batch=1, dim=2, N=16, L=200)
    kw["A"] = -rng.uniform(1e3, 1e5, (2, 16))
    kw["delta"][0, 0, ::7] = 40.0
    out, pull = vjp(selective_scan, return_last_state=True, **kw)
    ct = random_cotangent(rng, out)
    got = pull(ct)
    for k, v in got.items():
        assert np.all(np.isfinite(v)), k
    assert_grads_close(got, _torch_grads(kw, ct, True), 1e-9)
    kw32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v)
            for k, v in kw.items()}
    _, pull32 = vjp(selective_scan, return_last_state=True, **kw32)
    for k, v in pull32(tuple(c.astype(np.float32) for c in ct)).items():
        assert np.all(np.isfinite(v)), k


def test_bad_input_names_the_argument():
    rng = np.random.default_rng(22)
    kw = _problem(rng, "shared", False, batch=1, dim=2, N=3, L=5)
    with pytest.raises(ValueError, match="`delta`"):
        vjp(selective_scan, **dict(kw, delta=kw["delta"][..., :4]))
    with pytest.raises(ValueError, match="`B`"):
        vjp(selective_scan, **dict(kw, B=kw["B"][:, :2]))
    with pytest.raises(TypeError, match="`C`"):
        vjp(selective_scan, **dict(kw, C=kw["C"] + 1j))
    with pytest.raises(ValueError, match="`initial_state`"):
        vjp(selective_scan, **dict(kw, initial_state=np.zeros((1, 2, 4))))


@pytest.mark.parametrize("N", [5, 16])
@pytest.mark.parametrize("layout", ["const", "shared", "groups"])
@pytest.mark.parametrize("big_angle", [False, True])
def test_complex_segments(N, layout, big_angle):
    """Complex A over three checkpoint segments against torch autograd in
    float64; with angles |dt Im A| past the vectorised sincos's range (the
    libm path) too."""
    rng = np.random.default_rng(23 + N)
    kw = _problem(rng, layout, True, batch=2, dim=4, N=N, L=300)
    if big_angle:
        kw["A"] = kw["A"].real + 1j * rng.uniform(-3e6, 3e6, kw["A"].shape)
    out, pull = vjp(selective_scan, return_last_state=True, workers=2, **kw)
    ct = random_cotangent(rng, out)
    got = pull(ct)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in kw.items() if k in NAMES}
    ty, th = _torch_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                         t["delta_bias"], True, t["initial_state"])
    loss = (ty * torch.tensor(ct[0])).sum() \
        + (torch.conj(torch.tensor(ct[1])) * th).real.sum()
    loss.backward()
    assert_grads_close(got, {k: v.grad.numpy() for k, v in t.items()}, 1e-8)


def test_complex_float32():
    """complex64 within 1e-3 of complex128 at L = 2048 (S4D-Lin A)."""
    rng = np.random.default_rng(24)
    batch, dim, N, L = 1, 3, 16, 2048
    kw = dict(u=rng.standard_normal((batch, dim, L)),
              delta=np.log(np.expm1(rng.uniform(0.001, 0.1, (batch, dim, L)))),
              A=np.repeat((-0.5 + 1j * np.pi * np.arange(N))[None], dim, 0),
              B=rng.standard_normal((batch, N, L)) + 1j * rng.standard_normal((batch, N, L)),
              C=rng.standard_normal((batch, N, L)) + 1j * rng.standard_normal((batch, N, L)),
              D=rng.standard_normal(dim), z=rng.standard_normal((batch, dim, L)),
              delta_softplus=True)
    out, pull = vjp(selective_scan, **kw)
    ct = rng.standard_normal(out.shape)
    g64 = pull(ct)
    low = {np.dtype(np.float64): np.float32, np.dtype(np.complex128): np.complex64}
    kw32 = {k: (v.astype(low[v.dtype]) if isinstance(v, np.ndarray) else v)
            for k, v in kw.items()}
    _, pull32 = vjp(selective_scan, **kw32)
    g32 = pull32(ct.astype(np.float32))
    assert g32["A"].dtype == np.complex64 and g32["u"].dtype == np.float32
    assert_grads_close(g32, g64, 1e-3)


@pytest.mark.parametrize("cplx", [False, True])
def test_no_state(cplx):
    """dstate 0: y = D u silu(z); gradients against finite differences."""
    rng = np.random.default_rng(25)
    kw = _problem(rng, "shared", cplx, batch=2, dim=3, N=0, L=7)
    out, pull = vjp(selective_scan, return_last_state=True, **kw)
    np.testing.assert_allclose(
        out[0], kw["D"][:, None] * kw["u"] * kw["z"] / (1 + np.exp(-kw["z"])),
        rtol=1e-12)
    ct = (rng.standard_normal(out[0].shape), None)
    got = pull(ct)
    names = ["u", "delta", "D", "z", "delta_bias"]
    assert_grads_close(got, fd_grads(selective_scan, dict(kw, return_last_state=True),
                                     ct, names), 1e-6, names)
    assert got["A"].shape == (3, 0) and got["initial_state"].shape == (2, 3, 0)
