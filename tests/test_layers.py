"""Whole layers in examples/, built from zilla_muf calls, against transformers.

The examples are scripts, not part of the package: they are loaded by path
from the checkout (the tests skip when examples/ is absent, e.g. when the
suite runs against an installed wheel). The comparisons with transformers'
mixers build tiny random configurations in code (no downloads) and run their
CPU torch path; they skip when torch or transformers is not installed.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    """Import examples/<name>.py as a module, or skip."""
    path = EXAMPLES / f"{name}.py"
    if not path.exists():
        pytest.skip(f"needs {path} (a source checkout)")
    modname = f"_zilla_muf_example_{name}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[modname]
        raise
    return mod


def _rel_err(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _torch():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    torch.set_num_threads(1)
    return torch


def _randomise(module, torch, seed):
    """Replace every parameter by random values of a sensible size."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.rand(p.shape, generator=gen, dtype=p.dtype)
            if name.endswith("A_log"):
                p.copy_(torch.log(0.5 + 4 * r))
            elif name.endswith("dt_bias") or name.endswith("dt_proj.bias"):
                p.copy_(-4 + 3 * r)              # softplus -> steps 0.02 .. 0.3
            elif name.endswith("norm.weight"):
                p.copy_(0.5 + r)
            else:
                fan_in = p.shape[-1] if p.dim() > 1 else 1
                p.copy_((2 * r - 1) / np.sqrt(fan_in))


def _numpy_state_dict(module):
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------
# Mamba-1
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mamba1_prefill_then_decode_equals_forward(dtype):
    m1 = load_example("mamba1_layer")
    w = m1.Mamba1Weights.random(d_model=24, d_state=8, d_conv=4, seed=3,
                                dtype=dtype)
    rng = np.random.default_rng(5)
    hidden = rng.standard_normal((2, 19, 24)).astype(dtype)
    full, conv_state, ssm_state = m1.forward(w, hidden)
    assert full.shape == (2, 19, 24) and full.dtype == dtype
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for n_prefill in (1, 2, 7):
        dec, cs, ss = m1.prefill_then_decode(w, hidden, n_prefill)
        assert _rel_err(dec, full) < tol
        assert _rel_err(cs, conv_state) < tol
        assert _rel_err(ss, ssm_state) < tol
    # from empty states, decoding every token
    cs, ss = m1.empty_states(w, 2)
    outs = [m1.step(w, hidden[:, t], cs, ss) for t in range(19)]
    assert _rel_err(np.stack(outs, 1), full) < tol
    # two forward calls carrying the states equal one
    a, cs, ss = m1.forward(w, hidden[:, :11])
    b, _, _ = m1.forward(w, hidden[:, 11:], conv_state=cs, ssm_state=ss)
    assert _rel_err(np.concatenate([a, b], 1), full) < tol


@pytest.mark.parametrize("hidden_size,state_size,conv_kernel,seqlen",
                         [(16, 8, 4, 13), (32, 16, 3, 40), (24, 4, 5, 2)])
def test_mamba1_matches_transformers(hidden_size, state_size, conv_kernel, seqlen):
    torch = _torch()
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    m1 = load_example("mamba1_layer")
    config = MambaConfig(hidden_size=hidden_size, state_size=state_size,
                         num_hidden_layers=1, conv_kernel=conv_kernel,
                         expand=2, use_conv_bias=True, use_bias=False,
                         vocab_size=16)
    mixer = MambaMixer(config, layer_idx=0).eval()
    _randomise(mixer, torch, seed=hidden_size + seqlen)
    rng = np.random.default_rng(seqlen)
    hidden = rng.standard_normal((2, seqlen, hidden_size)).astype(np.float32)
    with torch.no_grad():
        expected = mixer(torch.from_numpy(hidden)).numpy()

    w = m1.Mamba1Weights.from_state_dict(_numpy_state_dict(mixer))
    out, _, _ = m1.forward(w, hidden, workers=2)
    assert out.dtype == np.float32
    assert _rel_err(out, expected) < 1e-4
    dec, _, _ = m1.prefill_then_decode(w, hidden, max(1, seqlen // 2))
    assert _rel_err(dec, expected) < 1e-4


# ---------------------------------------------------------------------------
# Mamba-2
# ---------------------------------------------------------------------------

def _mamba2():
    pytest.importorskip("zilla_muf.ssd")
    return load_example("mamba2_layer")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_groups", [1, 2])
def test_mamba2_prefill_then_decode_equals_forward(dtype, n_groups):
    m2 = _mamba2()
    w = m2.Mamba2Weights.random(d_model=32, d_state=8, head_dim=8,
                                n_groups=n_groups, seed=4, dtype=dtype)
    w.chunk_size = 8
    rng = np.random.default_rng(6)
    hidden = rng.standard_normal((2, 21, 32)).astype(dtype)
    full, conv_state, ssm_state = m2.forward(w, hidden)
    assert full.shape == (2, 21, 32) and full.dtype == dtype
    tol = 5e-5 if dtype == np.float32 else 1e-11
    for n_prefill in (1, 8, 13):
        dec, cs, ss = m2.prefill_then_decode(w, hidden, n_prefill)
        assert _rel_err(dec, full) < tol
        assert _rel_err(cs, conv_state) < tol
        assert _rel_err(ss, ssm_state) < tol
    cs, ss = m2.empty_states(w, 2)
    outs = [m2.step(w, hidden[:, t], cs, ss) for t in range(21)]
    assert _rel_err(np.stack(outs, 1), full) < tol
    a, cs, ss = m2.forward(w, hidden[:, :9])
    b, _, _ = m2.forward(w, hidden[:, 9:], conv_state=cs, ssm_state=ss)
    assert _rel_err(np.concatenate([a, b], 1), full) < tol


@pytest.mark.parametrize("hidden_size,state_size,head_dim,n_groups,chunk,seqlen",
                         [(32, 8, 8, 1, 8, 20), (48, 16, 16, 2, 16, 37),
                          (16, 4, 4, 4, 4, 3)])
def test_mamba2_matches_transformers(hidden_size, state_size, head_dim, n_groups,
                                     chunk, seqlen):
    torch = _torch()
    m2 = _mamba2()
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    config = Mamba2Config(hidden_size=hidden_size, state_size=state_size,
                          expand=2, head_dim=head_dim,
                          num_heads=2 * hidden_size // head_dim,
                          n_groups=n_groups, conv_kernel=4, chunk_size=chunk,
                          num_hidden_layers=1, vocab_size=16, use_bias=False,
                          use_conv_bias=True)
    mixer = Mamba2Mixer(config, layer_idx=0).eval()
    _randomise(mixer, torch, seed=hidden_size + seqlen)
    rng = np.random.default_rng(seqlen)
    hidden = rng.standard_normal((2, seqlen, hidden_size)).astype(np.float32)
    with torch.no_grad():
        expected = mixer(torch.from_numpy(hidden)).numpy()

    w = m2.Mamba2Weights.from_state_dict(
        _numpy_state_dict(mixer), n_groups=n_groups, head_dim=head_dim,
        eps=config.layer_norm_epsilon, chunk_size=chunk,
        dt_limit=config.time_step_limit)
    out, _, _ = m2.forward(w, hidden, workers=2)
    assert out.dtype == np.float32
    assert _rel_err(out, expected) < 2e-4
    dec, _, _ = m2.prefill_then_decode(w, hidden, max(1, seqlen // 2))
    assert _rel_err(dec, expected) < 2e-4
