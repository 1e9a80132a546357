"""PyTorch CPU baseline: mamba_ssm's minimal SSD reference.

A port (plain torch, no einops) of the pure-PyTorch listing that
``mamba_ssm`` ships as ``ssd_minimal_discrete`` (Mamba-2 paper, listing 1):
``segsum`` by a masked cumulative sum, ``exp``, and the four einsum stages
(diagonal blocks, chunk states, inter-chunk recurrence, state -> output).
The chunk length is a parameter. This is what a user without the Triton
kernels (e.g. on a CPU) would run.
"""

import torch
import torch.nn.functional as F


def segsum(x):
    """Stable segment sum: out[..., i, j] = sum_{t=j+1..i} x[..., t], -inf above."""
    T = x.size(-1)
    x = x[..., None].expand(*x.shape, T)                       # ... d -> ... d e
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1)
    x = x.masked_fill(~mask, 0)
    x_segsum = torch.cumsum(x, dim=-2)
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=0)
    return x_segsum.masked_fill(~mask, -torch.inf)


def _chunks(t, block_len):
    """b (c l) ... -> b c l ..."""
    b, L = t.shape[:2]
    return t.reshape(b, L // block_len, block_len, *t.shape[2:])


def ssd_minimal_discrete(X, A, B, C, block_len, initial_states=None):
    """mamba_ssm's reference.

    X (batch, length, n_heads, d_head); A (batch, length, n_heads);
    B, C (batch, length, n_heads, d_state). Returns (Y, final_state).
    """
    assert X.dtype == A.dtype == B.dtype == C.dtype
    assert X.shape[1] % block_len == 0
    X, A, B, C = (_chunks(t, block_len) for t in (X, A, B, C))
    A = A.permute(0, 3, 1, 2)                                 # b c l h -> b h c l
    A_cumsum = torch.cumsum(A, dim=-1)

    # 1. intra-chunk output (diagonal blocks)
    L = torch.exp(segsum(A))
    Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, L, X)

    # 2. state of each chunk
    decay_states = torch.exp(A_cumsum[:, :, :, -1:] - A_cumsum)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_states, X)

    # 3. inter-chunk recurrence
    if initial_states is None:
        initial_states = torch.zeros_like(states[:, :1])
    states = torch.cat([initial_states, states], dim=1)
    decay_chunk = torch.exp(segsum(F.pad(A_cumsum[:, :, :, -1], (1, 0))))
    new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final_state = new_states[:, :-1], new_states[:, -1]

    # 4. state -> output per chunk
    state_decay_out = torch.exp(A_cumsum)
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states, state_decay_out)

    Y = (Y_diag + Y_off).reshape(X.shape[0], -1, *Y_diag.shape[3:])
    return Y, final_state


def ssd_layer(x, dt, A, B, C, block_len, *, dt_bias=None, dt_softplus=False):
    """The Mamba-2 layer on top of the reference, as mamba_ssm's tests call it.

    x (b, l, h, p), dt (b, l, h), A (h,), B and C (b, l, g, n) with groups
    repeated to heads; returns (y, final_state).
    """
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    h, g = x.shape[2], B.shape[2]
    B = B.repeat_interleave(h // g, dim=2)
    C = C.repeat_interleave(h // g, dim=2)
    return ssd_minimal_discrete(x * dt[..., None], A * dt, B, C, block_len)
