"""Gradients of the SSD layer (ssd_chunk_scan_combined, ssd_sequential,
ssd_quadratic).

Oracles: central finite differences of the float64 forward, and torch
autograd through a float64 sequential transcription of the SSD recurrence
written here (with seq_idx resets, dt_limit clamping, softplus threshold 20).
"""

import math

import numpy as np
import pytest

from zilla_muf import ssd_chunk_scan_combined, ssd_quadratic, ssd_sequential
from zilla_muf import vjp

from _gradcheck import assert_grads_close, fd_grads, random_cotangent

# every test of this module runs on each build of the chunk kernels
pytestmark = pytest.mark.usefixtures("ssd_build")

torch = pytest.importorskip("torch")

NAMES = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"]


def _torch_ssd(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None,
               seq_idx=None, dt_softplus=False, dt_limit=(0.0, math.inf)):
    nb, L, H, P = x.shape
    G, N = B.shape[2:]
    rep = H // G
    d = dt if dt_bias is None else dt + dt_bias
    if dt_softplus:
        # softplus at every step, as the forward forms it (torch's default
        # takes the step itself above 20)
        d = torch.nn.functional.softplus(d, threshold=1e4)
    d = torch.clamp(d, dt_limit[0], dt_limit[1])
    Bh = B.repeat_interleave(rep, dim=2)
    Ch = C.repeat_interleave(rep, dim=2)
    h = (torch.zeros(nb, H, P, N, dtype=x.dtype) if initial_states is None
         else initial_states)
    ys = []
    for t in range(L):
        decay = torch.exp(d[:, t] * A)                     # (nb, H)
        if seq_idx is not None and t > 0:
            keep = torch.tensor(seq_idx[:, t] == seq_idx[:, t - 1], dtype=x.dtype)
            decay = decay * keep[:, None]
        h = decay[..., None, None] * h + (d[:, t, :, None] * x[:, t])[..., None] \
            * Bh[:, t, :, None, :]
        ys.append((h * Ch[:, t, :, None, :]).sum(-1))
    y = torch.stack(ys, dim=1) if ys else x * 0  # x * 0: empty along L
    if D is not None:
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * torch.nn.functional.silu(z)
    return y, h


def _problem(rng, nb=2, L=13, H=4, P=3, G=2, N=5, full=True, dtype=np.float64):
    kw = dict(x=rng.standard_normal((nb, L, H, P)),
              dt=rng.uniform(-3.0, 0.5, (nb, L, H)),
              A=-rng.uniform(1.0, 4.0, H),
              B=rng.standard_normal((nb, L, G, N)),
              C=rng.standard_normal((nb, L, G, N)))
    if full:
        kw.update(D=rng.standard_normal(H), z=rng.standard_normal((nb, L, H, P)),
                  dt_bias=rng.uniform(-0.5, 0.5, H), dt_softplus=True,
                  initial_states=rng.standard_normal((nb, H, P, N)))
    return {k: (v.astype(dtype) if isinstance(v, np.ndarray) else v)
            for k, v in kw.items()}


def _torch_grads(kw, ct, last, seq_idx=None):
    t = {k: torch.tensor(v, requires_grad=True) for k, v in kw.items() if k in NAMES}
    opts = {k: kw[k] for k in ("dt_softplus", "dt_limit") if k in kw}
    ty, th = _torch_ssd(**t, seq_idx=seq_idx, **opts)
    if last:
        loss = (ty * torch.tensor(ct[0])).sum() + (th * torch.tensor(ct[1])).sum()
    else:
        loss = (ty * torch.tensor(ct)).sum()
    loss.backward()
    # no grad: the argument did not reach the loss (an empty axis)
    return {k: (np.zeros(v.shape) if v.grad is None else v.grad.numpy())
            for k, v in t.items()}


@pytest.mark.parametrize("fun", [ssd_chunk_scan_combined, ssd_sequential])
def test_fd(fun):
    rng = np.random.default_rng(20)
    kw = _problem(rng, nb=1, L=7, H=2, P=2, G=1, N=2)
    kw.update(chunk_size=3, return_final_states=True, D=rng.standard_normal((2, 2)))
    out, pull = vjp(fun, **kw)
    ct = random_cotangent(rng, out)
    got = pull(ct)
    assert sorted(got) == sorted(NAMES)
    assert_grads_close(got, fd_grads(fun, kw, ct, NAMES), 1e-6)


