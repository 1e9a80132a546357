"""A Mamba-1 mixer layer from zilla_muf kernels and NumPy matmuls.

The layer of Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces" (2023), as mamba_ssm's ``Mamba`` and transformers'
``MambaMixer`` compute it::

    x, z   = split(in_proj(hidden))                  # (batch, d_inner, L) each
    x      = silu(causal_conv1d(x))                  # depthwise, width d_conv
    dt, B, C = split(x_proj(x))                      # dt_rank, d_state, d_state
    dt     = dt_proj.weight @ dt                     # bias added in the scan
    y      = selective_scan(x, dt, -exp(A_log), B, C, D, z,
                            delta_bias=dt_proj.bias, delta_softplus=True)
    out    = out_proj(y)

:func:`forward` runs a whole sequence (and returns the states that continue
it); :func:`step` decodes one token, advancing the convolution state (with
:func:`zilla_muf.causal_conv1d_update`) and the SSM state (with
:func:`zilla_muf.selective_scan_update`, the last step of
:func:`zilla_muf.selective_scan` from that state) in place;
:func:`prefill_then_decode` chains them. Decoding token by token gives the
outputs of the whole-sequence forward pass.

Run ``python examples/mamba1_layer.py`` for a demonstration with random
weights.
"""

from dataclasses import dataclass

import numpy as np

from zilla_muf import (
    causal_conv1d,
    causal_conv1d_update,
    selective_scan,
    selective_scan_update,
)


@dataclass
class Mamba1Weights:
    """The parameters of one mixer, with mamba_ssm's names and shapes."""

    in_proj_weight: np.ndarray          # (2 * d_inner, d_model)
    conv1d_weight: np.ndarray           # (d_inner, d_conv)
    x_proj_weight: np.ndarray           # (dt_rank + 2 * d_state, d_inner)
    dt_proj_weight: np.ndarray          # (d_inner, dt_rank)
    dt_proj_bias: np.ndarray            # (d_inner,)
    A_log: np.ndarray                   # (d_inner, d_state)
    D: np.ndarray                       # (d_inner,)
    out_proj_weight: np.ndarray         # (d_model, d_inner)
    conv1d_bias: np.ndarray | None = None
    in_proj_bias: np.ndarray | None = None
    out_proj_bias: np.ndarray | None = None

    @property
    def d_inner(self):
        return self.A_log.shape[0]

    @property
    def d_state(self):
        return self.A_log.shape[1]

    @property
    def dt_rank(self):
        return self.dt_proj_weight.shape[1]

    @classmethod
    def from_state_dict(cls, sd):
        """From a mixer's ``state_dict`` as NumPy arrays (mamba_ssm /
        transformers names: ``in_proj.weight``, ``conv1d.weight``, ...)."""
        def get(name):
            v = sd.get(name)
            return None if v is None else np.asarray(v)

        conv = get("conv1d.weight")
        return cls(
            in_proj_weight=get("in_proj.weight"),
            conv1d_weight=conv.reshape(conv.shape[0], conv.shape[-1]),
            x_proj_weight=get("x_proj.weight"),
            dt_proj_weight=get("dt_proj.weight"),
            dt_proj_bias=get("dt_proj.bias"),
            A_log=get("A_log"),
            D=get("D"),
            out_proj_weight=get("out_proj.weight"),
            conv1d_bias=get("conv1d.bias"),
            in_proj_bias=get("in_proj.bias"),
            out_proj_bias=get("out_proj.bias"),
        )

    @classmethod
    def random(cls, d_model, d_state=16, d_conv=4, expand=2, dt_rank=None,
               seed=0, dtype=np.float32):
        """Random weights initialised as mamba_ssm does (S4D-real A)."""
        rng = np.random.default_rng(seed)
        d_inner = expand * d_model
        dt_rank = dt_rank or -(-d_model // 16)

        def lin(n_out, n_in):
            return rng.uniform(-1, 1, (n_out, n_in)) / np.sqrt(n_in)

        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), d_inner))
        return cls(
            in_proj_weight=lin(2 * d_inner, d_model).astype(dtype),
            conv1d_weight=lin(d_inner, d_conv).astype(dtype),
            conv1d_bias=rng.uniform(-0.5, 0.5, d_inner).astype(dtype),
            x_proj_weight=lin(dt_rank + 2 * d_state, d_inner).astype(dtype),
            dt_proj_weight=(rng.uniform(-1, 1, (d_inner, dt_rank))
                            * dt_rank ** -0.5).astype(dtype),
            dt_proj_bias=(dt + np.log(-np.expm1(-dt))).astype(dtype),
            A_log=np.log(np.tile(np.arange(1, d_state + 1), (d_inner, 1))).astype(dtype),
            D=np.ones(d_inner, dtype),
            out_proj_weight=lin(d_model, d_inner).astype(dtype),
        )


