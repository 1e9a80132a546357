"""ssd_chunk_scan_combined and selective_scan against mamba_ssm's own listings.

mamba_ssm's pure-PyTorch references, ``ssd_minimal_discrete``,
``ssd_chunk_scan_combined_ref`` (the chunked reference of its Triton SSD)
and ``selective_scan_ref``, are loaded at test time from its source release
(downloaded into a cache, see bench/mamba_reference.py): an oracle written
by others, independent of this package. They need torch and einops. A
failed download fails these tests in CI (a skip is a failure there).

``ssd_minimal_discrete`` keeps its input dtype and is compared in float64.
``ssd_chunk_scan_combined_ref`` forms its step sizes in float32 (it casts
``dt`` before the cumulative sum), so it is compared at float32's
tolerance.
``selective_scan_ref`` computes in float32 whatever its inputs, so it gets
float32 inputs and ours the same values in float64; the tolerance is
float32's.
"""

import numpy as np
import pytest

from zilla_muf import selective_scan, ssd_chunk_scan_combined

from conftest import assert_close, load_bench_module


@pytest.fixture(scope="module")
def mamba():
    torch = pytest.importorskip("torch", reason="mamba_ssm's listings need torch")
    pytest.importorskip("einops", reason="mamba_ssm's listings need einops")
    loader = load_bench_module("mamba_reference")
    return torch, loader


def _ssd_inputs(rng, L, heads_groups, b=2, P=5, N=6):
    """x, dt (before dt_bias and softplus), dt_bias, A, B, C."""
    H, G = heads_groups
    return (rng.standard_normal((b, L, H, P)), rng.uniform(-4.0, 0.5, (b, L, H)),
            rng.uniform(-0.5, 0.5, H), -rng.uniform(0.5, 4.0, H),
            rng.standard_normal((b, L, G, N)), rng.standard_normal((b, L, G, N)))


@pytest.mark.parametrize("heads_groups", [(4, 1), (4, 2), (3, 3)])
@pytest.mark.parametrize("chunk", [16, 20])
def test_ssd_matches_ssd_minimal_discrete(mamba, rng, heads_groups, chunk):
    torch, loader = mamba
    x, dt, dt_bias, A, B, C = _ssd_inputs(rng, 48, heads_groups)
    t = [torch.from_numpy(v) for v in (x, dt, A, B, C)]
    # the listing's chunk (16) divides L; ours also takes 20, which does not
    y_ref, s_ref = loader.ssd_layer(*t, 16, dt_bias=torch.from_numpy(dt_bias),
                                    dt_softplus=True)
    assert y_ref.dtype == torch.float64
    y, s = ssd_chunk_scan_combined(x, dt, A, B, C, chunk, dt_bias=dt_bias,
                                   dt_softplus=True, return_final_states=True)
    assert_close(y, y_ref.numpy(), scale=100)
    assert_close(s, s_ref.numpy(), scale=100)


def test_ssd_initial_states_match_ssd_minimal_discrete(mamba, rng):
    torch, loader = mamba
    b, L, H, P, N = 1, 32, 2, 4, 3
    x = rng.standard_normal((b, L, H, P))
    dt = rng.uniform(0.01, 0.3, (b, L, H))
    A = -rng.uniform(0.5, 4.0, H)
    B = rng.standard_normal((b, L, H, N))
    C = rng.standard_normal((b, L, H, N))
    h0 = rng.standard_normal((b, H, P, N))
    listing = loader.ssd_minimal_discrete()
    tx, tdt, tA, tB, tC = (torch.from_numpy(v) for v in (x, dt, A, B, C))
    y_ref, s_ref = listing(tx * tdt[..., None], tA * tdt, tB, tC, 8,
                           initial_states=torch.from_numpy(h0)[:, None])
    y, s = ssd_chunk_scan_combined(x, dt, A, B, C, 8, initial_states=h0,
                                   return_final_states=True)
    assert_close(y, y_ref.numpy(), scale=100)
    assert_close(s, s_ref.numpy(), scale=100)