def test_fd_quadratic():
    rng = np.random.default_rng(21)
    kw = _problem(rng, nb=1, L=6, H=2, P=2, G=2, N=2)
    del kw["initial_states"]
    out, pull = vjp(ssd_quadratic, **kw)
    ct = random_cotangent(rng, out)
    got = pull(ct)
    names = NAMES[:-1]
    assert sorted(got) == sorted(names)
    assert_grads_close(got, fd_grads(ssd_quadratic, kw, ct, names), 1e-6)


@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 64])
@pytest.mark.parametrize("last", [False, True])
def test_torch_chunks(chunk, last):
    rng = np.random.default_rng(22)
    kw = _problem(rng)
    out, pull = vjp(ssd_chunk_scan_combined, chunk_size=chunk,
                    return_final_states=last, **kw)
    ct = random_cotangent(rng, out)
    assert_grads_close(pull(ct), _torch_grads(kw, ct, last), 1e-9)


@pytest.mark.parametrize("fun", [ssd_chunk_scan_combined, ssd_sequential])
def test_seq_idx(fun):
    """No gradient crosses a sequence boundary; resets inside and at chunk ends."""
    rng = np.random.default_rng(23)
    kw = _problem(rng, L=16)
    seq = np.array([[0] * 3 + [1] * 5 + [2] * 8, [0] * 8 + [1] * 8])
    out, pull = vjp(fun, chunk_size=4, seq_idx=seq, return_final_states=True, **kw)
    ct = random_cotangent(rng, out)
    got = pull(ct)
    assert_grads_close(got, _torch_grads(kw, ct, True, seq_idx=seq), 1e-9)
    # a loss on the last sequence of row 0 only: nothing reaches earlier ones
    ct0 = np.zeros_like(out[0])
    ct0[0, 8:] = 1.0
    g = pull((ct0, None))
    assert np.all(g["x"][0, :8] == 0) and np.all(g["dt"][0, :8] == 0)
    assert np.all(g["initial_states"][0] == 0)


def test_dt_limit():
    rng = np.random.default_rng(24)
    kw = _problem(rng)
    kw["dt_limit"] = (0.05, 0.5)
    out, pull = vjp(ssd_chunk_scan_combined, chunk_size=4, **kw)
    ct = random_cotangent(rng, out)
    got = pull(ct)
    assert_grads_close(got, _torch_grads(kw, ct, False), 1e-9)
    v = np.logaddexp(0, kw["dt"] + kw["dt_bias"])
    clamped = (v < 0.05) | (v > 0.5)
    assert clamped.any() and np.all(got["dt"][clamped] == 0)


def test_softplus_threshold():
    rng = np.random.default_rng(25)
    kw = _problem(rng, full=False)
    kw["dt"] = rng.uniform(19.0, 23.0, kw["dt"].shape)
    kw["A"] = -rng.uniform(1e-3, 2e-3, 4)
    out, pull = vjp(ssd_chunk_scan_combined, chunk_size=4, dt_softplus=True, **kw)
    ct = random_cotangent(rng, out)
    assert_grads_close(pull(ct), _torch_grads(dict(kw, dt_softplus=True), ct, False),
                       1e-9)


@pytest.mark.parametrize("lo", [0.0, 20.5])
def test_softplus_chain_rule_at_large_steps(lo):
    # dt's gradient through softplus is the logistic times the gradient of
    # the step it makes, at every step (also above 20, where the logistic
    # differs from 1 by up to 2e-9, far above float64 rounding): against
    # the gradient of the same call given softplus(dt) as the steps, times
    # scipy's logistic; with a lower limit that clamps some steps, zero there
    from scipy.special import expit

    rng = np.random.default_rng(27)
    kw = _problem(rng, full=False)
    v = rng.uniform(19.0, 23.0, kw["dt"].shape)
    kw["A"] = -rng.uniform(1e-3, 2e-3, 4)
    sp = np.logaddexp(0.0, v)
    opts = dict(chunk_size=4, dt_limit=(lo, math.inf))
    out, pull = vjp(ssd_chunk_scan_combined, **dict(kw, dt=v), dt_softplus=True,
                    **opts)
    out2, pull2 = vjp(ssd_chunk_scan_combined, **dict(kw, dt=sp), **opts)
    np.testing.assert_array_equal(out, out2)
    ct = random_cotangent(rng, out)
    want = pull2(ct)["dt"] * expit(v)
    got = pull(ct)["dt"]
    clamped = sp < lo
    assert clamped.any() == (lo > 0)
    assert np.all(got[clamped] == 0)
    np.testing.assert_allclose(got[~clamped], want[~clamped], rtol=1e-13,
                               atol=1e-13 * np.abs(want).max())


