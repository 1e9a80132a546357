"""Put transformers' Mamba and Mamba-2 models on zilla_muf's kernels.

transformers (5.x) binds each kernel of its Mamba mixers at import, as a
module-level function decorated with ``use_kernel_func_from_hub_with_fallback``:
the hub kernel if one was requested, else the ``mamba_ssm`` /
``causal_conv1d`` function if that package imports, else a torch listing.
The mixers' ``forward`` looks these functions up in their module at every
call. :func:`apply_to_mamba2` and :func:`apply_to_mamba` rebind those names
(and the gated norm's ``forward``) to functions that send CPU tensors to
zilla_muf and everything else to the function they replace, so models built
before and after the call both run on zilla_muf, forward, backward and
cached generation. The patch is process-wide, as Liger Kernel's
``apply_liger_kernel_to_*`` is.
"""

import functools
import importlib
import weakref

import numpy as np
import torch

from ._ops import _increment_version, _plain_eager, to_numpy

__all__ = ["apply_to_mamba", "apply_to_mamba2"]


def _on_cpu(*tensors):
    return all(t.device.type == "cpu" for t in tensors if isinstance(t, torch.Tensor))


def _fallback(original, ours):
    """`ours` for CPU tensors, `original` for any other device."""
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if _on_cpu(*args, *kwargs.values()):
            return ours(*args, **kwargs)
        return original(*args, **kwargs)

    wrapper.__wrapped_original__ = original
    return wrapper


def _conv_fn(hidden_states, weight, bias=None, activation=None, **kwargs):
    from . import causal_conv1d_fn

    seq_idx = kwargs.get("seq_idx")
    return causal_conv1d_fn(hidden_states, weight, bias, seq_idx=seq_idx,
                            activation=activation)


def _conv_update(hidden_states, conv_state, weight, bias=None, activation=None):
    from . import causal_conv1d_update

    return causal_conv1d_update(hidden_states, conv_state, weight, bias,
                                activation=activation)


def _ssd(hidden_states, dt, A, B, C, chunk_size, D=None, dt_bias=None,
         initial_states=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
         return_final_states=False, z=None, **kwargs):
    from . import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined(
        hidden_states, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
        initial_states=initial_states, seq_idx=kwargs.get("seq_idx"),
        dt_softplus=dt_softplus, dt_limit=tuple(dt_limit),
        return_final_states=return_final_states)


def _split_scan(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size,
                initial_states=None, dt_limit=(0.0, float("inf")),
                return_final_states=False, activation="silu", rmsnorm_weight=None,
                rmsnorm_eps=1e-6, outproj_weight=None, outproj_bias=None,
                headdim=None, ngroups=1, norm_before_gate=True, **kwargs):
    from . import mamba_split_conv1d_scan_combined

    return mamba_split_conv1d_scan_combined(
        zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size,
        initial_states=initial_states, seq_idx=kwargs.get("seq_idx"),
        dt_limit=tuple(dt_limit), return_final_states=return_final_states,
        activation=activation, rmsnorm_weight=rmsnorm_weight,
        rmsnorm_eps=rmsnorm_eps, outproj_weight=outproj_weight,
        outproj_bias=outproj_bias, headdim=headdim, ngroups=ngroups,
        norm_before_gate=norm_before_gate)


def _state_update(state, hidden_states, dt, A, B, C, D=None, dt_bias=None,
                  dt_softplus=False, z=None, **kwargs):
    from . import selective_state_update

    return selective_state_update(state, hidden_states, dt, A, B, C, D=D, z=z,
                                  dt_bias=dt_bias, dt_softplus=dt_softplus)


def _selective_scan(hidden_states, dt, A, B, C, D=None, z=None, delta_bias=None,
                    delta_softplus=False, return_last_state=False, **kwargs):
    from . import selective_scan_fn

    return selective_scan_fn(hidden_states, dt, A, B, C, D=D, z=z,
                             delta_bias=delta_bias, delta_softplus=delta_softplus,
                             return_last_state=return_last_state)


