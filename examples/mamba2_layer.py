"""A Mamba-2 mixer layer from zilla_muf kernels and NumPy matmuls.

The layer of Dao & Gu, "Transformers are SSMs: Generalized Models and
Efficient Algorithms Through Structured State Space Duality" (2024), as
mamba_ssm's ``Mamba2`` and transformers' ``Mamba2Mixer`` compute it::

    z, xBC, dt = split(in_proj(hidden))              # d_inner, conv_dim, nheads
    xBC        = silu(causal_conv1d(xBC))            # depthwise over x, B, C
    x, B, C    = split(xBC)                          # heads x headdim, groups x d_state
    y          = ssd_chunk_scan_combined(x, dt, -exp(A_log), B, C, D=D,
                                         dt_bias=dt_bias, dt_softplus=True)
    y          = rms_norm(y * silu(z)) * norm.weight   # per group of channels
    out        = out_proj(y)

:func:`forward` runs a whole sequence (and returns the states that continue
it); :func:`step` decodes one token with
:func:`zilla_muf.causal_conv1d_update` and
:func:`zilla_muf.selective_state_update`, which advance the states in place;
:func:`prefill_then_decode` chains them. Decoding token by token gives the
outputs of the whole-sequence forward pass.

With ``workers`` > 1, the two projections of :func:`forward` split their
rows between that many Python threads, each calling single-threaded BLAS.
NumPy's own multithreaded BLAS would do the products as fast, but its
threads keep spinning for a while after each product and then compete for
the cores with the OpenMP threads of the zilla_muf kernels that follow
(two thread pools on the same cores); with one pool at a time, the whole
layer runs about 20% faster on a 2-core machine.

Run ``python examples/mamba2_layer.py`` for a demonstration with random
weights.
"""

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from zilla_muf import (
    causal_conv1d,
    causal_conv1d_update,
    rms_norm,
    selective_state_update,
    ssd_chunk_scan_combined,
)


@dataclass
class Mamba2Weights:
    """The parameters of one mixer (mamba_ssm / transformers names) and the
    hyperparameters the weights do not determine."""

    in_proj_weight: np.ndarray      # (2 d_inner + 2 n_groups d_state + nheads, d_model)
    conv1d_weight: np.ndarray       # (conv_dim, d_conv), conv_dim = d_inner + 2 n_groups d_state
    dt_bias: np.ndarray             # (nheads,)
    A_log: np.ndarray               # (nheads,)
    D: np.ndarray                   # (nheads,)
    norm_weight: np.ndarray         # (d_inner,)
    out_proj_weight: np.ndarray     # (d_model, d_inner)
    n_groups: int = 1
    head_dim: int = 64
    eps: float = 1e-5
    chunk_size: int | None = None   # None lets zilla_muf choose
    dt_limit: tuple = (0.0, math.inf)
    conv1d_bias: np.ndarray | None = None
    in_proj_bias: np.ndarray | None = None
    out_proj_bias: np.ndarray | None = None

    @property
    def d_inner(self):
        return self.norm_weight.shape[0]

    @property
    def nheads(self):
        return self.A_log.shape[0]

    @property
    def d_state(self):
        return (self.conv1d_weight.shape[0] - self.d_inner) // (2 * self.n_groups)

    @classmethod
    def from_state_dict(cls, sd, *, n_groups, head_dim, eps=1e-5,
                        chunk_size=None, dt_limit=(0.0, math.inf)):
        """From a mixer's ``state_dict`` as NumPy arrays."""
        def get(name):
            v = sd.get(name)
            return None if v is None else np.asarray(v)

        conv = get("conv1d.weight")
        return cls(
            in_proj_weight=get("in_proj.weight"),
            conv1d_weight=conv.reshape(conv.shape[0], conv.shape[-1]),
            dt_bias=get("dt_bias"),
            A_log=get("A_log"),
            D=get("D"),
            norm_weight=get("norm.weight"),
            out_proj_weight=get("out_proj.weight"),
            n_groups=n_groups, head_dim=head_dim, eps=eps,
            chunk_size=chunk_size, dt_limit=tuple(dt_limit),
            conv1d_bias=get("conv1d.bias"),
            in_proj_bias=get("in_proj.bias"),
            out_proj_bias=get("out_proj.bias"),
        )

    @classmethod
    def random(cls, d_model, d_state=128, d_conv=4, expand=2, head_dim=64,
               n_groups=1, seed=0, dtype=np.float32):
        """Random weights initialised as mamba_ssm does."""
        rng = np.random.default_rng(seed)
        d_inner = expand * d_model
        nheads = d_inner // head_dim
        conv_dim = d_inner + 2 * n_groups * d_state

        def lin(n_out, n_in):
            return (rng.uniform(-1, 1, (n_out, n_in)) / np.sqrt(n_in)).astype(dtype)

        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), nheads))
        return cls(
            in_proj_weight=lin(2 * d_inner + 2 * n_groups * d_state + nheads, d_model),
            conv1d_weight=lin(conv_dim, d_conv),
            conv1d_bias=rng.uniform(-0.5, 0.5, conv_dim).astype(dtype),
            dt_bias=(dt + np.log(-np.expm1(-dt))).astype(dtype),
            A_log=np.log(rng.uniform(1, 16, nheads)).astype(dtype),
            D=np.ones(nheads, dtype),
            norm_weight=np.ones(d_inner, dtype),
            out_proj_weight=lin(d_model, d_inner),
            n_groups=n_groups, head_dim=head_dim,
        )