def test_minimal_arguments_and_sequential_agree():
    rng = np.random.default_rng(26)
    kw = _problem(rng, full=False)
    out, pull = vjp(ssd_chunk_scan_combined, **kw)
    ct = random_cotangent(rng, out)
    got = pull(ct)
    assert sorted(got) == ["A", "B", "C", "dt", "x"]
    assert_grads_close(got, _torch_grads(kw, ct, False), 1e-9)
    got_q = vjp(ssd_quadratic, **kw)[1](ct)
    assert_grads_close(got_q, got, 1e-9)


def test_float32_long_sequence():
    """float32 within 1e-3 of float64 at L=4096, realistic parameters."""
    rng = np.random.default_rng(27)
    nb, L, H, P, G, N = 1, 4096, 2, 4, 1, 8
    dt_raw = np.log(np.expm1(rng.uniform(0.001, 0.1, (nb, L, H))))   # softplus^-1
    kw = dict(x=rng.standard_normal((nb, L, H, P)), dt=dt_raw,
              A=-rng.uniform(1.0, 16.0, H), B=rng.standard_normal((nb, L, G, N)),
              C=rng.standard_normal((nb, L, G, N)), D=rng.standard_normal(H),
              z=rng.standard_normal((nb, L, H, P)), dt_softplus=True)
    out, pull = vjp(ssd_chunk_scan_combined, chunk_size=64, **kw)
    ct = rng.standard_normal(out.shape)
    g64 = pull(ct)
    kw32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v)
            for k, v in kw.items()}
    _, pull32 = vjp(ssd_chunk_scan_combined, chunk_size=64, **kw32)
    g32 = pull32(ct.astype(np.float32))
    for name in g64:
        assert g32[name].dtype == np.float32
        rel = np.linalg.norm(g32[name] - g64[name]) / np.linalg.norm(g64[name])
        assert rel < 1e-3, (name, rel)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_decay_long_chunks_finite(dtype):
    rng = np.random.default_rng(28)
    kw = _problem(rng, L=600, H=2, G=1, full=False, dtype=dtype)
    kw["A"] = np.array([-1e4, -300.0], dtype=dtype)
    kw["dt"] = rng.uniform(0.5, 5.0, kw["dt"].shape).astype(dtype)
    out, pull = vjp(ssd_chunk_scan_combined, chunk_size=256, **kw)
    g = pull(np.ones_like(out))
    for name, v in g.items():
        assert np.all(np.isfinite(v)), name


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), nb=st.integers(1, 2), L=st.integers(1, 20),
       groups=st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2)]),
       P=st.integers(1, 3), N=st.integers(1, 4), chunk=st.integers(1, 24),
       use_D=st.booleans(), use_z=st.booleans(), use_bias=st.booleans(),
       use_init=st.booleans(), softplus=st.booleans(), use_seq=st.booleans(),
       limit=st.booleans(), last=st.booleans())