def _gated_norm_forward(original):
    @functools.wraps(original)
    def forward(self, hidden_states, gate=None):
        if not _on_cpu(hidden_states, gate, self.weight):
            return original(self, hidden_states, gate)
        from . import rmsnorm_fn

        group = self.group_size
        return rmsnorm_fn(hidden_states, self.weight, None, z=gate,
                          eps=self.variance_epsilon,
                          group_size=None if group == hidden_states.shape[-1] else group,
                          norm_before_gate=False)

    forward.__wrapped_original__ = original
    return forward


def _decode_states(mixer, hidden_states, cache_params, attention_mask, kwargs):
    """The (conv_state, recurrent_state) of a decoding step that the fused
    step serves, or None.

    Served: one token, cached states already filled, no mask and no extra
    arguments (as ``generate`` calls the mixer), SiLU, float32/float64
    tensors on the CPU in the states' dtype, and no gradient to record
    (eager mode, nothing requiring grad, not tracing); the rest takes the
    mixer's own path.
    """
    if (cache_params is None or attention_mask is not None or kwargs
            or hidden_states.ndim != 3 or hidden_states.shape[1] != 1
            or hidden_states.dtype not in (torch.float32, torch.float64)
            or hidden_states.device.type != "cpu"
            or mixer.activation not in ("silu", "swish")):
        return None
    layer = mixer.layer_idx
    if cache_params.is_recording_past(layer):
        return None
    conv_state = cache_params.get_conv_state(layer, state_idx=0)
    state = cache_params.get_recurrent_state(layer, state_idx=0)
    if conv_state is None or state is None:
        return None
    for s in (conv_state, state):
        if (s.dtype != hidden_states.dtype or s.device.type != "cpu"
                or not s.is_contiguous()):
            return None
    if not _plain_eager((hidden_states, conv_state, state, mixer.in_proj.weight)):
        return None
    if _has_hf_hook(mixer):
        return None  # accelerate's hooks (offloading) run on the mixer's own path
    return conv_state, state


def _has_hf_hook(module):
    """Whether accelerate's hook (the attribute ``_hf_hook``, which it sets
    and deletes as a plain attribute) is on `module` or one inside it: a
    dict lookup per module, no generator of named modules, since every
    decoding step of every layer asks."""
    stack = [module]
    while stack:
        m = stack.pop()
        if "_hf_hook" in m.__dict__:
            return True
        stack.extend(c for c in m._modules.values() if c is not None)
    return False


# mixer -> (the parameters' identities and versions, their prepared arrays)
_STEP_PARAMS = weakref.WeakKeyDictionary()


def _cached_params(mixer, dtype, named, build):
    """The mixer's parameters for its fused step, prepared by `build` (from
    the arrays of the `named` tensors, a dict) once and again only when a
    parameter is replaced or updated in place (its version); None when one
    is not on the CPU."""
    tensors = tuple(named.values())
    key = (dtype,) + tuple(None if t is None else (id(t), t._version, t.data_ptr())
                           for t in tensors)
    hit = _STEP_PARAMS.get(mixer)
    if hit is not None and hit[0] == key:
        return hit[1]
    if not _on_cpu(*tensors):
        return None
    arrays = {name: None if t is None else to_numpy(t, name)
              for name, t in named.items()}
    # as the mixers form it: -exp of the float32 A_log
    arrays["A"] = -np.exp(arrays.pop("A_log").astype(np.float32))
    params = build(arrays, _NUMPY_DTYPES[dtype])
    _STEP_PARAMS[mixer] = (key, params)
    return params