@pytest.mark.parametrize("heads_groups", [(4, 1), (4, 2)])
@pytest.mark.parametrize("chunk", [16, 20])
def test_ssd_matches_ssd_chunk_scan_combined_ref(mamba, rng, heads_groups, chunk):
    torch, loader = mamba
    x, dt, dt_bias, A, B, C = _ssd_inputs(rng, 64, heads_groups)
    D = rng.standard_normal(heads_groups[0])
    z = rng.standard_normal(x.shape)
    ref = loader.ssd_chunk_scan_combined_ref()
    t = [torch.from_numpy(v) for v in (x, dt, A, B, C)]
    # the listing's chunk must divide L (its chunk scan asserts it); ours
    # also takes 20, which does not
    y_ref = ref(*t, 16, D=torch.from_numpy(D), z=torch.from_numpy(z),
                dt_bias=torch.from_numpy(dt_bias), dt_softplus=True)
    y = ssd_chunk_scan_combined(x, dt, A, B, C, chunk, D=D, z=z, dt_bias=dt_bias,
                                dt_softplus=True)
    scale = np.abs(y_ref.numpy()).max()
    np.testing.assert_allclose(y, y_ref.numpy(), rtol=0, atol=1e-5 * scale)


def _interleave(z):
    """Complex (..., L) -> mamba_ssm's real (..., 2L) with re, im adjacent."""
    return np.stack([z.real, z.imag], axis=-1).reshape(*z.shape[:-1], -1)


@pytest.mark.parametrize("layout", ["constant", "shared", "groups", "complex"])
def test_selective_scan_matches_selective_scan_ref(mamba, rng, layout):
    torch, loader = mamba
    b, d, n, L, g = 2, 6, 4, 37, 3
    f32 = np.float32
    u = rng.standard_normal((b, d, L)).astype(f32)
    delta = rng.uniform(-3.0, 0.5, (b, d, L)).astype(f32)
    delta_bias = rng.uniform(-0.5, 0.5, d).astype(f32)
    D = rng.standard_normal(d).astype(f32)
    z = rng.standard_normal((b, d, L)).astype(f32)
    shape = {"constant": (d, n), "shared": (b, n, L), "groups": (b, g, n, L),
             "complex": (b, n, L)}[layout]
    A = -rng.uniform(0.5, 3.0, (d, n)).astype(f32)
    B = rng.standard_normal(shape).astype(f32)
    C = rng.standard_normal(shape).astype(f32)
    ref_B, ref_C = B, C
    if layout == "complex":
        A = (A + 1j * rng.uniform(-3.0, 3.0, (d, n))).astype(np.complex64)
        B = (B + 1j * rng.standard_normal(shape)).astype(np.complex64)
        C = (C + 1j * rng.standard_normal(shape)).astype(np.complex64)
        ref_B, ref_C = _interleave(B), _interleave(C)
    args = dict(u=u, delta=delta, A=A, B=ref_B, C=ref_C, D=D, z=z, delta_bias=delta_bias)
    out_ref, last_ref = loader.selective_scan_ref()(
        **{k: torch.from_numpy(v) for k, v in args.items()},
        delta_softplus=True, return_last_state=True)
    assert out_ref.dtype == torch.float32
    c128 = np.complex128 if layout == "complex" else np.float64
    out, last = selective_scan(u.astype(np.float64), delta.astype(np.float64),
                               A.astype(c128), B.astype(c128), C.astype(c128),
                               D=D.astype(np.float64), z=z.astype(np.float64),
                               delta_bias=delta_bias.astype(np.float64),
                               delta_softplus=True, return_last_state=True)
    assert out.dtype == np.float64
    assert_close(out, out_ref.numpy(), dtype=np.float32, scale=10)
    assert_close(last, last_ref.numpy(), dtype=np.float32, scale=10)