def _linear(x, weight, bias=None):
    y = x @ weight.T
    return y if bias is None else y + bias


def _ssm_inputs(w, x):
    """dt (batch, d_inner, L), B and C (batch, d_state, L) from x (batch, d_inner, L)."""
    x_dbl = np.swapaxes(x, 1, 2) @ w.x_proj_weight.T      # (batch, L, R + 2N)
    R, N = w.dt_rank, w.d_state
    dt = x_dbl[..., :R] @ w.dt_proj_weight.T              # (batch, L, d_inner)
    B = x_dbl[..., R:R + N]
    C = x_dbl[..., R + N:]
    return (np.swapaxes(dt, 1, 2), np.swapaxes(B, 1, 2), np.swapaxes(C, 1, 2))


def forward(w, hidden, *, conv_state=None, ssm_state=None, workers=None):
    """The mixer on a whole sequence.

    Parameters
    ----------
    w : Mamba1Weights
    hidden : ndarray, (batch, seqlen, d_model)
    conv_state, ssm_state : ndarray, optional
        States from an earlier call (continue a sequence): (batch, d_inner,
        d_conv - 1) and (batch, d_inner, d_state). Default zeros.

    Returns
    -------
    out : ndarray, (batch, seqlen, d_model)
    conv_state, ssm_state : ndarray
        The states after the last token, for :func:`step` or another call.
    """
    xz = np.swapaxes(_linear(hidden, w.in_proj_weight, w.in_proj_bias), 1, 2)
    x, z = xz[:, :w.d_inner], xz[:, w.d_inner:]
    x, conv_state = causal_conv1d(x, w.conv1d_weight, w.conv1d_bias,
                                  activation="silu", initial_states=conv_state,
                                  return_final_states=True, workers=workers)
    dt, B, C = _ssm_inputs(w, x)
    A = -np.exp(w.A_log)
    y, ssm_state = selective_scan(x, dt, A, B, C, D=w.D, z=z,
                                  delta_bias=w.dt_proj_bias, delta_softplus=True,
                                  return_last_state=True, initial_state=ssm_state,
                                  workers=workers)
    out = _linear(np.swapaxes(y, 1, 2), w.out_proj_weight, w.out_proj_bias)
    return out, conv_state, ssm_state


def step(w, hidden_t, conv_state, ssm_state, *, workers=None):
    """Decode one token; `conv_state` and `ssm_state` advance in place.

    hidden_t is (batch, d_model); returns (batch, d_model).
    """
    xz = _linear(hidden_t, w.in_proj_weight, w.in_proj_bias)   # (batch, 2 d_inner)
    x, z = xz[:, :w.d_inner], xz[:, w.d_inner:]
    x = causal_conv1d_update(x, conv_state, w.conv1d_weight, w.conv1d_bias,
                             activation="silu")
    dt, B, C = _ssm_inputs(w, x[:, :, None])
    A = -np.exp(w.A_log)
    y = selective_scan_update(ssm_state, x, dt[:, :, 0], A, B[:, :, 0],
                              C[:, :, 0], D=w.D, z=z, dt_bias=w.dt_proj_bias,
                              dt_softplus=True)
    return _linear(y, w.out_proj_weight, w.out_proj_bias)


def empty_states(w, batch, dtype=None):
    """Zero convolution and SSM states for `batch` sequences."""
    dtype = dtype or w.A_log.dtype
    return (np.zeros((batch, w.d_inner, w.conv1d_weight.shape[1] - 1), dtype),
            np.zeros((batch, w.d_inner, w.d_state), dtype))


def prefill_then_decode(w, hidden, n_prefill, *, workers=None):
    """Run the first `n_prefill` tokens at once, then the rest one by one.

    Returns the outputs of every token, (batch, seqlen, d_model), and the
    final states.
    """
    out, conv_state, ssm_state = forward(w, hidden[:, :n_prefill], workers=workers)
    outs = [out]
    for t in range(n_prefill, hidden.shape[1]):
        outs.append(step(w, hidden[:, t], conv_state, ssm_state,
                         workers=workers)[:, None])
    return np.concatenate(outs, axis=1), conv_state, ssm_state


if __name__ == "__main__":
    w = Mamba1Weights.random(d_model=64)
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((2, 40, 64)).astype(np.float32)
    full, _, _ = forward(w, hidden)
    dec, _, _ = prefill_then_decode(w, hidden, n_prefill=16)
    print("output", full.shape, full.dtype)
    print("max |prefill+decode - forward| =", float(np.max(np.abs(dec - full))))