def _step_params(mixer, dtype):
    """The Mamba-2 mixer's parameters for the fused step."""
    from zilla_muf.ssd import _mamba2_step_params

    def build(a, np_dtype):
        return _mamba2_step_params(a["conv1d.weight"][:, 0], a["conv1d.bias"],
                                   a["dt_bias"], a["A"], a["D"], a["norm.weight"],
                                   dtype=np_dtype, headdim=mixer.head_dim)

    return _cached_params(mixer, dtype, {
        "conv1d.weight": mixer.conv1d.weight, "conv1d.bias": mixer.conv1d.bias,
        "dt_bias": mixer.dt_bias, "A_log": mixer.A_log, "D": mixer.D,
        "norm.weight": mixer.norm.weight}, build)


def _mamba_params(mixer, dtype):
    """The Mamba-1 mixer's parameters for the fused step."""
    from zilla_muf.selective import _mamba_step_params

    def build(a, np_dtype):
        return _mamba_step_params(a["conv1d.weight"][:, 0], a["conv1d.bias"],
                                  a["x_proj.weight"], a["dt_proj.weight"],
                                  a["dt_proj.bias"], a["A"], a["D"], dtype=np_dtype)

    return _cached_params(mixer, dtype, {
        "conv1d.weight": mixer.conv1d.weight, "conv1d.bias": mixer.conv1d.bias,
        "x_proj.weight": mixer.x_proj.weight, "dt_proj.weight": mixer.dt_proj.weight,
        "dt_proj.bias": mixer.dt_proj.bias, "A_log": mixer.A_log, "D": mixer.D}, build)


def _project(linear, x):
    """linear(x)[:, 0] for a (batch, 1, features) tensor or array, as an
    ndarray.

    A plain ``nn.Linear`` without hooks, of x's dtype, is applied in NumPy
    (at one token, torch's call costs about twice the product); any other
    module (an adapter, a quantised layer, a hooked one) is called as it is.
    """
    w = linear.weight
    wdt = _NUMPY_DTYPES.get(w.dtype)
    if wdt is not None and w.device.type == "cpu" and _plain_linear(linear):
        xn = x.detach().numpy() if isinstance(x, torch.Tensor) else x
        if xn.dtype == wdt:
            out = xn[:, 0] @ w.detach().numpy().T
            if linear.bias is not None:
                out += linear.bias.detach().numpy()
            return out
    if not isinstance(x, torch.Tensor):
        x = torch.from_numpy(x)
    return to_numpy(linear(x), "projection")[:, 0]


_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def _plain_linear(module):
    """Whether `module` is exactly ``nn.Linear`` and no hook (its own or a
    global one) would run around its call: only then may its product be
    formed outside the module."""
    return (type(module) is torch.nn.Linear and not module._forward_hooks
            and not module._forward_pre_hooks and not _global_module_hooks())


def _global_module_hooks():
    """Whether hooks registered for every module are set."""
    m = torch.nn.modules.module
    return any(getattr(m, name, None) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks",
        "_global_forward_hooks_always_called"))


def _mixer_forward(original):
    """Mamba2Mixer.forward with its decoding step in one fused call.

    A decoding token through the mixer's own path is a dozen small torch
    operations and three kernel calls, each paying its per-call cost; the
    fused step (zilla_muf.ssd._mamba2_mixer_step) runs the convolution's
    update, the state update and the gated norm between the two
    projections in one call.
    """
    @functools.wraps(original)
    def forward(self, hidden_states, cache_params=None, attention_mask=None,
                **kwargs):
        states = _decode_states(self, hidden_states, cache_params, attention_mask,
                                kwargs)
        params = None if states is None else _step_params(self, hidden_states.dtype)
        if params is None:
            return original(self, hidden_states, cache_params=cache_params,
                            attention_mask=attention_mask, **kwargs)
        from zilla_muf.ssd import _mamba2_mixer_step

        conv_state, state = states
        zxbcdt = _project(self.in_proj, hidden_states)
        y = _mamba2_mixer_step(
            zxbcdt, conv_state.numpy(), state.numpy(), params, ngroups=self.n_groups,
            eps=self.norm.variance_epsilon, dt_limit=tuple(self.time_step_limit))
        _increment_version(conv_state)
        _increment_version(state)
        return torch.from_numpy(_project(self.out_proj, y[:, None, :]))[:, None, :]

    forward.__wrapped_original__ = original
    return forward


