"""zilla_muf.linear_attention against FLA's naive PyTorch references.

The references are loaded at test time from FLA's source release (fetched by
pip into a cache, see bench/fla_reference.py), one file at a time; they need
torch and einops. Without them, or offline, these tests skip and say why.
"""

import numpy as np
import pytest

from zilla_muf.linear_attention import gated_delta_rule, linear_attention

from conftest import assert_close, load_bench_module


@pytest.fixture(scope="session")
def fla():
    torch = pytest.importorskip("torch", reason="FLA's references need torch")
    pytest.importorskip("einops", reason="FLA's references need einops")
    loader = load_bench_module("fla_reference")
    try:
        mods = {name: loader.load(name) for name in loader.FILES}
    except Exception as exc:  # offline, pip failure, a moved file
        pytest.skip(f"FLA's naive references are unavailable: {exc}")
    return torch, mods


def _t(torch, x):
    return None if x is None else torch.from_numpy(np.ascontiguousarray(x))


@pytest.mark.parametrize("T", [64, 100])
def test_simple_gla_matches_fla(fla, rng, T):
    torch, mods = fla
    B, H, K, V = 2, 3, 16, 8
    q, k = (rng.standard_normal((B, T, H, K)).astype(np.float32) for _ in range(2))
    v = rng.standard_normal((B, T, H, V)).astype(np.float32)
    g = -rng.uniform(0.0, 0.3, (B, T, H)).astype(np.float32)
    h0 = rng.standard_normal((B, H, K, V)).astype(np.float32)
    o_ref, S_ref = mods["simple_gla"].naive_chunk_simple_gla(
        *map(lambda x: _t(torch, x), (q, k, v, g)), initial_state=_t(torch, h0.copy()),
        output_final_state=True)
    o_rec, _ = mods["simple_gla"].naive_recurrent_simple_gla(
        *map(lambda x: _t(torch, x), (q, k, v, g)), initial_state=_t(torch, h0.copy()))
    o, S = linear_attention(q, k, v, g, initial_state=h0, output_final_state=True)
    assert_close(o, o_ref.numpy(), scale=20)
    assert_close(o, o_rec.numpy(), scale=20)
    assert_close(S, S_ref.numpy(), scale=20)


def test_gla_per_channel_matches_fla(fla, rng):
    torch, mods = fla
    B, T, H, K, V = 2, 50, 2, 8, 6
    q, k = (rng.standard_normal((B, T, H, K)).astype(np.float32) for _ in range(2))
    v = rng.standard_normal((B, T, H, V)).astype(np.float32)
    gk = -rng.uniform(0.0, 0.3, (B, T, H, K)).astype(np.float32)
    h0 = rng.standard_normal((B, H, K, V)).astype(np.float32)
    o_ref, S_ref = mods["gla"].naive_recurrent_gla(
        *map(lambda x: _t(torch, x), (q, k, v, gk)), initial_state=_t(torch, h0.copy()),
        output_final_state=True)
    o, S = linear_attention(q, k, v, gk, initial_state=h0, output_final_state=True)
    assert_close(o, o_ref.numpy(), scale=20)
    assert_close(S, S_ref.numpy(), scale=20)


@pytest.mark.parametrize("T", [64, 90])
def test_gated_delta_rule_matches_fla(fla, rng, T):
    torch, mods = fla
    B, H, K, V = 2, 2, 16, 8
    q, k = (rng.standard_normal((B, T, H, K)).astype(np.float32) for _ in range(2))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((B, T, H, V)).astype(np.float32)
    g = -rng.uniform(0.0, 0.3, (B, T, H)).astype(np.float32)
    beta = rng.uniform(0.1, 0.9, (B, T, H)).astype(np.float32)
    h0 = rng.standard_normal((B, H, K, V)).astype(np.float32)
    mod = mods["gated_delta_rule"]
    o_ch, S_ch = mod.naive_chunk_gated_delta_rule(
        *map(lambda x: _t(torch, x), (q, k, v, g, beta)),
        initial_state=_t(torch, h0.copy()), output_final_state=True)
    o_rec, S_rec = mod.naive_recurrent_gated_delta_rule(
        *map(lambda x: _t(torch, x), (q, k, v, beta, g)),
        initial_state=_t(torch, h0.copy()), output_final_state=True)
    o, S = gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    assert_close(o, o_ch.numpy(), scale=50)
    assert_close(o, o_rec.numpy(), scale=50)
    assert_close(S, S_rec.numpy(), scale=50)
    assert_close(S, S_ch.numpy(), scale=50)


def test_gated_delta_rule_matches_transformers(fla, rng):
    """transformers' CPU fallback (Qwen3-Next), l2 normalisation inside."""
    torch, _ = fla
    qwen = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next",
                               reason="needs transformers with Qwen3-Next")
    B, T, H, K, V = 1, 70, 2, 16, 8
    q, k = (rng.standard_normal((B, T, H, K)).astype(np.float32) for _ in range(2))
    v = rng.standard_normal((B, T, H, V)).astype(np.float32)
    g = -rng.uniform(0.0, 0.3, (B, T, H)).astype(np.float32)
    beta = rng.uniform(0.1, 0.9, (B, T, H)).astype(np.float32)
    o_ref, S_ref = qwen.torch_chunk_gated_delta_rule(
        *map(lambda x: _t(torch, x), (q, k, v, g, beta)), output_final_state=True,
        use_qk_l2norm_in_kernel=True)
    o, S = gated_delta_rule(q, k, v, g, beta, use_qk_l2norm=True, output_final_state=True)
    assert_close(o, o_ref.numpy(), scale=50)
    assert_close(S, S_ref.numpy(), scale=50)
