"""PyTorch front end: mamba_ssm's and causal-conv1d's functions on CPU tensors.

The functions here have the names and signatures of ``mamba_ssm`` and
``causal_conv1d``, take CPU tensors, and run zilla_muf's kernels. They are
``torch.library`` custom operators with fake kernels and registered
autograd (the backward runs :func:`zilla_muf.vjp`), so ``torch.autograd``,
``torch.compile`` and ``torch.library.opcheck`` work with them.
:func:`apply_to_mamba2` and :func:`apply_to_mamba` put transformers' Mamba-2
and Mamba models on them.

Requires PyTorch: ``pip install "zilla-muf[torch]"``.
"""

try:
    import torch as _torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without torch only
    raise ImportError(
        "zilla_muf.torch needs PyTorch: pip install \"zilla-muf[torch]\""
    ) from exc

import math

from ._ops import INPLACE, SPLIT_LAYER, call
from ._transformers import apply_to_mamba, apply_to_mamba2

__all__ = [
    "apply_to_mamba",
    "apply_to_mamba2",
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "linear_scan",
    "mamba_chunk_scan_combined",
    "mamba_split_conv1d_scan_combined",
    "rmsnorm_fn",
    "selective_scan_fn",
    "selective_state_update",
]


def _one_or_tuple(outs):
    return outs[0] if len(outs) == 1 else tuple(outs)


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None,
                              dt_bias=None, initial_states=None, seq_idx=None,
                              cu_seqlens=None, dt_softplus=False,
                              dt_limit=(0.0, math.inf), return_final_states=False,
                              return_varlen_states=False):
    """Mamba-2's chunked SSD layer, as ``mamba_ssm``'s function of that name.

    Layouts and results as :func:`zilla_muf.ssd_chunk_scan_combined`: x
    (batch, seqlen, nheads, headdim), dt (batch, seqlen, nheads), A
    (nheads,), B and C (batch, seqlen, ngroups, dstate). Returns ``y``, then
    the final states if `return_final_states`, then the states of every
    packed sequence if `return_varlen_states`. Differentiable in x, dt, A, B,
    C, D, z, dt_bias and initial_states.

    Examples
    --------
    >>> import torch
    >>> from zilla_muf.torch import mamba_chunk_scan_combined
    >>> x = torch.ones(1, 8, 2, 4)
    >>> dt, A = torch.full((1, 8, 2), 0.1), torch.tensor([-1.0, -2.0])
    >>> B = C = torch.ones(1, 8, 1, 3)
    >>> y, state = mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size=4,
    ...                                      return_final_states=True)
    >>> y.shape, state.shape
    (torch.Size([1, 8, 2, 4]), torch.Size([1, 2, 4, 3]))
    """
    lo, hi = dt_limit
    outs = call("ssd_combined", x=x, dt=dt, A=A, B=B, C=C, chunk_size=int(chunk_size),
                D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
                seq_idx=seq_idx, cu_seqlens=cu_seqlens, dt_softplus=bool(dt_softplus),
                dt_limit_lo=float(lo), dt_limit_hi=float(hi),
                return_final_states=bool(return_final_states),
                return_varlen_states=bool(return_varlen_states))
    return _one_or_tuple(outs)