def test_property_against_torch(seed, nb, L, groups, P, N, chunk, use_D, use_z,
                                use_bias, use_init, softplus, use_seq, limit, last):
    """Random shapes, chunk sizes and every optional argument: the gradients
    equal torch autograd through the sequential transcription."""
    rng = np.random.default_rng(seed)
    H, G = groups
    kw = _problem(rng, nb=nb, L=L, H=H, P=P, G=G, N=N)
    if not use_D:
        del kw["D"]
    if not use_z:
        del kw["z"]
    if not use_bias:
        del kw["dt_bias"]
    if not use_init:
        del kw["initial_states"]
    kw["dt_softplus"] = softplus
    if not softplus:
        kw["dt"] = rng.uniform(0.0, 1.0, kw["dt"].shape)
    if limit:
        kw["dt_limit"] = (0.1, 0.6)
    seq = np.sort(rng.integers(0, 3, (nb, L)), axis=1) if use_seq else None
    out, pull = vjp(ssd_chunk_scan_combined, chunk_size=chunk, seq_idx=seq,
                    return_final_states=last, **kw)
    ct = random_cotangent(rng, out)
    got = pull(ct)
    want = _torch_grads(kw, ct, last, seq_idx=seq)
    assert sorted(got) == sorted(want)
    # a gradient can be exactly zero in the oracle (A's, when every step
    # between two positions of a sequence is clamped to 0) and rounding noise
    # of cancelling terms here: judged against a millionth of the largest
    # gradient (about 1e-14 absolute for these problems)
    floor = 1e-6 * max(float(np.max(np.abs(w))) for w in want.values() if w.size)
    assert_grads_close(got, want, 1e-8, floor=floor)


def test_bad_cotangent():
    rng = np.random.default_rng(29)
    kw = _problem(rng, full=False)
    out, pull = vjp(ssd_chunk_scan_combined, return_final_states=True, **kw)
    with pytest.raises(ValueError, match="cotangent"):
        pull(out[0])
    with pytest.raises(ValueError, match="cotangent"):
        pull((out[0][:, :-1], None))


def test_workers_agree():
    """The backward splits the chunks over threads: the same gradients."""
    rng = np.random.default_rng(30)
    kw = _problem(rng, L=50, H=4, G=2)
    seq = np.repeat(np.array([[0, 1, 1, 2, 3]]), 10, axis=1).repeat(2, axis=0)
    out, pull1 = vjp(ssd_chunk_scan_combined, chunk_size=4, seq_idx=seq,
                     return_final_states=True, workers=1, **kw)
    _, pull2 = vjp(ssd_chunk_scan_combined, chunk_size=4, seq_idx=seq,
                   return_final_states=True, workers=3, **kw)
    ct = random_cotangent(rng, out)
    assert_grads_close(pull2(ct), pull1(ct), 1e-12)


# ---------------------------------------------------------------------------
# The compiled backward: shapes that fill several register tiles, headdim and
# dstate that are not multiples of the vector width, blocks of chunks
# ---------------------------------------------------------------------------

def _seq_ids(nb, L, cuts):
    """Sequence ids (nb, L) that change at the positions in `cuts`."""
    seq = np.zeros((nb, L), dtype=np.int64)
    for c in cuts:
        seq[:, c:] += 1
    return seq


@pytest.mark.parametrize("chunk", [16, 40, 64])
@pytest.mark.parametrize("use_seq", [False, True])
def test_torch_tiled_shapes(chunk, use_seq):
    """Gradients of a problem whose chunks span several tiles, against torch
    autograd through the sequential transcription (float64)."""
    rng = np.random.default_rng(40)
    kw = _problem(rng, nb=2, L=150, H=4, P=9, G=2, N=11)
    kw["D"] = rng.standard_normal((4, 9))
    kw["dt_limit"] = (0.02, 1.5)
    # boundaries inside chunks, at a chunk start, and one position apart
    seq = _seq_ids(2, 150, [7, 64, 80, 81, 130]) if use_seq else None
    out, pull = vjp(ssd_chunk_scan_combined, chunk_size=chunk, seq_idx=seq,
                    return_final_states=True, **kw)
    ct = random_cotangent(rng, out)
    assert_grads_close(pull(ct), _torch_grads(kw, ct, True, seq_idx=seq), 1e-9)


