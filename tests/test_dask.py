"""zilla_muf.dask: lazy graphs equal the in-memory functions for every chunking.

Oracles: the in-memory functions of ``zilla_muf`` on the whole NumPy arrays
(each tested against its own independent oracle in its test file), and for
the scan a plain float64 Python loop as well. Laziness is checked with a
scheduler callback that counts the tasks run.
"""

import subprocess
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import zilla_muf  # noqa: E402
import zilla_muf.dask as zd  # noqa: E402
from zilla_muf.dask import _carry  # noqa: E402

from conftest import assert_close  # noqa: E402

SCANS = ["sequential_scan", "chunked_scan", "associative_scan", "linear_scan"]
# (rows per block, steps per block) for a (3, 37) problem: one block, uneven,
# size-1 blocks, and a mix
CHUNKINGS = [(3, 37), (2, 10), (1, 1), (3, (5, 1, 20, 11))]


def _lazy(x, chunks):
    return da.from_array(x, chunks=chunks)


def _close_nonfinite(got, want, scale=1.0):
    """assert_close on the finite entries; the others must be identical."""
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite)
    np.testing.assert_array_equal(got[~finite], want[~finite])
    assert_close(got[finite], want[finite], scale=scale)


class _Counter(dask.callbacks.Callback):
    """Counts the tasks the local schedulers run."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def _pretask(self, key, dsk, state):
        self.count += 1


# ---------------------------------------------------------------------------
# Scans
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fname", SCANS)
@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_matches_in_memory(rng, fname, chunks, reverse):
    a = rng.uniform(0.5, 1.0, (3, 37))
    b = rng.standard_normal((3, 37))
    h0 = rng.standard_normal(3)
    want, want_final = getattr(zilla_muf, fname)(a, b, h0, reverse=reverse,
                                                 return_final=True)
    h, final = getattr(zd, fname)(_lazy(a, chunks), _lazy(b, chunks), h0,
                                  reverse=reverse, return_final=True)
    assert isinstance(h, da.Array) and isinstance(final, da.Array)
    assert h.dtype == want.dtype and final.dtype == want_final.dtype
    assert h.chunks == _lazy(a, chunks).chunks
    assert_close(h.compute(), want)
    assert_close(final.compute(), want_final)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
def test_scan_against_python_loop(rng, dtype):
    a = (rng.uniform(0.5, 1.0, (2, 29)) * np.exp(1j * rng.uniform(0, 1, (2, 29)))
         if np.dtype(dtype).kind == "c" else rng.uniform(0.5, 1.0, (2, 29)))
    a = a.astype(dtype)
    b = rng.standard_normal((2, 29)).astype(dtype)
    want = np.zeros((2, 29), dtype=np.complex128)
    h = np.ones(2, dtype=np.complex128)
    for t in range(29):
        h = a[:, t].astype(np.complex128) * h + b[:, t]
        want[:, t] = h
    out = zd.linear_scan(_lazy(a, (1, 4)), _lazy(b, (2, 7)), 1.0).compute()
    assert out.dtype == np.dtype(dtype)
    assert_close(out, want if np.dtype(dtype).kind == "c" else want.real,
                 dtype=dtype, scale=10)


def test_scan_tree_carry(rng, monkeypatch):
    """Many blocks combine their summaries by a prefix tree: same result."""
    monkeypatch.setattr(_carry, "TREE_MIN_BLOCKS", 3)
    a = rng.uniform(0.8, 1.0, (2, 61))
    b = rng.standard_normal((2, 61))
    for reverse in (False, True):
        want, wf = zilla_muf.sequential_scan(a, b, 0.5, reverse=reverse,
                                             return_final=True)
        h, f = zd.chunked_scan(_lazy(a, (1, 4)), _lazy(b, (2, 3)), 0.5,
                               reverse=reverse, return_final=True)
        assert_close(h.compute(), want)
        assert_close(f.compute(), wf)


@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
def test_scan_long_blocks_and_wider_h0(rng, dtype):
    """Blocks long enough for the split product of the summaries (uneven,
    with a remainder), a float64 h0 over float32 blocks (the summary's
    scratch takes the block's dtype, the carry the result's), against a
    float64 Python loop."""
    n = 2 * 1100 + 700 + 3
    a = rng.uniform(0.998, 1.0, (2, n))
    if np.dtype(dtype).kind == "c":
        a = a * np.exp(1j * rng.uniform(-0.01, 0.01, (2, n)))
    a = a.astype(dtype)
    b = rng.standard_normal((2, n)).astype(dtype)
    h0 = np.array([0.25, -2.0])
    want = np.zeros((2, n), dtype=np.complex128)
    h = h0.astype(np.complex128)
    for t in range(n):
        h = a[:, t].astype(np.complex128) * h + b[:, t]
        want[:, t] = h
    for chunks in ((1, 1100), (2, (700, 1100, 3, 1100))):
        got, final = zd.linear_scan(_lazy(a, chunks), _lazy(b, chunks), h0,
                                    return_final=True)
        assert got.dtype == np.result_type(dtype, np.float64)
        out = got.compute()
        want_ = want if out.dtype.kind == "c" else want.real
        assert_close(out, want_, scale=50)
        assert_close(final.compute(), want_[:, -1], scale=50)


def test_block_product_splits_rows(rng):
    """The summaries' product over a block equals the product taken in
    order, in float64, for lengths around the row split."""
    from zilla_muf.dask._wrappers import _PROD_ROW, _block_product

    for n in (1, _PROD_ROW * 2 - 1, _PROD_ROW * 2, _PROD_ROW * 5 + 17):
        a = rng.uniform(0.99, 1.01, (3, n))
        want = np.ones(3)
        for t in range(n):
            want = want * a[:, t]
        assert_close(_block_product(a, a.shape, np.dtype(np.float64)), want)
        got = _block_product(a[:, :1], a.shape, np.dtype(np.float64))  # broadcast
        assert_close(got, a[:, 0] ** n)


def test_scan_carry_is_one_task(rng):
    """With blocks along the sequence, the incoming states of all blocks
    come from one carry task (not one task per block)."""
    a = _lazy(rng.uniform(0.5, 1.0, (2, 40)), (2, 4))
    b = _lazy(rng.standard_normal((2, 40)), (2, 4))
    h = zd.linear_scan(a, b)
    funcs = [getattr(t[0], "func", t[0]) for t in dict(h.__dask_graph__()).values()
             if isinstance(t, tuple) and callable(t[0])]
    assert funcs.count(_carry._chain) == 1
    assert _carry._apply not in funcs
    assert_close(h.compute(), zilla_muf.linear_scan(a.compute(), b.compute()))


def test_scan_broadcast_axis_and_scalars(rng):
    a = rng.uniform(0.5, 1.0, (37,))
    b = rng.standard_normal((37, 4)).astype(np.float32)
    h0 = rng.standard_normal((4,)).astype(np.float32)
    # broadcast a (37,) against b (37, 4) along axis 0 needs a[:, None]
    want = zilla_muf.sequential_scan(a[:, None].astype(np.float32), b, h0, axis=0)
    got = zd.sequential_scan(_lazy(a[:, None].astype(np.float32), (5, 1)),
                             _lazy(b, (9, 2)), _lazy(h0, 3), axis=0)
    assert got.dtype == np.float32
    assert_close(got.compute(), want)
    # a Python number stays weak: float32 b with a = 0.5 stays float32
    want = zilla_muf.chunked_scan(0.5, b, axis=0)
    got = zd.chunked_scan(0.5, _lazy(b, (6, 4)), axis=0)
    assert got.dtype == want.dtype == np.float32
    assert_close(got.compute(), want)


def test_scan_one_dimensional_and_empty(rng):
    a = rng.uniform(0.5, 1.0, 40)
    b = rng.standard_normal(40)
    h, f = zd.associative_scan(_lazy(a, 7), _lazy(b, 7), 2.0, return_final=True)
    want, wf = zilla_muf.associative_scan(a, b, 2.0, return_final=True)
    assert f.shape == ()
    assert_close(h.compute(), want)
    assert_close(f.compute(), wf)
    e = zd.sequential_scan(da.ones((2, 0)), da.ones((2, 0)))
    assert e.shape == (2, 0) and e.compute().shape == (2, 0)


def test_scan_workers_pass_through(rng):
    a = rng.uniform(0.5, 1.0, (4, 300))
    b = rng.standard_normal((4, 300))
    want = zilla_muf.chunked_scan(a, b)
    got = zd.chunked_scan(_lazy(a, (2, 70)), b, workers=2, chunk_size=16)
    assert_close(got.compute(), want)
    with pytest.raises(ValueError, match="workers"):
        zd.chunked_scan(a, b, workers=0)
    with pytest.raises(ValueError, match="chunk_size"):
        zd.chunked_scan(a, b, chunk_size=0)
    with pytest.raises(ValueError, match="method"):
        zd.linear_scan(a, b, method="fast")


def test_workers_reach_every_block(rng, monkeypatch):
    import zilla_muf.scan
    import zilla_muf.selective

    seen = []
    for module, name in ((zilla_muf.scan, "chunked_scan"),
                         (zilla_muf.selective, "causal_conv1d")):
        original = getattr(module, name)

        def recording(*args, _original=original, **kwargs):
            seen.append(kwargs.get("workers"))
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, recording)
    a = rng.uniform(0.5, 1.0, (2, 50))
    zd.chunked_scan(_lazy(a, (1, 20)), a, workers=2).compute(scheduler="sync")
    x = rng.standard_normal((1, 2, 30))
    zd.causal_conv1d(_lazy(x, (1, 1, 7)), np.ones((2, 3)), workers=2).compute(
        scheduler="sync")
    # 2 rows x (1 first + 1 summary + 2 recomputed) scans; 2 x 5 conv blocks
    # and the one-step probe that checks the conv's arguments at call time
    assert len(seen) == 8 + 10 + 1
    assert set(seen) == {2}


def test_scan_bad_input():
    with pytest.raises(ValueError, match="axis"):
        zd.sequential_scan(da.ones((2, 3)), da.ones((2, 3)), axis=2)
    with pytest.raises(ValueError, match="`a`.*`b`"):
        zd.sequential_scan(da.ones((2, 3)), da.ones((3, 3)))
    with pytest.raises(ValueError, match="h0"):
        zd.sequential_scan(da.ones((2, 3)), da.ones((2, 3)), da.ones(5))
    with pytest.raises(TypeError, match="`b`"):
        zd.sequential_scan(da.ones((2, 3)), np.array([["x"] * 3] * 2))
    x = da.ones(10, chunks=5)
    unknown = x[x > 0]
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        zd.sequential_scan(unknown, unknown)


# ---------------------------------------------------------------------------
# Laziness, dtype and meta
# ---------------------------------------------------------------------------


def _calls(rng):
    x = rng.standard_normal((2, 3, 20))
    a = rng.uniform(0.5, 1.0, (2, 3, 20))
    return [
        lambda: zd.linear_scan(_lazy(a, (1, 3, 6)), _lazy(x, (1, 3, 6)), return_final=True),
        lambda: zd.softmax(_lazy(x, (1, 3, 6))),
        lambda: zd.log_sum_exp(_lazy(x, (1, 3, 6))),
        lambda: zd.logcumsumexp(_lazy(x, (1, 3, 6))),
        lambda: zd.toeplitz_matvec(x[0, 0], _lazy(x, (1, 3, 6))),
        lambda: zd.causal_conv1d(_lazy(x, (1, 3, 6)), np.ones((3, 4)),
                                 return_final_states=True),
        lambda: zd.selective_scan(_lazy(x, (1, 3, 6)), a, -np.ones((3, 2)),
                                  np.ones((3, 2)), np.ones((3, 2)),
                                  return_last_state=True),
    ]


def test_nothing_is_computed_at_call_time(rng):
    counter = _Counter()
    with counter:
        results = [call() for call in _calls(rng)]
    assert counter.count == 0
    for res in results:
        for arr in res if isinstance(res, tuple) else (res,):
            assert isinstance(arr, da.Array)
            assert type(arr._meta) is np.ndarray
            assert arr._meta.dtype == arr.dtype == np.float64
    with counter:
        dask.compute(*results, scheduler="sync")
    assert counter.count > 0


def test_in_memory_functions_reject_dask_arrays():
    x = da.ones((2, 8), chunks=4)
    with pytest.raises(TypeError, match="zilla_muf.dask"):
        zilla_muf.sequential_scan(x, x)
    with pytest.raises(TypeError, match="`x`.*zilla_muf.dask"):
        zilla_muf.softmax(x)
    with pytest.raises(TypeError, match="`signal`.*zilla_muf.dask"):
        zilla_muf.fft_conv(x, np.ones(3))
    xs = np.ones((1, 8, 1, 2))
    with pytest.raises(TypeError, match="`seq_idx`.*zilla_muf.dask"):
        zilla_muf.ssd_chunk_scan_combined(xs, np.ones((1, 8, 1)), -np.ones(1),
                                          np.ones((1, 8, 1, 3)), np.ones((1, 8, 1, 3)),
                                          seq_idx=da.zeros((1, 8), dtype=int))


def test_import_does_not_import_dask():
    code = ("import sys, zilla_muf; "
            "bad = [m for m in ('dask', 'distributed', 'zarr', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_without_dask_names_the_extra():
    code = (
        "import sys\n"
        "sys.modules['dask'] = None\n"
        "sys.modules['dask.array'] = None\n"
        "try:\n"
        "    import zilla_muf.dask\n"
        "except ImportError as exc:\n"
        "    assert 'pip install \"zilla-muf[dask]\"' in str(exc), str(exc)\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------
# Softmax family, rms_norm
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [(3, 37), (2, 10), (1, 1), (3, (5, 1, 20, 11))])
@pytest.mark.parametrize("axis", [0, -1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_family(rng, chunks, axis, dtype):
    x = (rng.standard_normal((3, 37)) * 30).astype(dtype)
    x[1, 4] = -np.inf
    X = _lazy(x, chunks)
    for name in ("softmax", "log_softmax", "logcumsumexp"):
        want = getattr(zilla_muf, name)(x, axis=axis)
        got = getattr(zd, name)(X, axis=axis)
        assert got.dtype == want.dtype and got.chunks == X.chunks
        _close_nonfinite(got.compute(), want, scale=4)
    for keepdims in (False, True):
        want = zilla_muf.log_sum_exp(x, axis=axis, keepdims=keepdims)
        got = zd.log_sum_exp(X, axis=axis, keepdims=keepdims)
        assert got.shape == want.shape and got.dtype == want.dtype
        assert_close(got.compute(), want)


def test_softmax_family_extremes(monkeypatch):
    x = np.array([[-np.inf] * 6, [1e300, 1e300, -1e300, 0, 1, 2],
                  [np.inf, 0, 1, 2, 3, 4], [np.nan, 0, 1, 2, 3, 4]])
    X = _lazy(x, (1, 2))
    assert np.all(zd.log_sum_exp(X).compute()[0] == -np.inf)
    for name in ("softmax", "log_softmax", "log_sum_exp", "logcumsumexp"):
        got = getattr(zd, name)(X).compute()
        want = getattr(zilla_muf, name)(x)
        _close_nonfinite(got, want)
    monkeypatch.setattr(_carry, "TREE_MIN_BLOCKS", 2)  # dask's Blelloch tree
    y = np.random.default_rng(3).standard_normal((2, 50))
    assert_close(zd.logcumsumexp(_lazy(y, (1, 3))).compute(), zilla_muf.logcumsumexp(y))


def test_rms_norm(rng):
    x = rng.standard_normal((5, 4, 12))
    z = rng.standard_normal((5, 4, 12))
    w = rng.standard_normal(12)
    for kw in ({}, {"z": z, "group_size": 4}, {"z": z, "norm_before_gate": False}):
        want = zilla_muf.rms_norm(x, w, eps=1e-5, **kw)
        kw = {k: (_lazy(v, (2, 3, 12)) if isinstance(v, np.ndarray) else v)
              for k, v in kw.items()}
        got = zd.rms_norm(_lazy(x, (1, 2, 12)), _lazy(w, 12), eps=1e-5, **kw)
        assert_close(got.compute(), want)
    with pytest.raises(ValueError, match=r"x.rechunk\(\{2: -1\}\)"):
        zd.rms_norm(_lazy(x, (5, 4, 6)), w)


# ---------------------------------------------------------------------------
# Structured products
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fname", ["toeplitz_matvec", "fft_conv"])
@pytest.mark.parametrize("chunks", [(3, 37), (2, 10), (1, 1), (3, (5, 1, 20, 11))])
@pytest.mark.parametrize("klen", [1, 6, 37, 50])
def test_block_toeplitz(rng, fname, chunks, klen):
    x = rng.standard_normal((3, 37))
    k1 = rng.standard_normal(klen)
    k2 = rng.standard_normal((3, klen))
    for k in (k1, k2):
        if fname == "fft_conv":
            want = zilla_muf.fft_conv(x, k)
            got = zd.fft_conv(_lazy(x, chunks), _lazy(k, 4) if k.ndim == 1 else k)
        else:
            want = zilla_muf.toeplitz_matvec(k, x, method="direct")
            got = zd.toeplitz_matvec(k, _lazy(x, chunks), method="direct")
        assert got.shape == want.shape and got.dtype == want.dtype
        assert_close(got.compute(), want, scale=10)


def test_block_toeplitz_axis_and_complex(rng):
    x = rng.standard_normal((30, 2)) + 1j * rng.standard_normal((30, 2))
    k = rng.standard_normal((12, 1)).astype(np.float32)
    want = zilla_muf.toeplitz_matvec(k, x, axis=0)
    got = zd.toeplitz_matvec(k, _lazy(x, (7, 1)), axis=0)
    assert got.dtype == np.complex128
    assert_close(got.compute(), want, scale=10)


def test_cauchy_and_vandermonde(rng):
    poles = -rng.uniform(0.1, 1, (4, 6)) + 1j * rng.standard_normal((4, 6))
    w = rng.standard_normal((4, 6)) + 1j * rng.standard_normal((4, 6))
    nodes = 1j * rng.standard_normal((4, 9))
    for conj in (False, True):
        want = zilla_muf.cauchy_matvec(nodes, poles, w, conj_pairs=conj)
        got = zd.cauchy_matvec(_lazy(nodes, (3, 4)), _lazy(poles, (2, 4)), w,
                               conj_pairs=conj)
        assert got.chunks[-1] == (4, 4, 1)  # the nodes axis keeps its blocks
        assert_close(got.compute(), want)
        p = np.exp(poles * 0.3)
        want = zilla_muf.vandermonde_matvec(p, w, 17, conj_pairs=conj)
        got = zd.vandermonde_matvec(_lazy(p, (1, 5)), w, 17, conj_pairs=conj)
        assert got.dtype == want.dtype and got.shape == (4, 17)
        assert_close(got.compute(), want)


# ---------------------------------------------------------------------------
# SSD, selective scan, causal convolution
# ---------------------------------------------------------------------------


def _ssd_inputs(rng, nb=2, L=37, H=4, P=3, G=2, N=5):
    return dict(
        x=rng.standard_normal((nb, L, H, P)), dt=rng.uniform(-1, 1, (nb, L, H)),
        A=-rng.uniform(0.5, 2, H), B=rng.standard_normal((nb, L, G, N)),
        C=rng.standard_normal((nb, L, G, N)), D=rng.standard_normal((H, P)),
        z=rng.standard_normal((nb, L, H, P)), dt_bias=rng.uniform(-1, 1, H),
        initial_states=rng.standard_normal((nb, H, P, N)),
        seq_idx=np.sort(rng.integers(0, 3, (nb, L)), axis=1),
    )


# seqlen blocks: one, smaller than and not a multiple of chunk_size 8,
# size 1, uneven
@pytest.mark.parametrize("lchunks", [37, 5, 1, (12, 3, 22), 10])
@pytest.mark.parametrize("with_seq", [False, True])
def test_ssd_chunk_scan_combined(rng, lchunks, with_seq):
    k = _ssd_inputs(rng)
    if not with_seq:
        k["seq_idx"] = None
    want, wf = zilla_muf.ssd_chunk_scan_combined(
        **k, chunk_size=8, dt_softplus=True, dt_limit=(0.01, 2.0),
        return_final_states=True)
    lazy = dict(k)
    lazy["x"] = _lazy(k["x"], (1, lchunks, 4, 3))
    lazy["B"] = _lazy(k["B"], (2, 7, 2, 5))
    y, f = zd.ssd_chunk_scan_combined(**lazy, chunk_size=8, dt_softplus=True,
                                      dt_limit=(0.01, 2.0),
                                      return_final_states=True)
    assert y.dtype == want.dtype and f.shape == wf.shape
    assert_close(y.compute(), want, scale=10)
    assert_close(f.compute(), wf, scale=10)


def test_ssd_float32_default_chunk(rng):
    k = {n: (v.astype(np.float32) if v.dtype.kind == "f" else v)
         for n, v in _ssd_inputs(rng, L=150).items()}
    del k["seq_idx"], k["initial_states"]
    want = zilla_muf.ssd_chunk_scan_combined(**k)
    got = zd.ssd_chunk_scan_combined(**{**k, "x": _lazy(k["x"], (1, 70, 4, 3))})
    assert got.dtype == np.float32
    assert_close(got.compute(), want, scale=10)


def test_ssd_layout_errors(rng):
    k = _ssd_inputs(rng)
    with pytest.raises(ValueError, match=r"B.rechunk\(\{2: -1, 3: -1\}\)"):
        zd.ssd_chunk_scan_combined(**{**k, "B": _lazy(k["B"], (2, 37, 2, 2))})
    with pytest.raises(ValueError, match=r"x.rechunk\(\{2: -1, 3: -1\}\)"):
        zd.ssd_chunk_scan_combined(**{**k, "x": _lazy(k["x"], (2, 37, 1, 3))})
    with pytest.raises(ValueError, match="dt"):
        zd.ssd_chunk_scan_combined(**{**k, "dt": k["dt"][:, :5]})
    with pytest.raises(ValueError, match="chunk_size"):
        zd.ssd_chunk_scan_combined(**k, chunk_size=0)


@pytest.mark.parametrize("bshape", ["shared", "varying", "grouped"])
@pytest.mark.parametrize("chunks", [(2, 6, 37), (1, 2, 7), (2, 6, 1)])
def test_selective_scan(rng, bshape, chunks):
    nb, dim, L, N = 2, 6, 37, 4
    u = rng.standard_normal((nb, dim, L))
    delta = rng.uniform(-1, 1, (nb, dim, L))
    A = -rng.uniform(0.5, 2, (dim, N))
    B = {"shared": rng.standard_normal((dim, N)),
         "varying": rng.standard_normal((nb, N, L)),
         "grouped": rng.standard_normal((nb, 2, N, L))}[bshape]
    C = rng.standard_normal((nb, N, L))
    kw = dict(D=rng.standard_normal(dim), z=rng.standard_normal((nb, dim, L)),
              delta_bias=rng.uniform(-1, 1, dim), delta_softplus=True,
              initial_state=rng.standard_normal((nb, dim, N)))
    want, wl = zilla_muf.selective_scan(u, delta, A, B, C, return_last_state=True, **kw)
    if bshape == "grouped":
        chunks = (chunks[0], dim, chunks[2])
    y, last = zd.selective_scan(_lazy(u, chunks), delta, A, B, _lazy(C, (1, N, 9)),
                                return_last_state=True, **kw)
    assert y.shape == u.shape and y.dtype == want.dtype
    assert_close(y.compute(), want, scale=10)
    assert_close(last.compute(), wl, scale=10)


def test_selective_scan_complex_and_errors(rng):
    nb, dim, L, N = 1, 3, 20, 2
    u = rng.standard_normal((nb, dim, L))
    delta = rng.uniform(0.1, 0.5, (nb, dim, L))
    A = -rng.uniform(0.5, 2, (dim, N)) + 1j * rng.standard_normal((dim, N))
    B = rng.standard_normal((dim, N)) + 1j * rng.standard_normal((dim, N))
    C = rng.standard_normal((nb, N, L))
    want, wl = zilla_muf.selective_scan(u, delta, A, B, C, return_last_state=True)
    y, last = zd.selective_scan(_lazy(u, (1, 2, 6)), delta, A, B, C,
                                return_last_state=True)
    assert y.dtype == want.dtype and last.dtype == wl.dtype
    assert_close(y.compute(), want, scale=10)
    assert_close(last.compute(), wl, scale=10)
    with pytest.raises(ValueError, match=r"A.rechunk\(\{1: -1\}\)"):
        zd.selective_scan(u, delta, _lazy(A, (3, 1)), B, C)
    with pytest.raises(ValueError, match=r"u.rechunk\(\{1: -1\}\)"):
        zd.selective_scan(_lazy(u, (1, 1, 20)), delta, A.real,
                          np.ones((nb, 3, N, L)), C)


@pytest.mark.parametrize("lchunks", [37, 10, 2, 1, (1, 1, 35)])
@pytest.mark.parametrize("with_init", [False, True])
def test_causal_conv1d(rng, lchunks, with_init):
    x = rng.standard_normal((2, 5, 37))
    w = rng.standard_normal((5, 4))
    bias = rng.standard_normal(5)
    init = rng.standard_normal((2, 5, 3)) if with_init else None
    want, wf = zilla_muf.causal_conv1d(x, w, bias, activation="silu",
                                       initial_states=init, return_final_states=True)
    y, f = zd.causal_conv1d(_lazy(x, (1, 2, lchunks)), w, bias, activation="silu",
                            initial_states=init, return_final_states=True)
    assert y.chunks == _lazy(x, (1, 2, lchunks)).chunks
    assert_close(y.compute(), want)
    assert_close(f.compute(), wf)
    with pytest.raises(ValueError, match="activation"):
        zd.causal_conv1d(x, w, activation="relu")


# ---------------------------------------------------------------------------
# Distributed and Zarr
# ---------------------------------------------------------------------------


def test_local_cluster(rng):
    distributed = pytest.importorskip("distributed")
    a = rng.uniform(0.5, 1.0, (4, 200))
    b = rng.standard_normal((4, 200))
    want, wf = zilla_muf.linear_scan(a, b, return_final=True)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        h, f = zd.linear_scan(_lazy(a, (2, 30)), _lazy(b, (2, 30)), return_final=True)
        got, gf = client.compute([h, f], sync=True)
    assert_close(got, want)
    assert_close(gf, wf)


def test_zarr_round_trip(rng, tmp_path):
    pytest.importorskip("zarr")
    a = rng.uniform(0.9, 1.0, 1000).astype(np.float32)
    b = rng.standard_normal(1000).astype(np.float32)
    da.to_zarr(da.from_array(a, chunks=128), str(tmp_path / "a.zarr"))
    da.to_zarr(da.from_array(b, chunks=128), str(tmp_path / "b.zarr"))
    h = zd.linear_scan(da.from_zarr(str(tmp_path / "a.zarr")),
                       da.from_zarr(str(tmp_path / "b.zarr")))
    da.to_zarr(h, str(tmp_path / "h.zarr"))
    got = da.from_zarr(str(tmp_path / "h.zarr")).compute()
    assert got.dtype == np.float32
    assert_close(got, zilla_muf.linear_scan(a, b), scale=10)


def test_docstring_examples():
    import doctest

    from zilla_muf.dask import _wrappers

    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS
                                   | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(_wrappers, "zilla_muf.dask") if t.examples]
    names = {t.name.rsplit(".", 1)[-1] for t in tests}
    assert names >= set(zd.__all__)
    with np.printoptions(legacy=False):
        for t in tests:
            runner.run(t)
    assert runner.summarize(verbose=False).failed == 0