def mamba_split_conv1d_scan_combined(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D,
                                     chunk_size, initial_states=None, seq_idx=None,
                                     dt_limit=(0.0, math.inf),
                                     return_final_states=False, activation="silu",
                                     rmsnorm_weight=None, rmsnorm_eps=1e-6,
                                     outproj_weight=None, outproj_bias=None,
                                     headdim=None, ngroups=1, norm_before_gate=True):
    """A Mamba-2 layer after its input projection, as ``mamba_ssm``'s function.

    `zxbcdt` (batch, seqlen, 2 d_mlp + 2 dim + 2 ngroups dstate + nheads),
    dim = nheads headdim, is split into an optional MLP part (its two
    halves give ``silu(first) * second``, put before the SSM's output), the
    gate z (dim), the convolution's input xBC (dim + 2 ngroups dstate) and
    the step sizes dt (nheads). xBC goes through :func:`causal_conv1d_fn`
    (`conv1d_weight` (dim + 2 ngroups dstate, width), `activation`), is
    split into x, B and C, and :func:`mamba_chunk_scan_combined` runs on
    them with D, `dt_bias`, softplus steps, `dt_limit`, `initial_states` and
    `seq_idx` (`seq_idx` also restarts the convolution). With
    `rmsnorm_weight` (dim,) the output is normalised by :func:`rmsnorm_fn`
    with the gate z, in groups of dim / ngroups, before or after gating as
    `norm_before_gate` says; without it z gates the SSM output directly.
    Last, with `outproj_weight` (out_dim, dim (+ d_mlp)), the output
    projection (and `outproj_bias`). D is (nheads,) (then `headdim` is
    required) or (nheads, headdim); dstate is read from `conv1d_weight`.

    Returns the output (batch, seqlen, out_dim), and the final states
    (batch, nheads, headdim, dstate) if `return_final_states`.
    Differentiable in every tensor argument. The training step's case (no
    MLP part, `seq_idx`, `initial_states` or final states; SiLU; the gated
    norm; float32 or float64) runs as one operator: the convolution reads
    its slice of `zxbcdt` in place, the forward keeps what the backward
    needs (so that the backward runs none of the forward), and the
    backward writes the gradient of `zxbcdt` as one tensor. Other calls
    run each stage as one of this module's operators.

    Examples
    --------
    >>> import torch
    >>> from zilla_muf.torch import mamba_split_conv1d_scan_combined
    >>> nheads, headdim, dstate = 2, 4, 3
    >>> dim = nheads * headdim
    >>> zxbcdt = torch.randn(1, 6, 2 * dim + 2 * dstate + nheads)
    >>> out = mamba_split_conv1d_scan_combined(
    ...     zxbcdt, torch.randn(dim + 2 * dstate, 4), None, torch.zeros(nheads),
    ...     -torch.ones(nheads), torch.ones(nheads), chunk_size=4, headdim=headdim,
    ...     rmsnorm_weight=torch.ones(dim), outproj_weight=torch.randn(5, dim))
    >>> out.shape
    torch.Size([1, 6, 5])
    """
    import torch

    F = torch.nn.functional
    act = _activation(activation)
    for name, t in (("zxbcdt", zxbcdt), ("conv1d_weight", conv1d_weight), ("D", D)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if D.dim() not in (1, 2):
        raise ValueError("`D` must be a tensor of shape (nheads,) or (nheads, headdim)")
    if D.dim() == 2:
        nheads, headdim = D.shape
    elif headdim is None:
        raise ValueError("`headdim` must be given when `D` has shape (nheads,)")
    else:
        nheads, headdim = D.shape[0], int(headdim)
    if isinstance(A, torch.Tensor) and tuple(A.shape) != (nheads,):
        raise ValueError(f"`A` must have shape ({nheads},), got {tuple(A.shape)}")
    ngroups = int(ngroups)
    if ngroups < 1 or nheads % ngroups:
        raise ValueError(f"`ngroups` must divide nheads = {nheads}, got {ngroups}")
    if zxbcdt.dim() != 3:
        raise ValueError(
            f"`zxbcdt` must have shape (batch, seqlen, channels), got {tuple(zxbcdt.shape)}")
    dim = nheads * headdim
    conv_dim = conv1d_weight.shape[0] if conv1d_weight.dim() == 2 else -1
    if conv_dim <= dim or (conv_dim - dim) % (2 * ngroups):
        raise ValueError(
            f"`conv1d_weight` must have shape (dim + 2 ngroups dstate, width) with "
            f"dim = {dim}, ngroups = {ngroups}, got {tuple(conv1d_weight.shape)}")
    dstate = (conv_dim - dim) // (2 * ngroups)
    rest = zxbcdt.shape[-1] - dim - conv_dim - nheads
    if rest < 0 or rest % 2:
        raise ValueError(
            f"`zxbcdt` must have 2 d_mlp + {dim + conv_dim + nheads} channels (z, xBC, "
            f"dt and an optional MLP part), got {zxbcdt.shape[-1]}")
    batch, seqlen = zxbcdt.shape[:2]
    if _one_layer_operator(rest, seq_idx, initial_states, return_final_states, act,
                           rmsnorm_weight, zxbcdt, conv1d_weight, conv1d_bias,
                           dt_bias, A, D):
        y = SPLIT_LAYER(
            zxbcdt=zxbcdt, conv1d_weight=conv1d_weight, conv1d_bias=conv1d_bias,
            dt_bias=dt_bias, A=A, D=D, rmsnorm_weight=rmsnorm_weight,
            chunk_size=int(chunk_size), headdim=headdim, ngroups=ngroups,
            eps=float(rmsnorm_eps), norm_before_gate=bool(norm_before_gate),
            dt_limit_lo=float(dt_limit[0]), dt_limit_hi=float(dt_limit[1]))
        if outproj_weight is not None:
            return F.linear(y, outproj_weight, outproj_bias)
        if outproj_bias is not None:
            raise ValueError("`outproj_bias` needs `outproj_weight`")
        return y
    zx0, z, xBC, dt = torch.split(zxbcdt, [rest, dim, conv_dim, nheads], dim=-1)
    xBC = causal_conv1d_fn(xBC.transpose(1, 2), conv1d_weight, conv1d_bias,
                           seq_idx=seq_idx, activation=act).transpose(1, 2)
    x, B, C = torch.split(xBC, [dim, ngroups * dstate, ngroups * dstate], dim=-1)
    res = mamba_chunk_scan_combined(
        x.reshape(batch, seqlen, nheads, headdim), dt, A,
        B.reshape(batch, seqlen, ngroups, dstate),
        C.reshape(batch, seqlen, ngroups, dstate), chunk_size, D=D,
        z=z.reshape(batch, seqlen, nheads, headdim) if rmsnorm_weight is None else None,
        dt_bias=dt_bias, initial_states=initial_states, seq_idx=seq_idx,
        dt_softplus=True, dt_limit=dt_limit, return_final_states=return_final_states)
    y, final = res if return_final_states else (res, None)
    y = y.reshape(batch, seqlen, dim)
    if rmsnorm_weight is not None:
        y = rmsnorm_fn(y, rmsnorm_weight, None, z=z, eps=rmsnorm_eps,
                       group_size=None if ngroups == 1 else dim // ngroups,
                       norm_before_gate=norm_before_gate)
    if rest:
        z0, x0 = zx0.chunk(2, dim=-1)
        y = torch.cat([F.silu(z0) * x0, y], dim=-1)
    if outproj_weight is not None:
        y = F.linear(y, outproj_weight, outproj_bias)
    elif outproj_bias is not None:
        raise ValueError("`outproj_bias` needs `outproj_weight`")
    return (y, final) if return_final_states else y


def _one_layer_operator(rest, seq_idx, initial_states, return_final_states, act,
                        rmsnorm_weight, *tensors):
    """Whether mamba_split_conv1d_scan_combined runs as one operator (the
    training step's case: no MLP part, no packing, no states in or out,
    SiLU, the gated norm, float32/float64 CPU tensors with some data);
    other calls compose the operators of the functions above."""
    import torch

    if (rest or seq_idx is not None or initial_states is not None
            or return_final_states or act != "silu" or rmsnorm_weight is None
            or tensors[0].numel() == 0 or tensors[1].dim() != 2
            or not isinstance(tensors[4], torch.Tensor) or tensors[4].numel() == 0):
        return False
    for t in tensors + (rmsnorm_weight,):
        if t is not None and (not isinstance(t, torch.Tensor) or t.device.type != "cpu"
                              or t.dtype not in (torch.float32, torch.float64)):
            return False
    return True


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                      delta_softplus=False, return_last_state=False):
    """Mamba-1's selective scan, as ``mamba_ssm``'s ``selective_scan_fn``.

    Layouts and results as :func:`zilla_muf.selective_scan`. Returns ``out``,
    and the last state if `return_last_state`. Differentiable in u, delta, A,
    B, C, D, z and delta_bias.

    Examples
    --------
    >>> import torch
    >>> from zilla_muf.torch import selective_scan_fn
    >>> u = torch.ones(1, 2, 5, requires_grad=True)
    >>> delta, A = torch.full((1, 2, 5), 0.5), -torch.ones(2, 3)
    >>> B = C = torch.ones(1, 3, 5)
    >>> out = selective_scan_fn(u, delta, A, B, C)
    >>> out.sum().backward()
    >>> u.grad.shape
    torch.Size([1, 2, 5])
    """
    outs = call("selective_scan", u=u, delta=delta, A=A, B=B, C=C, D=D, z=z,
                delta_bias=delta_bias, delta_softplus=bool(delta_softplus),
                return_last_state=bool(return_last_state))
    return _one_or_tuple(outs)