@pytest.mark.parametrize("fun", [ssd_sequential, ssd_quadratic])
def test_torch_other_layers_tiled(fun):
    """ssd_sequential and ssd_quadratic share the chunked backward (the
    states recomputed in the backward)."""
    rng = np.random.default_rng(41)
    kw = _problem(rng, nb=1, L=130, H=2, P=5, G=1, N=7)
    if fun is ssd_quadratic:
        del kw["initial_states"]
    out, pull = vjp(fun, **kw)
    ct = random_cotangent(rng, out)
    assert_grads_close(pull(ct), _torch_grads(kw, ct, False), 1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocks_of_chunks_agree(monkeypatch, dtype):
    """The adjoints held one chunk at a time (one block per chunk), or in
    the blocks of one thread, give the gradients of the whole-sequence
    block bit for bit (a chunk's gradients never depend on the block it is
    in), and those are the transcription's under torch autograd."""
    from zilla_muf import ssd as ssd_module
    monkeypatch.setattr(ssd_module, "running_threads", lambda n: n)
    rng = np.random.default_rng(42)
    kw = _problem(rng, nb=2, L=100, H=4, P=6, G=2, N=5, dtype=dtype)
    seq = _seq_ids(2, 100, [30, 33, 64])
    monkeypatch.setattr(ssd_module, "_BLOCK_BYTES_ONE", 3000)
    got = {}
    for workers in (2, 1):
        out, pull = vjp(ssd_chunk_scan_combined, chunk_size=16, seq_idx=seq,
                        return_final_states=True, workers=workers, **kw)
        if workers == 2:
            ct = random_cotangent(rng, out)
        got[workers] = pull(ct)
    monkeypatch.setattr(ssd_module, "_BLOCK_BYTES", 1)
    got["blocks"] = pull(ct)
    for name, whole in got[2].items():
        np.testing.assert_array_equal(got[1][name], whole, err_msg=name)
        np.testing.assert_array_equal(got["blocks"][name], whole, err_msg=name)
    ref = _torch_grads({k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v)
                        for k, v in kw.items()},
                       tuple(np.asarray(c, np.float64) for c in ct), True,
                       seq_idx=seq)
    assert_grads_close(got[2], ref, 1e-3 if dtype == np.float32 else 1e-9)


