"""A PyTorch CPU listing of mamba_ssm's ``selective_scan_ref`` (the baseline).

Written after the reference's shape (mamba_ssm/ops/selective_scan_interface.py):
the discretised decays and inputs are formed for every (batch, dim, seqlen,
dstate) by einsum, then a Python loop runs over time. Like the reference it
computes in float32 whatever the input dtype (float64 stays float64 here, so
that the comparison is like for like) and handles the real-A layouts
(dim, dstate), (batch, dstate, seqlen) and (batch, ngroups, dstate, seqlen).
"""

import torch
import torch.nn.functional as F


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, return_last_state=False):
    """u, delta, z: (batch, dim, L); A: (dim, N); B, C: see module docstring."""
    dtype_in = u.dtype
    u = u.to(torch.promote_types(dtype_in, torch.float32))
    delta = delta.to(u.dtype)
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(u.dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    is_variable_B = B.dim() >= 3
    is_variable_C = C.dim() >= 3
    B = B.to(u.dtype)
    C = C.to(u.dtype)
    x = A.new_zeros((batch, dim, dstate))
    ys = []
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if not is_variable_B:
        deltaB_u = torch.einsum("bdl,dn,bdl->bdln", delta, B, u)
    elif B.dim() == 3:
        deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    else:
        B = B.repeat_interleave(dim // B.shape[1], dim=1)
        deltaB_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    if is_variable_C and C.dim() == 4:
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    last_state = None
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        if not is_variable_C:
            y = torch.einsum("bdn,dn->bd", x, C)
        elif C.dim() == 3:
            y = torch.einsum("bdn,bn->bd", x, C[:, :, i])
        else:
            y = torch.einsum("bdn,bdn->bd", x, C[:, :, :, i])
        if i == u.shape[2] - 1:
            last_state = x
        ys.append(y)
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    out = out.to(dtype=dtype_in)
    return out if not return_last_state else (out, last_state)