def _activation(activation):
    if activation in (None, "silu", "swish"):
        return None if activation is None else "silu"
    raise ValueError(
        f"`activation` must be None, 'silu' or 'swish', got {activation!r}"
    )


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None,
                     return_final_states=False, final_states_out=None,
                     activation=None):
    """Depthwise causal convolution, as ``causal_conv1d``'s function.

    x (batch, dim, seqlen), weight (dim, width). With `return_final_states`,
    returns ``(out, final_states)``; `final_states_out`, if given, receives
    the final states in place. Differentiable in x, weight, bias and
    initial_states.

    Examples
    --------
    >>> import torch
    >>> from zilla_muf.torch import causal_conv1d_fn
    >>> x = torch.arange(5.0).reshape(1, 1, 5)
    >>> causal_conv1d_fn(x, torch.tensor([[1.0, 1.0]]))      # x[t-1] + x[t]
    tensor([[[0., 1., 3., 5., 7.]]])
    """
    want_final = bool(return_final_states) or final_states_out is not None
    outs = call("causal_conv1d", x=x, weight=weight, bias=bias, seq_idx=seq_idx,
                initial_states=initial_states, return_final_states=want_final,
                activation=_activation(activation))
    if final_states_out is not None:
        final_states_out.copy_(outs[1])
        outs = (outs[0], final_states_out)
    if not return_final_states:
        return outs[0]
    return tuple(outs)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None,
                         cache_seqlens=None, conv_state_indices=None):
    """One or more decoding steps of the causal convolution, in place.

    As ``causal_conv1d``'s function: x (batch, dim) or (batch, dim, T);
    `conv_state` (batch, dim, state_len >= width - 1) is advanced in place
    (its memory, never a copy); `conv_state_indices` picks its rows.

    Examples
    --------
    >>> import torch
    >>> from zilla_muf.torch import causal_conv1d_update
    >>> state = torch.tensor([[[1.0, 2.0]]])                 # the last width-1 inputs
    >>> causal_conv1d_update(torch.tensor([[3.0]]), state, torch.ones(1, 3))
    tensor([[6.]])
    >>> state
    tensor([[[2., 3.]]])
    """
    if cache_seqlens is not None:
        raise NotImplementedError(
            "`cache_seqlens` (a circular conv_state) is not supported; "
            "pass cache_seqlens=None"
        )
    return INPLACE["conv1d_update"](x, conv_state, weight, bias,
                                    _activation(activation), conv_state_indices)