def _mamba_mixer_forward(original):
    """MambaMixer.forward with its decoding step in one fused call.

    As for Mamba-2 (_mixer_forward): a cached decoding token runs the input
    projection, then zilla_muf.selective._mamba_mixer_step (the
    convolution's update, the projection to dt, B and C, dt's projection,
    the state update with D x and the gate), then the output projection.
    The projection to dt, B and C is taken inside only when it is a plain
    ``nn.Linear`` without a bias or hooks, as transformers builds it;
    anything else takes the mixer's own path.
    """
    @functools.wraps(original)
    def forward(self, hidden_states, cache_params=None, attention_mask=None,
                **kwargs):
        states = _decode_states(self, hidden_states, cache_params, attention_mask,
                                kwargs)
        xp = self.x_proj
        params = None
        if states is not None and _plain_linear(xp) and xp.bias is None:
            params = _mamba_params(self, hidden_states.dtype)
        if params is None:
            return original(self, hidden_states, cache_params=cache_params,
                            attention_mask=attention_mask, **kwargs)
        from zilla_muf.selective import _mamba_mixer_step

        conv_state, state = states
        xz = _project(self.in_proj, hidden_states)
        y = _mamba_mixer_step(xz, conv_state.numpy(), state.numpy(), params)
        _increment_version(conv_state)
        _increment_version(state)
        return torch.from_numpy(_project(self.out_proj, y[:, None, :]))[:, None, :]

    forward.__wrapped_original__ = original
    return forward


def _rms_norm_forward(original):
    """Mamba2RMSNorm.forward (the blocks' norms) on zilla_muf for float32 CPU
    tensors: in its row kernel when no gradient is recorded (inference: a
    decoding token pays torch's half-dozen operations at every layer), else
    as the differentiable ``rmsnorm_fn`` operator (training: one operator
    each way instead of a dozen); anything else keeps the module's own
    path. The module computes in float32 whatever its input's dtype, so
    only float32 is taken."""
    @functools.wraps(original)
    def forward(self, hidden_states):
        w = self.weight
        if (hidden_states.dtype == torch.float32 and w.dtype == torch.float32
                and hidden_states.device.type == "cpu" and w.device.type == "cpu"
                and hidden_states.numel() > 0):
            if not _plain_eager((hidden_states, w)):
                from . import rmsnorm_fn

                return rmsnorm_fn(hidden_states, w, None, eps=self.variance_epsilon)
            from zilla_muf.stable_ops import _rms_norm_rows

            x = hidden_states.detach().contiguous().numpy()
            out = _rms_norm_rows(x.reshape(-1, x.shape[-1]), w.detach().numpy(),
                                 self.variance_epsilon)
            return torch.from_numpy(out.reshape(x.shape))
        return original(self, hidden_states)

    forward.__wrapped_original__ = original
    return forward


def _patch(module, name, ours):
    current = getattr(module, name)
    if hasattr(current, "__wrapped_original__"):
        return  # applied already
    setattr(module, name, _fallback(current, ours))


def _check_model(model, module, classes):
    if model is None:
        return
    allowed = tuple(getattr(module, c) for c in classes)
    if not isinstance(model, allowed):
        names = ", ".join(classes)
        raise TypeError(
            f"`model` must be one of transformers' {names} (or None), "
            f"got {type(model).__name__}"
        )