@pytest.mark.parametrize("opts", [
    {},
    {"z": True, "D": True},
    {"z": True, "init": True, "seq": True},
    {"D": True, "seq": True, "groups": 1},
    {"z": True, "init": True, "seq": True, "L": 2100},   # blocks of chunks
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_is_the_public_one(opts, dtype):
    """The vjp's forward (which also keeps the chunk states) returns what
    ssd_chunk_scan_combined returns, bit for bit."""
    rng = np.random.default_rng(43)
    G = opts.get("groups", 2)
    L = opts.get("L", 77)
    kw = _problem(rng, nb=2, L=L, H=4, P=5, G=G, N=6, full=False, dtype=dtype)
    kw["dt_softplus"] = True
    if opts.get("z"):
        kw["z"] = rng.standard_normal(kw["x"].shape).astype(dtype)
    if opts.get("D"):
        kw["D"] = rng.standard_normal(4).astype(dtype)
    if opts.get("init"):
        kw["initial_states"] = rng.standard_normal((2, 4, 5, 6)).astype(dtype)
    if opts.get("seq"):
        kw["seq_idx"] = _seq_ids(2, L, [10, 32, 33] + ([1030, 1900] if L > 1024 else []))
    for workers in (1, 2):
        want = ssd_chunk_scan_combined(chunk_size=16, return_final_states=True,
                                       workers=workers, **kw)
        got, _ = vjp(ssd_chunk_scan_combined, chunk_size=16,
                     return_final_states=True, workers=workers, **kw)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("where", ["x", "B", "dt"])
def test_nan_stays_in_its_sequence(where):
    """A NaN in one packed sequence reaches no gradient of another (the
    chunks are cut at the boundaries, as in the forward)."""
    rng = np.random.default_rng(44)
    kw = _problem(rng, nb=1, L=60, H=2, P=3, G=1, N=4)
    seq = _seq_ids(1, 60, [21, 40])               # sequences 0..20, 21..39, 40..59
    kw[where] = kw[where].copy()
    kw[where][0, 30] = np.nan
    out, pull = vjp(ssd_chunk_scan_combined, chunk_size=16, seq_idx=seq,
                    return_final_states=True, **kw)
    g = pull((np.ones_like(out[0]), np.ones_like(out[1])))
    reached = False
    for name in ("x", "dt", "B", "C", "z"):
        v = g[name][0]
        assert np.all(np.isfinite(v[:21])) and np.all(np.isfinite(v[40:])), name
        reached |= bool(np.isnan(v[21:40]).any())
    assert reached                    # the NaN's own sequence does see it
    assert np.all(np.isfinite(g["initial_states"]))
    assert np.all(np.isfinite(g["D"]) | (where == "x"))


@pytest.mark.parametrize("fun", [ssd_chunk_scan_combined, ssd_sequential])
def test_pullback_called_twice(fun):
    """The first call writes z's gradient over the kept pre-gate output; a
    second call forms that output again and gives the same gradients."""
    rng = np.random.default_rng(45)
    kw = _problem(rng, nb=1, L=40, H=2, P=3, G=1, N=4)
    out, pull = vjp(fun, chunk_size=16, **kw)
    ct = random_cotangent(rng, out)
    first = pull(ct)
    second = pull(ct)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    assert_grads_close(first, _torch_grads(kw, ct, False), 1e-9)


def test_states_alone_in_blocks():
    """On one thread the chunk states are formed in blocks of about 1024
    positions; without the output (ssd_sequential's backward) as with it
    (ssd_chunk_scan_combined's forward) they give the same gradients."""
    rng = np.random.default_rng(46)
    kw = _problem(rng, nb=1, L=2100, H=2, P=3, G=1, N=4)
    seq = _seq_ids(1, 2100, [500, 1024, 1500])
    ct = rng.standard_normal((1, 2100, 2, 3))
    ct_last = rng.standard_normal((1, 2, 3, 4))
    got = {}
    for fun in (ssd_chunk_scan_combined, ssd_sequential):
        out, pull = vjp(fun, chunk_size=16, seq_idx=seq, return_final_states=True,
                        workers=1, **kw)
        got[fun] = pull((ct, ct_last))
    assert_grads_close(got[ssd_sequential], got[ssd_chunk_scan_combined], 1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arrays_on_page_boundaries(monkeypatch, dtype):
    """Outputs and kept states placed at (here shrunk) page boundaries:
    the same gradients, against torch autograd of the transcription, in
    C-contiguous writeable arrays of the arguments' shapes."""
    from zilla_muf import ssd as ssd_module
    monkeypatch.setattr(ssd_module, "_HUGE", 256)
    rng = np.random.default_rng(43)
    kw = _problem(rng, nb=2, L=70, H=4, P=6, G=2, N=5)
    seq = _seq_ids(2, 70, [20, 41])
    out, pull = vjp(ssd_chunk_scan_combined, chunk_size=16, seq_idx=seq,
                    return_final_states=True, workers=2,
                    **{k: (v.astype(dtype) if isinstance(v, np.ndarray) else v)
                       for k, v in kw.items()})
    ct = random_cotangent(rng, out)
    got = pull(ct)
    ref = _torch_grads(kw, tuple(np.asarray(c, np.float64) for c in ct), True,
                       seq_idx=seq)
    assert_grads_close(got, ref, 1e-3 if dtype == np.float32 else 1e-9)
    for k, g in got.items():
        assert g.shape == np.shape(kw[k]) and g.dtype == dtype
        assert g.flags.c_contiguous and g.flags.writeable
    for name in ("x", "z"):
        assert got[name].ctypes.data % 256 == 0


@pytest.mark.parametrize("fun", [ssd_chunk_scan_combined, ssd_sequential, ssd_quadratic])
@pytest.mark.parametrize("shape", [dict(N=0), dict(L=0), dict(P=0)])
def test_empty_axes(fun, shape):
    # an empty axis leaves only the skip D x, the gate and the initial
    # states' pass-through: every gradient against torch's, shapes as given
    rng = np.random.default_rng(11)
    kw = _problem(rng, **shape)
    kw["z"].reshape(-1)[:2] = [-np.inf, 50.0] if kw["z"].size else []
    last = fun is not ssd_quadratic
    if not last:
        del kw["initial_states"]
    y, pull = vjp(fun, **kw, **({"return_final_states": True} if last else {}))
    ct = ((random_cotangent(rng, y[0]), random_cotangent(rng, y[1])) if last
          else random_cotangent(rng, y))
    got = pull(ct)
    # torch's silu(-inf) is NaN: its oracle takes the gate at -60, whose
    # SiLU and derivative are below 1e-24
    kw["z"] = np.maximum(kw["z"], -60.0)
    want = _torch_grads(kw, ct, last)
    assert set(got) == set(want)
    assert_grads_close(got, want, 1e-12)