def _constant_over_last(t, n):
    """Whether `t`'s last `n` dims are broadcast (stride 0) copies."""
    return t is None or all(s == 0 for s in t.stride()[-n:])


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False, state_batch_indices=None):
    """One decoding step of a Mamba / Mamba-2 layer, advancing `state` in place.

    Takes both of ``mamba_ssm``'s layouts: the Mamba-2 one, state (batch,
    nheads, headdim, dstate), x (batch, nheads, headdim), dt (batch, nheads,
    headdim), A (nheads, headdim, dstate), B, C (batch, ngroups, dstate); and
    the Mamba-1 one, state (batch, dim, dstate), x and dt (batch, dim), A
    (dim, dstate). Returns the output, shaped as x.

    Examples
    --------
    >>> import torch
    >>> from zilla_muf.torch import selective_state_update
    >>> state = torch.zeros(1, 2, 3)                          # (batch, dim, dstate)
    >>> x, dt = torch.ones(1, 2), torch.ones(1, 2)
    >>> A, B, C = -torch.ones(2, 3), torch.ones(1, 3), torch.ones(1, 3)
    >>> selective_state_update(state, x, dt, A, B, C)
    tensor([[3., 3.]])
    >>> state
    tensor([[[1., 1., 1.],
             [1., 1., 1.]]])
    """
    if state.dim() == 3:
        return INPLACE["selective_scan_update"](state, x, dt, A, B, C, D, z, dt_bias,
                                                bool(dt_softplus), state_batch_indices)
    if state.dim() != 4:
        raise ValueError(
            f"`state` must have 3 or 4 dimensions, got shape {tuple(state.shape)}"
        )
    if A.dim() == 1:
        return INPLACE["ssd_state_update"](state, x, dt, A, B, C, D, z, dt_bias,
                                           bool(dt_softplus), state_batch_indices)
    if (A.dim() == 3 and _constant_over_last(A, 2) and _constant_over_last(dt, 1)
            and _constant_over_last(dt_bias, 1)):
        # per-head parameters broadcast over (headdim, dstate), as Mamba-2 passes
        return INPLACE["ssd_state_update"](
            state, x, dt[..., 0], A[:, 0, 0], B, C, D, z,
            None if dt_bias is None else dt_bias[:, 0], bool(dt_softplus),
            state_batch_indices)
    # general per-channel parameters: the Mamba-1 step over nheads*headdim channels
    b, h, p, n = state.shape
    flat = state.view(b if state_batch_indices is None else state.shape[0], h * p, n)
    y = INPLACE["selective_scan_update"](
        flat, x.reshape(x.shape[0], h * p), dt.reshape(dt.shape[0], h * p),
        A.reshape(h * p, n), B, C, None if D is None else D.reshape(h * p),
        None if z is None else z.reshape(z.shape[0], h * p),
        None if dt_bias is None else dt_bias.reshape(h * p), bool(dt_softplus),
        state_batch_indices)
    return y.view(x.shape)