def apply_to_mamba2(model=None):
    """Run transformers' Mamba-2 models on zilla_muf's kernels.

    Rebinds the causal convolution, its decoding step, the chunked scan, the
    one-token state update, the gated RMS norm and the fused layer of training
    (``mamba2_split_conv1d_scan_combined``, where transformers has it) of
    ``transformers.models.mamba2.modeling_mamba2`` to zilla_muf (for CPU
    tensors; other devices keep the original functions), for every model,
    built already or later. The mixer's ``forward`` is wrapped too: a
    cached decoding token (one token, no mask, no gradient to record, float32
    or float64 on the CPU) goes from the input projection's output to the
    output projection's input in one compiled call (convolution update,
    state update, gated norm); everything else takes the mixer's own path
    on the functions above. The blocks' RMS norm (``Mamba2RMSNorm``) runs
    on zilla_muf for float32 CPU tensors (its row kernel in inference, the
    differentiable ``rmsnorm_fn`` when a gradient is recorded), and as it
    is otherwise.

    Parameters
    ----------
    model : transformers.Mamba2PreTrainedModel or Mamba2Mixer, optional
        Checked to be a Mamba-2 model; the patch itself is process-wide.

    Notes
    -----
    In training (no cache) the mixer then takes its fused path, as it does
    when ``mamba_ssm`` is installed: positions masked by an
    ``attention_mask`` are zeroed before the input projection, not again
    after the convolution as its torch path also does. That differs only
    for padding before a sequence (left padding).
    """
    mod = importlib.import_module("transformers.models.mamba2.modeling_mamba2")
    _check_model(model, mod, ("Mamba2PreTrainedModel", "Mamba2Mixer"))
    _patch(mod, "causal_conv1d_fn", _conv_fn)
    _patch(mod, "causal_conv1d_update", _conv_update)
    _patch(mod, "mamba2_chunk_scan", _ssd)
    _patch(mod, "mamba2_selective_state_update", _state_update)
    if hasattr(mod, "mamba2_split_conv1d_scan_combined"):
        # the fused layer the mixers call in training (transformers >= 5)
        _patch(mod, "mamba2_split_conv1d_scan_combined", _split_scan)
    norm = mod.MambaRMSNormGated
    if not hasattr(norm.forward, "__wrapped_original__"):
        norm.forward = _gated_norm_forward(norm.forward)
    mixer = mod.Mamba2Mixer
    if _increment_version is not None and not hasattr(mixer.forward,
                                                       "__wrapped_original__"):
        mixer.forward = _mixer_forward(mixer.forward)
    block_norm = mod.Mamba2RMSNorm
    if not hasattr(block_norm.forward, "__wrapped_original__"):
        block_norm.forward = _rms_norm_forward(block_norm.forward)
    return model


def apply_to_mamba(model=None):
    """Run transformers' Mamba (Mamba-1) models on zilla_muf's kernels.

    Rebinds the causal convolution, its decoding step, the selective scan and
    the one-token state update of ``transformers.models.mamba.modeling_mamba``
    to zilla_muf (for CPU tensors; other devices keep the original
    functions), for every model, built already or later. The mixer's
    ``forward`` is wrapped too: a cached decoding token (one token, no
    mask, no gradient to record, float32 or float64 on the CPU) goes from
    the input projection's output to the output projection's input in one
    call (convolution update, the projections to dt, B and C, state
    update); everything else takes the mixer's own path on the functions
    above.

    Parameters
    ----------
    model : transformers.MambaPreTrainedModel or MambaMixer, optional
        Checked to be a Mamba model; the patch itself is process-wide.
    """
    mod = importlib.import_module("transformers.models.mamba.modeling_mamba")
    _check_model(model, mod, ("MambaPreTrainedModel", "MambaMixer"))
    _patch(mod, "causal_conv1d_fn", _conv_fn)
    _patch(mod, "causal_conv1d_update", _conv_update)
    _patch(mod, "mamba_selective_scan", _selective_scan)
    _patch(mod, "mamba_selective_state_update", _state_update)
    mixer = mod.MambaMixer
    if _increment_version is not None and not hasattr(mixer.forward,
                                                       "__wrapped_original__"):
        mixer.forward = _mamba_mixer_forward(mixer.forward)
    return model