def _linear(x, weight, bias=None):
    y = x @ weight.T
    return y if bias is None else y + bias


_BLAS = ThreadpoolController()
_POOLS = {}


def _linear_threads(x, weight, bias=None, workers=None):
    """_linear with the rows of `x` split between `workers` threads, each
    calling BLAS with one thread (see the module notes)."""
    n = (os.cpu_count() or 1) if workers == -1 else (workers or 1)
    x2 = x.reshape(-1, x.shape[-1])
    rows = x2.shape[0]
    if n <= 1 or rows < 2 * n:
        return _linear(x, weight, bias)
    pool = _POOLS.get(n)
    if pool is None:
        pool = _POOLS[n] = ThreadPoolExecutor(n)
    out = np.empty((rows, weight.shape[0]), dtype=np.result_type(x2, weight))
    bounds = [rows * i // n for i in range(n + 1)]

    def part(i):
        sl = slice(bounds[i], bounds[i + 1])
        np.matmul(x2[sl], weight.T, out=out[sl])
        if bias is not None:
            out[sl] += bias

    with _BLAS.limit(limits=1, user_api="blas"):
        list(pool.map(part, range(n)))
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _split_in_proj(w, zxbcdt):
    """z, xBC, dt along the last axis."""
    di, cd = w.d_inner, w.conv1d_weight.shape[0]
    return zxbcdt[..., :di], zxbcdt[..., di:di + cd], zxbcdt[..., di + cd:]


def _split_xbc(w, xBC):
    """x (..., nheads, headdim), B and C (..., n_groups, d_state)."""
    di, gn = w.d_inner, w.n_groups * w.d_state
    lead = xBC.shape[:-1]
    x = xBC[..., :di].reshape(*lead, w.nheads, w.head_dim)
    B = xBC[..., di:di + gn].reshape(*lead, w.n_groups, w.d_state)
    C = xBC[..., di + gn:].reshape(*lead, w.n_groups, w.d_state)
    return x, B, C


def _gated_norm(w, y, z, workers=None):
    return rms_norm(y, w.norm_weight, eps=w.eps, z=z,
                    group_size=w.d_inner // w.n_groups, norm_before_gate=False,
                    workers=workers)


def forward(w, hidden, *, conv_state=None, ssm_state=None, workers=None):
    """The mixer on a whole sequence.

    Parameters
    ----------
    w : Mamba2Weights
    hidden : ndarray, (batch, seqlen, d_model)
    conv_state, ssm_state : ndarray, optional
        States from an earlier call: (batch, conv_dim, d_conv - 1) and
        (batch, nheads, headdim, d_state). Default zeros.

    Returns
    -------
    out : ndarray, (batch, seqlen, d_model)
    conv_state, ssm_state : ndarray
        The states after the last token (C-contiguous and writeable, ready
        for :func:`step`).
    """
    batch, seqlen, _ = hidden.shape
    z, xBC, dt = _split_in_proj(
        w, _linear_threads(hidden, w.in_proj_weight, w.in_proj_bias, workers))
    xBC, conv_state = causal_conv1d(np.swapaxes(xBC, 1, 2), w.conv1d_weight,
                                    w.conv1d_bias, activation="silu",
                                    initial_states=conv_state,
                                    return_final_states=True, workers=workers)
    x, B, C = _split_xbc(w, np.swapaxes(xBC, 1, 2))
    A = -np.exp(w.A_log)
    y, ssm_state = ssd_chunk_scan_combined(
        x, dt, A, B, C, w.chunk_size, D=w.D, dt_bias=w.dt_bias,
        initial_states=ssm_state, dt_softplus=True, dt_limit=w.dt_limit,
        return_final_states=True, workers=workers)
    y = _gated_norm(w, y.reshape(batch, seqlen, w.d_inner), z, workers)
    out = _linear_threads(y, w.out_proj_weight, w.out_proj_bias, workers)
    return out, conv_state, np.ascontiguousarray(ssm_state)


def step(w, hidden_t, conv_state, ssm_state):
    """Decode one token; `conv_state` and `ssm_state` advance in place.

    hidden_t is (batch, d_model); returns (batch, d_model).
    """
    batch = hidden_t.shape[0]
    z, xBC, dt = _split_in_proj(w, _linear(hidden_t, w.in_proj_weight, w.in_proj_bias))
    xBC = causal_conv1d_update(xBC, conv_state, w.conv1d_weight, w.conv1d_bias,
                               activation="silu")
    x, B, C = _split_xbc(w, xBC)
    A = -np.exp(w.A_log)
    y = selective_state_update(ssm_state, x, dt, A, B, C, D=w.D,
                               dt_bias=w.dt_bias, dt_softplus=True,
                               dt_limit=w.dt_limit)
    y = _gated_norm(w, y.reshape(batch, w.d_inner), z)
    return _linear(y, w.out_proj_weight, w.out_proj_bias)


def empty_states(w, batch, dtype=None):
    """Zero convolution and SSM states for `batch` sequences."""
    dtype = dtype or w.A_log.dtype
    return (np.zeros((batch, w.conv1d_weight.shape[0], w.conv1d_weight.shape[1] - 1), dtype),
            np.zeros((batch, w.nheads, w.head_dim, w.d_state), dtype))


def prefill_then_decode(w, hidden, n_prefill, *, workers=None):
    """Run the first `n_prefill` tokens at once, then the rest one by one."""
    out, conv_state, ssm_state = forward(w, hidden[:, :n_prefill], workers=workers)
    outs = [out]
    for t in range(n_prefill, hidden.shape[1]):
        outs.append(step(w, hidden[:, t], conv_state, ssm_state)[:, None])
    return np.concatenate(outs, axis=1), conv_state, ssm_state


if __name__ == "__main__":
    w = Mamba2Weights.random(d_model=128, d_state=32, head_dim=32)
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((2, 40, 128)).astype(np.float32)
    full, _, _ = forward(w, hidden)
    dec, _, _ = prefill_then_decode(w, hidden, n_prefill=16)
    print("output", full.shape, full.dtype)
    print("max |prefill+decode - forward| =", float(np.max(np.abs(dec - full))))