def rmsnorm_fn(x, weight, bias, z=None, eps=1e-6, group_size=None,
               norm_before_gate=True):
    """Gated RMS norm, as ``mamba_ssm``'s ``rmsnorm_fn``.

    ``rms_norm(x) * weight (+ bias)``, gated by ``silu(z)`` before or after
    the norm (:func:`zilla_muf.rms_norm`). Differentiable in x, weight, z
    (and bias).

    Examples
    --------
    >>> import torch
    >>> from zilla_muf.torch import rmsnorm_fn
    >>> x = torch.tensor([[3.0, -3.0]])
    >>> rmsnorm_fn(x, torch.ones(2), None, eps=0.0)
    tensor([[ 1., -1.]])
    """
    (y,) = call("rms_norm", x=x, weight=weight, z=z, eps=float(eps),
                group_size=None if group_size is None else int(group_size),
                norm_before_gate=bool(norm_before_gate))
    return y if bias is None else y + bias


def linear_scan(a, b, h0=None, dim=-1, reverse=False):
    """The recurrence ``h_t = a_t h_(t-1) + b_t`` along `dim`, differentiable.

    As :func:`zilla_muf.linear_scan`; `a` and `b` broadcast.

    Examples
    --------
    >>> import torch
    >>> from zilla_muf.torch import linear_scan
    >>> linear_scan(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([1.0, 2.0, 3.0]))
    tensor([1.0000, 2.5000, 4.2500])
    """
    (h,) = call("linear_scan", a=a, b=b, h0=h0, axis=int(dim), reverse=bool(reverse))
    return h

