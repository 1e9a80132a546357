"""Mamba-1: the selective scan and the depthwise causal convolution.

A Mamba-1 mixer runs a short depthwise causal convolution over its inputs,
then a *selective* state space model whose step size and input/output
projections depend on the token:

- :func:`~zilla_muf.selective_scan` -- the selective scan of mamba_ssm's
  ``selective_scan_ref``, with skip connection, gating, step-size bias and
  softplus, an initial state and the last state for decoding;
- :func:`~zilla_muf.causal_conv1d` -- the depthwise causal convolution, with
  initial and final states so that a sequence can be processed in pieces;
- :func:`~zilla_muf.causal_conv1d_update` -- one decoding step of the
  convolution, advancing its rolling state in place.

Layouts follow mamba_ssm: sequences are (batch, dim, seqlen).
"""

import numpy as np

from . import _selective
from ._config import running_threads
from .ssd import _DECODE_PARALLEL_MIN, _batch_indices, _seq_idx, _state_buffer
from ._validation import (
    as_array,
    check_shape,
    inplace_array,
    require_real,
    resolve_workers,
    result_dtype,
)

__all__ = ["causal_conv1d", "causal_conv1d_update", "selective_scan",
           "selective_scan_update"]

_ACTIVATIONS = (None, "silu")


def _bc_layout(X, name, batch, dim, N, L):
    """`X` (B or C) time-major with dstate last, and its row layout.

    Returns the array to flatten and (sb, gs, sg, st): the row of channel
    (b, d) at step t starts at b * sb + (d // gs) * sg + t * st.
    """
    if X.ndim == 2:
        check_shape(X, (dim, N), name)
        return X, (0, 1, N, 0)
    if X.ndim == 3:
        check_shape(X, (batch, N, L), name)
        return X.transpose(0, 2, 1), (L * N, max(dim, 1), 0, N)
    if X.ndim == 4:
        check_shape(X, (batch, None, N, L), name)
        G = X.shape[1]
        if G < 1 or dim % G != 0:
            raise ValueError(
                f"`{name}` has ngroups = {G} (axis 1 of shape {X.shape}), "
                f"which must be a positive divisor of dim = {dim}"
            )
        return X.transpose(0, 1, 3, 2), (G * L * N, max(dim // G, 1), L * N, N)
    raise ValueError(
        f"`{name}` must have shape (dim, dstate), (batch, dstate, seqlen) or "
        f"(batch, ngroups, dstate, seqlen) = (.., {N}, {L}), got {X.shape}"
    )


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                   delta_softplus=False, return_last_state=False,
                   initial_state=None, workers=None, seq_idx=None):
    r"""Mamba-1's selective scan: an SSM whose step and projections vary per token.

    Parameters
    ----------
    u : array_like
        Inputs, shape (batch, dim, seqlen), float32 or float64.
    delta : array_like
        Step sizes :math:`\Delta`, shape (batch, dim, seqlen).
    A : array_like
        State matrix diagonals, shape (dim, dstate), real or complex.
    B, C : array_like
        Input and output projections, each of shape (dim, dstate) (constant
        in time), (batch, dstate, seqlen) (shared by every channel) or
        (batch, ngroups, dstate, seqlen), where ngroups divides dim and
        channel ``d`` uses group ``d // (dim // ngroups)``. Complex only
        when `A` is complex (real ones are then promoted).
    D : array_like, optional
        Skip connection, shape (dim,): adds ``D[d] * u`` to the output.
    z : array_like, optional
        Gate, shape (batch, dim, seqlen): the output is multiplied by
        ``silu(z)``.
    delta_bias : array_like, optional
        Added to `delta` per channel, shape (dim,).
    delta_softplus : bool, optional
        Use ``softplus(delta + delta_bias)`` as the step (``x`` itself where
        it exceeds 20, as ``torch.nn.functional.softplus``).
    return_last_state : bool, optional
        Also return the state after the last step.
    initial_state : array_like, optional
        The state before the first step, shape (batch, dim, dstate); complex
        only when `A` is. Default 0.
    workers : int, optional
        Threads; None is 1, -1 all cores (see :func:`scipy.fft.fft`).
    seq_idx : array_like of int, optional
        Sequence ids, shape (batch, seqlen), non-decreasing along each row:
        several sequences packed in one row. The state is set to zero where
        the id changes (`initial_state` is the state before position 0);
        each sequence equals its lone call.

    Returns
    -------
    y : ndarray
        Shape (batch, dim, seqlen), real: float32 when every input is
        float32 (or complex64), else float64.
    last_state : ndarray
        Only with ``return_last_state=True``: shape (batch, dim, dstate), real
        for real `A`, complex for complex `A` (the dtype of the computation).

    Raises
    ------
    TypeError
        If an input is not numeric, or `u`, `delta`, `D`, `z`, `delta_bias`
        are complex, or `B`, `C`, `initial_state` are complex while `A` is
        real.
    ValueError
        If a shape does not match the others (the message names the
        argument), ngroups does not divide dim, `workers` is 0 or `seq_idx`
        decreases.

    See Also
    --------
    causal_conv1d : the convolution that precedes the scan in a Mamba layer.
    selective_scan_update : one decoding step.
    sequential_scan : the scalar recurrence this generalises.

    Notes
    -----
    For every batch row and channel :math:`d`, with state
    :math:`h \in \mathbb{R}^{N}` (or :math:`\mathbb{C}^{N}`) and
    :math:`\Delta_t = \operatorname{softplus}(\delta_t + b_d)` (or without
    the softplus),

    .. math::

        h_t = \exp(\Delta_t A_d) \odot h_{t-1} + \Delta_t B_t u_t, \qquad
        y_t = \Big(\textstyle\sum_n C_{t,n} h_{t,n} + D_d u_t\Big)
              \operatorname{silu}(z_t),

    with :math:`h_{-1}` the initial state. For complex :math:`A` the state
    holds one member of each conjugate pair and the sum is replaced by
    :math:`2\,\mathrm{Re}\sum_n C_{t,n} h_{t,n}`, mamba_ssm's convention.
    mamba_ssm's alternative real layouts with 2·seqlen interleaved
    real/imaginary parts are not accepted: pass complex `B` and `C` instead
    (``B[..., 0::2] + 1j * B[..., 1::2]``).

    Unlike ``selective_scan_ref``, which computes in float32, float64 inputs
    are computed in float64. The kernel keeps each channel's state in a small
    per-thread buffer across the sequence, with no (batch, dim, dstate,
    seqlen) temporary, and runs channels in parallel. The exponential is a
    vectorised polynomial within 2 ulp of ``exp``; for real `A`, a decay
    :math:`\exp(\Delta_t A_d)` below the square root of the smallest normal
    number (about :math:`10^{-19}` in float32, :math:`10^{-154}` in
    float64) is taken as zero, as in the chunked SSD: its products would be
    subnormal numbers, which slow the arithmetic several times over, and
    what is dropped is below that fraction of the state it scales.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       `seq_idx`.

    Examples
    --------
    One channel with :math:`e^{\Delta A} = 1/2` and :math:`B = C = 1` is the
    scan :math:`h_t = h_{t-1}/2 + u_t`:

    >>> import numpy as np
    >>> from zilla_muf import selective_scan
    >>> u = np.ones((1, 1, 4))
    >>> delta = np.ones((1, 1, 4))
    >>> A = [[-np.log(2.0)]]
    >>> y, h = selective_scan(u, delta, A, [[1.0]], [[1.0]], return_last_state=True)
    >>> print(np.round(y, 6))
    [[[1.    1.5   1.75  1.875]]]
    >>> print(np.round(h, 6))
    [[[1.875]]]

    Input-dependent B and C of shape (batch, ngroups, dstate, seqlen), with a
    skip connection and a gate:

    >>> rng = np.random.default_rng(0)
    >>> batch, dim, dstate, seqlen = 2, 4, 3, 5
    >>> u = rng.standard_normal((batch, dim, seqlen)).astype(np.float32)
    >>> delta = rng.uniform(0.1, 1.0, (batch, dim, seqlen)).astype(np.float32)
    >>> A = -rng.uniform(0.5, 2.0, (dim, dstate)).astype(np.float32)
    >>> B = rng.standard_normal((batch, 2, dstate, seqlen)).astype(np.float32)
    >>> C = rng.standard_normal((batch, 2, dstate, seqlen)).astype(np.float32)
    >>> y = selective_scan(u, delta, A, B, C, D=np.ones(dim, np.float32), z=u)
    >>> y.shape, y.dtype
    ((2, 4, 5), dtype('float32'))
    """
    u = as_array(u, "u")
    delta = as_array(delta, "delta")
    A = as_array(A, "A")
    B = as_array(B, "B")
    C = as_array(C, "C")
    D = None if D is None else as_array(D, "D")
    z = None if z is None else as_array(z, "z")
    delta_bias = None if delta_bias is None else as_array(delta_bias, "delta_bias")
    h0 = None if initial_state is None else as_array(initial_state, "initial_state")
    dtype = result_dtype(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z,
                         delta_bias=delta_bias, initial_state=h0)
    require_real(u=u, delta=delta, D=D, z=z, delta_bias=delta_bias)
    is_complex = A.dtype.kind == "c"
    if not is_complex:
        for name, arr in (("B", B), ("C", C), ("initial_state", h0)):
            if arr is not None and arr.dtype.kind == "c":
                raise TypeError(
                    f"`{name}` may be complex only when `A` is complex; got "
                    f"`{name}` of dtype {arr.dtype} and `A` of dtype {A.dtype}"
                )
    rdt = np.dtype(np.float32) if dtype in (np.float32, np.complex64) \
        else np.dtype(np.float64)
    nthreads = resolve_workers(workers)

    if u.ndim != 3:
        raise ValueError(
            f"`u` must have shape (batch, dim, seqlen), got {u.shape}"
        )
    batch, dim, L = u.shape
    check_shape(delta, (batch, dim, L), "delta")
    check_shape(A, (dim, None), "A")
    N = A.shape[1]
    B, b_layout = _bc_layout(B, "B", batch, dim, N, L)
    C, c_layout = _bc_layout(C, "C", batch, dim, N, L)
    if D is not None:
        check_shape(D, (dim,), "D")
    if z is not None:
        check_shape(z, (batch, dim, L), "z")
    if delta_bias is not None:
        check_shape(delta_bias, (dim,), "delta_bias")
    if h0 is not None:
        check_shape(h0, (batch, dim, N), "initial_state")
    seq = _seq_idx(seq_idx, batch, L)

    def real(x):
        return np.ascontiguousarray(x, dtype=rdt)

    u_ = real(u)
    delta_ = real(delta)
    opt = dict(D=None if D is None else real(D),
               delta_bias=None if delta_bias is None else real(delta_bias),
               delta_softplus=bool(delta_softplus),
               z=None if z is None else real(z), seq=seq)
    b_layout = np.asarray(b_layout, dtype=np.intp)
    c_layout = np.asarray(c_layout, dtype=np.intp)
    nthreads = max(1, min(nthreads, batch * dim))
    y = np.empty((batch, dim, L), dtype=rdt)

    if not is_complex:
        h0_ = np.zeros((batch, dim, N), rdt) if h0 is None else real(h0)
        last = np.empty((batch, dim, N), dtype=rdt)
        _selective.selective_scan_real(
            u_, delta_, real(A), real(B).ravel(), b_layout,
            real(C).ravel(), c_layout, h0_, y, last, nthreads, **opt)
    else:
        cdt = dtype

        def parts(x):
            x = np.asarray(x)
            if x.dtype.kind == "c":
                return real(x.real), real(x.imag)
            return real(x), np.zeros(x.shape, rdt)

        A_re, A_im = parts(A)
        B_re, B_im = parts(B)
        C_re, C_im = parts(C)
        if h0 is None:
            h0_re = h0_im = np.zeros((batch, dim, N), rdt)
        else:
            h0_re, h0_im = parts(h0)
        last_re = np.empty((batch, dim, N), dtype=rdt)
        last_im = np.empty((batch, dim, N), dtype=rdt)
        _selective.selective_scan_complex(
            u_, delta_, A_re, A_im, B_re.ravel(), B_im.ravel(), b_layout,
            C_re.ravel(), C_im.ravel(), c_layout, h0_re, h0_im, y, last_re,
            last_im, nthreads, **opt)
        last = np.empty((batch, dim, N), dtype=cdt)
        last.real = last_re
        last.imag = last_im
    if return_last_state:
        return y, last
    return y


def _activation(activation):
    if not isinstance(activation, (str, type(None))) or activation not in _ACTIVATIONS:
        raise ValueError(
            f"`activation` must be None or 'silu', got {activation!r}"
        )
    return activation == "silu"


def _conv_weight(weight, dim):
    if weight.ndim != 2 or weight.shape[0] != dim or weight.shape[1] < 1:
        raise ValueError(
            f"`weight` must have shape (dim, width) = ({dim}, width >= 1), "
            f"got {weight.shape}"
        )
    return weight.shape[1]


def causal_conv1d(x, weight, bias=None, *, activation=None,
                  initial_states=None, return_final_states=False, workers=None,
                  seq_idx=None):
    r"""Depthwise causal 1-D convolution, as in a Mamba layer.

    Parameters
    ----------
    x : array_like
        Inputs, shape (batch, dim, seqlen), float32 or float64.
    weight : array_like
        One filter per channel, shape (dim, width). ``weight[:, -1]``
        multiplies the current input, ``weight[:, 0]`` the one width-1 steps
        back (the orientation of ``torch.nn.Conv1d`` with
        ``groups=dim, padding=width-1``).
    bias : array_like, optional
        Shape (dim,).
    activation : {None, "silu"}, optional
        Applied to the output.
    initial_states : array_like, optional
        The width-1 inputs before ``x``, shape (batch, dim, width-1), oldest
        first. Default zeros.
    return_final_states : bool, optional
        Also return the last width-1 inputs (drawing on `initial_states` when
        seqlen < width-1): the `initial_states` that continue the sequence.
    workers : int, optional
        Threads to use: None is 1, -1 all cores.
    seq_idx : array_like of int, optional
        Sequence ids, shape (batch, seqlen), non-decreasing along each row:
        several sequences packed in one row. A tap never reads across a
        sequence boundary (it reads zeros, as at the start of a lone
        sequence); `initial_states` precede the first sequence only, and
        the final states are those of the last sequence.

    Returns
    -------
    out : ndarray
        Shape (batch, dim, seqlen), the result dtype of the inputs. When `x`
        is time-major in memory (its channels contiguous, as
        ``np.swapaxes(h, 1, 2)`` of a (batch, seqlen, dim) activation ``h``),
        the convolution runs in that layout and `out` has it too
        (``np.swapaxes(out, 1, 2)`` is then C-contiguous): no transposing
        copy either way.
    final_states : ndarray
        Only with ``return_final_states=True``: shape (batch, dim, width-1).

    Raises
    ------
    TypeError
        If an input is not real numeric.
    ValueError
        If the shapes do not match (the message names the argument),
        `activation` is not None or "silu", or `seq_idx` decreases.

    See Also
    --------
    causal_conv1d_update : one token at a time, state updated in place.
    selective_scan : the scan that follows the convolution in Mamba-1.

    Notes
    -----
    With :math:`W` the width and :math:`\tilde x` the inputs preceded by the
    :math:`W-1` initial states,

    .. math::

        \mathrm{out}_t = b + \sum_{k=0}^{W-1} w_k\, \tilde x_{t+k}
                       = b + \sum_{k=0}^{W-1} w_{W-1-k}\, x_{t-k},

    where :math:`x_{t-k}` before the start is read from the initial states.
    The width may exceed the sequence length. Splitting a sequence in pieces
    and passing each piece's final states to the next gives the same output
    as the whole. Computed in the input dtype, one channel at a time.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       `seq_idx`.

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import causal_conv1d
    >>> x = np.arange(1.0, 6.0).reshape(1, 1, 5)
    >>> causal_conv1d(x, [[1.0, 10.0]])
    array([[[10., 21., 32., 43., 54.]]])

    In two pieces, carrying the state:

    >>> out1, state = causal_conv1d(x[..., :3], [[1.0, 10.0]], return_final_states=True)
    >>> out2 = causal_conv1d(x[..., 3:], [[1.0, 10.0]], initial_states=state)
    >>> np.concatenate([out1, out2], axis=-1)
    array([[[10., 21., 32., 43., 54.]]])
    """
    x = as_array(x, "x")
    weight = as_array(weight, "weight")
    bias = None if bias is None else as_array(bias, "bias")
    init = None if initial_states is None else as_array(initial_states, "initial_states")
    dtype = result_dtype(allow_complex=False, x=x, weight=weight, bias=bias,
                         initial_states=init)
    silu = _activation(activation)
    if x.ndim != 3:
        raise ValueError(
            f"`x` must have shape (batch, dim, seqlen), got {x.shape}"
        )
    batch, dim, L = x.shape
    W = _conv_weight(weight, dim)
    if bias is not None:
        check_shape(bias, (dim,), "bias")
    if init is not None:
        check_shape(init, (batch, dim, W - 1), "initial_states")
    nthreads = resolve_workers(workers)
    init_ = np.zeros((batch, dim, W - 1), dtype) if init is None \
        else np.ascontiguousarray(init, dtype=dtype)
    bias_ = np.zeros(dim, dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)
    seq = _seq_idx(seq_idx, batch, L)
    xt = np.swapaxes(x, 1, 2)
    if seq is not None:
        x_ = np.ascontiguousarray(x, dtype=dtype)
        out = np.empty((batch, dim, L), dtype=dtype)
        _selective.causal_conv1d_seq(
            x_, seq, np.ascontiguousarray(weight, dtype=dtype), bias_, init_,
            out, silu, nthreads)
        if not return_final_states:
            return out
        return out, _last_sequence_window(x_, seq, init_, W)
    if x.dtype == dtype and dim > 1 and xt.strides[2] == x.itemsize:
        # time-major data (channels contiguous, e.g. a transposed view of a
        # (batch, seqlen, dim) layer activation): convolve in that layout,
        # and return the result in it too
        out_t = np.empty((batch, L, dim), dtype=dtype)
        _selective.causal_conv1d_time_major(
            xt, np.ascontiguousarray(np.asarray(weight, dtype=dtype).T), bias_,
            np.ascontiguousarray(np.swapaxes(init_, 1, 2)), out_t, silu, nthreads)
        out = np.swapaxes(out_t, 1, 2)
        x_ = x
    else:
        x_ = np.ascontiguousarray(x, dtype=dtype)
        out = np.empty((batch, dim, L), dtype=dtype)
        _selective.causal_conv1d(x_, np.ascontiguousarray(weight, dtype=dtype), bias_,
                                 init_, out, silu, nthreads)
    if not return_final_states:
        return out
    if L >= W - 1:
        final = np.ascontiguousarray(x_[:, :, L - (W - 1):], dtype=dtype)
    else:
        # (concatenate keeps its inputs' memory order: make the state C-ordered)
        final = np.ascontiguousarray(
            np.concatenate([init_[:, :, L:], x_.astype(dtype, copy=False)], axis=-1))
    return out, final


def _last_sequence_window(x, seq, init, W):
    """The last W - 1 inputs of each row's last sequence (zeros before its
    start, the initial states when it is the row's first sequence)."""
    batch, dim, L = x.shape
    final = np.zeros((batch, dim, W - 1), dtype=x.dtype)
    if W == 1:
        return final
    for b in range(batch):
        start = int(np.searchsorted(seq[b], seq[b, -1])) if L else 0
        ext = np.concatenate([init[b], x[b]], axis=-1) if start == 0 else \
            np.concatenate([np.zeros((dim, W - 1), x.dtype), x[b, :, start:]], axis=-1)
        final[b] = ext[:, ext.shape[1] - (W - 1):]
    return final


def causal_conv1d_update(x, conv_state, weight, bias=None, *, activation=None,
                         conv_state_indices=None):
    r"""Decoding steps of :func:`causal_conv1d`; advances `conv_state` in place.

    Parameters
    ----------
    x : array_like
        The new token, shape (batch, dim), or T new tokens, shape
        (batch, dim, T).
    conv_state : ndarray or DLPack array
        The last inputs, oldest first, shape (batch, dim, state_len) with
        ``state_len >= width - 1`` (the ``final_states`` of
        :func:`causal_conv1d` when ``state_len == width - 1``; a wider cache,
        as transformers keeps, holds older inputs in front), or
        (pool, dim, state_len) with `conv_state_indices`. Its last width-1
        columns are the window; every call shifts the whole cache left by
        the number of tokens. Updated in place: a writeable C-contiguous
        ndarray of the result dtype, or a CPU array of another library (a
        torch tensor) updated in its own memory through ``__dlpack__``.
    weight : array_like
        Shape (dim, width), as for :func:`causal_conv1d`.
    bias : array_like, optional
        Shape (dim,).
    activation : {None, "silu"}, optional
        Applied to the output.
    conv_state_indices : array_like of int, optional
        Shape (batch,): batch row b uses ``conv_state[conv_state_indices[b]]``
        of a larger pool (continuous batching); other rows are untouched.
        Distinct, in ``[0, pool)``.

    Returns
    -------
    out : ndarray
        The outputs for the new tokens, of the shape of `x`.

    Raises
    ------
    TypeError
        If an input is not real numeric, `conv_state` is neither an ndarray
        nor a zero-copy DLPack array, its dtype is not the result dtype of
        `x`, `conv_state`, `weight` and `bias`, or `conv_state_indices` is
        not integer.
    ValueError
        If the shapes do not match (the message names the argument),
        `conv_state` is read-only or not C-contiguous, `activation` is not
        None or "silu", or `conv_state_indices` is out of range or repeats
        a row.

    See Also
    --------
    causal_conv1d : the whole sequence at once.
    selective_scan_update : the scan's decoding step.

    Notes
    -----
    With :math:`s` the window (the last :math:`W-1` cached inputs, oldest
    first), per token

    .. math::

        \mathrm{out} = b + \sum_{k=0}^{W-2} w_k s_k + w_{W-1} x,

    then the cache shifts left by one and :math:`x` enters at its end.
    Running it from the state :func:`causal_conv1d` returns gives the
    outputs of :func:`causal_conv1d` on the longer sequence. The T tokens of
    a call run in one kernel call.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       Wider caches, the token axis, `conv_state_indices`; DLPack states.

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import causal_conv1d_update
    >>> state = np.array([[[1.0, 2.0]]])       # (batch, dim, width - 1)
    >>> causal_conv1d_update([[3.0]], state, [[1.0, 1.0, 10.0]])
    array([[33.]])
    >>> state
    array([[[2., 3.]]])

    Two tokens at once:

    >>> causal_conv1d_update([[[4.0, 5.0]]], state, [[1.0, 1.0, 10.0]])
    array([[[45., 57.]]])
    >>> state
    array([[[4., 5.]]])
    """
    conv_state = _state_buffer(conv_state, "conv_state")
    x = as_array(x, "x")
    weight = as_array(weight, "weight")
    bias = None if bias is None else as_array(bias, "bias")
    dtype = result_dtype(allow_complex=False, x=x, conv_state=conv_state,
                         weight=weight, bias=bias)
    if conv_state.dtype != dtype:
        raise TypeError(
            f"`conv_state` must have dtype {dtype} (the result type of the "
            f"inputs) to be updated in place, got {conv_state.dtype}"
        )
    silu = _activation(activation)
    shape = x.shape
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise ValueError(
            f"`x` must have shape (batch, dim) or (batch, dim, T), got {shape}"
        )
    batch, dim, T = x.shape
    W = _conv_weight(weight, dim)
    rows = _batch_indices(conv_state_indices, batch,
                          conv_state.shape[0] if conv_state.ndim else 0,
                          "conv_state_indices")
    check_shape(conv_state, (batch if rows is None else None, dim, None),
                "conv_state")
    if conv_state.shape[2] < W - 1:
        raise ValueError(
            f"`conv_state` must keep at least width - 1 = {W - 1} inputs "
            f"(its last axis), got {conv_state.shape[2]}"
        )
    if bias is not None:
        check_shape(bias, (dim,), "bias")
    x_ = np.ascontiguousarray(x, dtype=dtype)
    if np.may_share_memory(x_, conv_state):
        x_ = x_.copy()
    out = np.empty((batch, dim, T), dtype=dtype)
    _selective.conv_update(
        x_, conv_state, np.ascontiguousarray(weight, dtype=dtype),
        np.zeros(dim, dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype),
        out, silu, rows=rows)
    return out.reshape(shape)


def selective_scan_update(state, x, dt, A, B, C, *, D=None, z=None,
                          dt_bias=None, dt_softplus=False,
                          state_batch_indices=None, workers=None):
    r"""Advance a Mamba-1 state by one token, in place; return the output.

    Parameters
    ----------
    state : ndarray or DLPack array
        Shape (batch, dim, dstate), or (pool, dim, dstate) with
        `state_batch_indices`; updated in place. A writeable C-contiguous
        ndarray of the computation's dtype (float32/float64 for real `A`,
        complex64/complex128 for complex `A`), or a CPU array of another
        library (a torch tensor) updated in its own memory through
        ``__dlpack__``.
    x : array_like
        The token's inputs, shape (batch, dim).
    dt : array_like
        Step sizes, shape (batch, dim).
    A : array_like
        State matrix diagonals, shape (dim, dstate), real or complex.
    B, C : array_like
        Projections, shape (batch, dstate) or (batch, ngroups, dstate)
        (channel d uses group ``d // (dim // ngroups)``); complex only when
        `A` is.
    D : array_like, optional
        Skip connection, shape (dim,).
    z : array_like, optional
        Gate, shape (batch, dim).
    dt_bias : array_like, optional
        Added to `dt`, shape (dim,).
    dt_softplus : bool, optional
        Use ``softplus(dt + dt_bias)`` as the step.
    state_batch_indices : array_like of int, optional
        Shape (batch,): batch row b advances ``state[state_batch_indices[b]]``
        of a larger pool; other rows are untouched. Distinct, in
        ``[0, pool)``.
    workers : int, optional
        Threads over the batch rows: None is 1, -1 all cores (as in
        :mod:`scipy.fft`). A call whose state rows number fewer than 65536
        elements runs on the calling thread (waking another costs more
        than the work). The result is the same for every value.

    Returns
    -------
    y : ndarray
        Shape (batch, dim), real.

    Raises
    ------
    TypeError
        If `state` is neither an ndarray nor a zero-copy DLPack array, its
        dtype is not the computation's, an input is not numeric or is
        complex where it may not be, or `state_batch_indices` is not
        integer.
    ValueError
        If `state` is read-only or not C-contiguous, a shape does not match
        (the message names the argument), `state_batch_indices` is out
        of range or repeats a row, or `workers` is 0 or asks for fewer
        than one thread.

    See Also
    --------
    selective_scan : the whole sequence; this is its last step.
    selective_state_update : the Mamba-2 step.
    causal_conv1d_update : the convolution's step.

    Notes
    -----
    One step of :func:`selective_scan` from the state it is given:

    .. math::

        h \leftarrow \exp(\Delta A) \odot h + \Delta B u, \qquad
        y = \Big(	extstyle\sum_n C_n h_n + D u\Big) \operatorname{silu}(z),

    with :math:`2\,\mathrm{Re}` of the sum for complex :math:`A`. Equal to
    the last output of ``selective_scan(..., initial_state=state)`` on the
    sequence ending with this token.

    .. versionadded:: 0.2.0

    Examples
    --------
    >>> import numpy as np
    >>> from zilla_muf import selective_scan_update
    >>> state = np.zeros((1, 1, 1))
    >>> for _ in range(3):
    ...     y = selective_scan_update(state, [[1.0]], [[1.0]], [[-np.log(2.0)]],
    ...                               [[1.0]], [[1.0]])
    >>> y, state
    (array([[1.75]]), array([[[1.75]]]))
    """
    nthreads = resolve_workers(workers)
    state = _state_buffer(state, "state", tuple(np.dtype(d) for d in (
        np.float32, np.float64, np.complex64, np.complex128)))
    x = as_array(x, "x")
    dt = as_array(dt, "dt")
    B = as_array(B, "B")
    C = as_array(C, "C")
    check_shape(x, (None, None), "x")
    batch, dim = x.shape
    check_shape(dt, (batch, dim), "dt")
    if B.ndim not in (2, 3):
        raise ValueError(
            f"`B` must have shape (batch, dstate) or (batch, ngroups, dstate), "
            f"got {B.shape}"
        )
    if C.ndim not in (2, 3):
        raise ValueError(
            f"`C` must have shape (batch, dstate) or (batch, ngroups, dstate), "
            f"got {C.shape}"
        )
    if z is not None:
        z = as_array(z, "z")
        check_shape(z, (batch, dim), "z")
    if D is not None:
        D = as_array(D, "D")
        check_shape(D, (dim,), "D")
    if dt_bias is not None:
        dt_bias = as_array(dt_bias, "dt_bias")
        check_shape(dt_bias, (dim,), "dt_bias")
    require_real(x=x, dt=dt, D=D, z=z, dt_bias=dt_bias)
    A_ = as_array(A, "A")
    complex_state = A_.dtype.kind == "c"
    rows = _batch_indices(state_batch_indices, batch,
                          state.shape[0] if state.ndim else 0,
                          "state_batch_indices")
    if complex_state:
        ok = (np.complex64, np.complex128)
    else:
        ok = (np.float32, np.float64)
    if state.dtype not in ok:
        raise TypeError(
            f"`state` must have dtype {' or '.join(np.dtype(d).name for d in ok)} "
            f"for {'complex' if complex_state else 'real'} `A`, got {state.dtype}"
        )
    check_shape(state, (batch if rows is None else None, dim, None), "state")
    check_shape(A_, (dim, state.shape[2]), "A")
    if not complex_state:
        y = _real_step(state, rows, x, dt, A_, B, C, D, z, dt_bias, dt_softplus,
                       nthreads)
        if y is not None:
            return y
    h0 = state if rows is None else state[rows]
    y, last = selective_scan(
        x[:, :, None], dt[:, :, None], A_, B[..., None], C[..., None], D=D,
        z=None if z is None else z[:, :, None], delta_bias=dt_bias,
        delta_softplus=dt_softplus, return_last_state=True, initial_state=h0,
        workers=workers)
    if last.dtype != state.dtype:
        raise TypeError(
            f"`state` has dtype {state.dtype} but the inputs compute in "
            f"{last.dtype}; pass inputs of dtype {state.dtype} or a "
            f"{last.dtype} state"
        )
    if rows is None:
        state[...] = last
    else:
        state[rows] = last
    return y[:, :, 0]


def _real_step(state, rows, x, dt, A, B, C, D, z, dt_bias, softplus, nthreads):
    """selective_scan_update's step with real A on the compiled one-token
    kernel (the other arguments checked; `nthreads` the resolved workers),
    or None where that does not apply
    (more than one group, complex or misshapen B or C, a computation dtype
    other than the state's: the general path then computes, or refuses by
    name)."""
    batch, dim = x.shape
    N = state.shape[2]
    if B.ndim == 3 and B.shape[1] == 1:
        B = B[:, 0]
    if C.ndim == 3 and C.shape[1] == 1:
        C = C[:, 0]
    if (B.dtype.kind == "c" or C.dtype.kind == "c" or B.shape != (batch, N)
            or C.shape != (batch, N)
            or result_dtype(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                            state=state) != state.dtype):
        return None
    dtype = state.dtype

    def cast(a):
        return np.ascontiguousarray(a, dtype=dtype)

    x = cast(x)
    zeros = np.zeros(dim, dtype)
    h = state if rows is None else state[rows]
    y = np.empty((batch, dim), dtype)
    nthreads = (1 if batch * dim * N < _DECODE_PARALLEL_MIN
                else running_threads(min(nthreads, batch)))
    _selective.mamba_step(
        x, cast(dt), cast(A), cast(B), cast(C), zeros if D is None else cast(D),
        x if z is None else cast(z), zeros if dt_bias is None else cast(dt_bias),
        bool(softplus), D is not None, z is not None, h, y, nthreads)
    if rows is not None:
        state[rows] = h
    return y


def _mamba_step_params(conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                       dt_proj_bias, A, D, *, dtype):
    """A Mamba-1 layer's parameters as :func:`_mamba_mixer_step` takes them:
    C-contiguous arrays of `dtype` (the projections transposed), the biases
    0 where absent. A caller stepping many tokens prepares them once."""
    def cast(a):
        return None if a is None else np.ascontiguousarray(a, dtype=dtype)

    W = cast(conv_weight)
    dim = W.shape[0]
    zeros = np.zeros(dim, dtype)
    return (W, zeros if conv_bias is None else cast(conv_bias),
            cast(np.asarray(x_proj_weight).T), cast(np.asarray(dt_proj_weight).T),
            zeros if dt_proj_bias is None else cast(dt_proj_bias), cast(A), cast(D))


def _mamba_mixer_step(xz, conv_state, state, params):
    """One decoding token of a Mamba-1 mixer between its input and output
    projections.

    The step of transformers' ``MambaMixer`` (and of mamba_ssm's ``Mamba``):
    xz (batch, 2 dim), the input projection's output, is read as x and the
    gate z; x goes through the convolution's update with SiLU (conv_state
    (batch, dim, >= width - 1), advanced in place), then the projection to
    (dt rank, B, C) and dt's own projection, and one step of the selective
    scan with softplus steps, D x and the gate (state (batch, dim, dstate),
    advanced in place). conv_state and state must have the dtype of xz
    (float32 or float64), be C-contiguous and writeable; `params` comes
    from :func:`_mamba_step_params` with that dtype. Returns (batch, dim).
    """
    xz = np.asarray(xz)
    dtype = xz.dtype
    if dtype not in (np.float32, np.float64) or xz.ndim != 2:
        raise TypeError("`xz` must be a float32 or float64 (batch, channels) array")
    for name, s in (("conv_state", conv_state), ("state", state)):
        if (not isinstance(s, np.ndarray) or s.dtype != dtype or s.ndim != 3
                or not s.flags.c_contiguous or not s.flags.writeable):
            raise TypeError(f"`{name}` must be a writeable C-contiguous {dtype} "
                            "array of 3 dimensions")
    for a in params:
        if a is not None and (a.dtype != dtype or not a.flags.c_contiguous):
            raise TypeError(f"`params` must be {dtype} (from _mamba_step_params)")
    W, bias, xw, dtw, dt_bias, A, D = params
    batch = xz.shape[0]
    dim, N = A.shape
    rank = dtw.shape[0]
    if xz.shape[1] != 2 * dim or xw.shape != (dim, rank + 2 * N):
        raise ValueError("`xz` and `params` do not agree")
    x = np.ascontiguousarray(xz[:, :dim])[:, :, None]
    xc = np.empty((batch, dim, 1), dtype)
    _selective.conv_update(x, conv_state, W, bias, xc, True)
    xc = xc[:, :, 0]
    dbc = xc @ xw
    dt = dbc[:, :rank] @ dtw
    out = np.empty((batch, dim), dtype)
    Dv = np.zeros(dim, dtype) if D is None else D
    _selective.mamba_step(
        xc, dt, A, np.ascontiguousarray(dbc[:, rank:rank + N]),
        np.ascontiguousarray(dbc[:, rank + N:]), Dv, np.ascontiguousarray(xz[:, dim:]),
        dt_bias, True, D is not None, True, state, out, 1)
    return out


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------

from ._vjp import defvjp  # noqa: E402
from . import _vjp_kernels  # noqa: E402
from .stable_ops import silu as _silu  # noqa: E402


def _no_packed_gradient(args, fun):
    if args.get("seq_idx") is not None:
        raise NotImplementedError(
            f"the gradient of {fun} with `seq_idx` (packed sequences) is not "
            "implemented; differentiate each sequence's call"
        )


@defvjp(causal_conv1d, "x", "weight", "bias", "initial_states")
def _causal_conv1d_vjp(args):
    """Pullback of :func:`causal_conv1d`: keeps the inputs (and, with SiLU,
    the pre-activation).

    The backward is one compiled pass (_vjp_kernels.causal_conv1d_backward,
    channels over threads, SiLU's derivative included); arrays with a zero
    dimension take the NumPy listing below.
    With x~ the inputs preceded by the initial states and g the cotangent of
    the pre-activation, dw_k = sum g_t x~_{t+k}, db = sum g_t and
    dx~_s = sum_k w_k g_{s-k}; the final states are the last width-1 entries
    of x~, so their cotangent adds to those. With SiLU the convolution runs
    once, without the activation, and the output is silu of it.
    """
    _no_packed_gradient(args, "causal_conv1d")
    silu = _activation(args["activation"])
    ret_final = bool(args["return_final_states"])
    if silu:
        # the pre-activation, for SiLU's derivative; the output is its SiLU
        res = causal_conv1d(**dict(args, activation=None))
        pre = res[0] if ret_final else res
        out = _silu(pre)
        result = (out, res[1]) if ret_final else out
    else:
        result = causal_conv1d(**args)
        out = result[0] if ret_final else result
        pre = None
    dtype = out.dtype
    x = args["x"]
    w = np.asarray(args["weight"], dtype=dtype)
    batch, dim, L = np.shape(x)
    W = w.shape[1]
    init = args["initial_states"]
    nthreads = resolve_workers(args.get("workers"))

    def backward(ct):
        gout, gfinal = ct if ret_final else (ct, None)
        if batch and dim and L and dtype in (np.float32, np.float64):
            # one compiled pass, channels over threads (SiLU's derivative
            # inside)
            gc = np.ascontiguousarray(gout, dtype=dtype)
            xc = np.ascontiguousarray(x, dtype=dtype)
            dummy = np.zeros((1, 1, 1), dtype=dtype)
            h0 = (dummy if init is None else np.ascontiguousarray(
                np.broadcast_to(np.asarray(init, dtype=dtype), (batch, dim, W - 1))))
            gf = (dummy if gfinal is None else np.ascontiguousarray(
                np.broadcast_to(np.asarray(gfinal, dtype=dtype), (batch, dim, W - 1))))
            gx = np.empty((batch, dim, L), dtype=dtype)
            gw = np.empty((dim, W), dtype=dtype)
            gb = np.empty(dim, dtype=dtype)
            gh0 = np.empty((batch, dim, W - 1), dtype=dtype)
            _vjp_kernels.causal_conv1d_backward(
                gc, np.ascontiguousarray(pre) if silu else dummy, silu, xc, h0,
                np.ascontiguousarray(w), gf, init is not None,
                gfinal is not None, gx, gw, gb, gh0, nthreads)
            return {"x": gx, "weight": gw, "bias": gb, "initial_states": gh0}
        # empty arrays: NumPy
        if silu:
            # g = gout * silu'(pre), in one compiled pass
            g = np.empty(pre.shape, dtype=dtype)
            _vjp_kernels.silu_backward(
                pre.reshape(-1), np.ascontiguousarray(gout, dtype=dtype).reshape(-1),
                g.reshape(-1), nthreads)
        else:
            g = np.array(gout, dtype=dtype)
        xt = np.empty((batch, dim, W - 1 + L), dtype=dtype)
        if init is None:
            xt[:, :, :W - 1] = 0
        else:
            xt[:, :, :W - 1] = init
        xt[:, :, W - 1:] = x
        gw = np.empty((dim, W), dtype=dtype)
        gxt = np.zeros_like(xt)
        tmp = np.empty_like(g)
        for k in range(W):
            gw[:, k] = np.einsum("bdt,bdt->d", g, xt[:, :, k:k + L])
            np.multiply(g, w[None, :, k, None], out=tmp)
            gxt[:, :, k:k + L] += tmp
        if gfinal is not None and W > 1:
            gxt[:, :, L:] += gfinal
        return {"x": gxt[:, :, W - 1:], "weight": gw,
                "bias": g.sum(axis=2).sum(axis=0), "initial_states": gxt[:, :, :W - 1]}

    return result, backward


# Steps per checkpoint segment of the compiled forward and backward: a
# segment's decays and decayed states (2 K dstate values, 4 K for complex A)
# stay in L1 for Mamba's dstate 16, the checkpoints are dstate / K of the
# inputs' size.
_REAL_SEGMENT = 128
# Lanes per thread of the real-A backward, unless their accumulators of
# B's and C's gradients would pass _LANE_BUDGET elements.
_LANES_PER_THREAD = 4
_LANE_BUDGET = 1 << 24


@defvjp(selective_scan, "u", "delta", "A", "B", "C", "D", "z", "delta_bias",
        "initial_state")
def _selective_scan_vjp(args):
    """Pullback of :func:`selective_scan`.

    Real A: the compiled forward of _selective_backward keeps the state at
    the start of every segment of 128 steps (memory
    O(batch·dim·dstate·seqlen / 128)) and, with `z`, the output before the
    gate; the backward is one fused compiled pass per channel over the
    segments in reverse (each segment's states replayed from its checkpoint,
    the adjoint run back through them, every gradient accumulated on the
    way). Complex A: :func:`_complex_scan_vjp`.
    """
    _no_packed_gradient(args, "selective_scan")
    A = as_array(args["A"], "A")
    if A.dtype.kind == "c":
        return _complex_scan_vjp(args)
    return _real_scan_vjp(args)


def _real_inputs(args):
    """The real-A call's arrays, checked as :func:`selective_scan` checks
    them, in the dtype of the computation."""
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
    v = {k: None if args[k] is None else as_array(args[k], k) for k in names}
    dtype = result_dtype(**v)
    require_real(u=v["u"], delta=v["delta"], D=v["D"], z=v["z"],
                 delta_bias=v["delta_bias"])
    for name in ("B", "C", "initial_state"):
        if v[name] is not None and v[name].dtype.kind == "c":
            raise TypeError(
                f"`{name}` may be complex only when `A` is complex; got "
                f"`{name}` of dtype {v[name].dtype} and `A` of dtype {v['A'].dtype}"
            )
    if v["u"].ndim != 3:
        raise ValueError(
            f"`u` must have shape (batch, dim, seqlen), got {v['u'].shape}"
        )
    batch, dim, L = v["u"].shape
    check_shape(v["delta"], (batch, dim, L), "delta")
    check_shape(v["A"], (dim, None), "A")
    N = v["A"].shape[1]
    Bt, b_layout = _bc_layout(v["B"], "B", batch, dim, N, L)
    Ct, c_layout = _bc_layout(v["C"], "C", batch, dim, N, L)
    for name, shape in (("D", (dim,)), ("z", (batch, dim, L)),
                        ("delta_bias", (dim,)), ("initial_state", (batch, dim, N))):
        if v[name] is not None:
            check_shape(v[name], shape, name)
    rdt = np.dtype(dtype)

    def real(x):
        return None if x is None else np.ascontiguousarray(x, dtype=rdt)

    out = {k: real(v[k]) for k in ("u", "delta", "A", "D", "z", "delta_bias",
                                   "initial_state")}
    out.update(B=real(Bt).ravel(), C=real(Ct).ravel(), Bt=Bt, Ct=Ct,
               b_layout=np.asarray(b_layout, dtype=np.intp),
               c_layout=np.asarray(c_layout, dtype=np.intp))
    return out, rdt, (batch, dim, N, L)


def _real_scan_vjp(args):
    """The real-A pullback on the compiled kernels of _selective_backward."""
    from . import _selective_backward

    x, rdt, (batch, dim, N, L) = _real_inputs(args)
    nthreads = max(1, min(resolve_workers(args["workers"]), batch * dim))
    ret_last = bool(args["return_last_state"])
    softplus = bool(args["delta_softplus"])
    K = _REAL_SEGMENT
    nseg = -(-L // K)
    # lanes of channels, each with its own accumulators for dB and dC: a few
    # per thread (load balance), one per thread when those would be large
    lanes = 1 if nthreads == 1 else min(batch * dim, _LANES_PER_THREAD * nthreads)
    if lanes * (np.size(args["B"]) + np.size(args["C"])) > _LANE_BUDGET:
        lanes = nthreads
    u, delta, A, z = x["u"], x["delta"], x["A"], x["z"]
    B, C, bl, cl = x["B"], x["C"], x["b_layout"], x["c_layout"]
    h0 = x["initial_state"]
    if h0 is None:
        h0 = np.zeros((batch, dim, N), rdt)
    opt = dict(D=x["D"], delta_bias=x["delta_bias"], delta_softplus=softplus,
               z=z)
    ck = np.empty((batch, dim, nseg + 1, N), rdt)
    y = np.empty((batch, dim, L), rdt)
    y0 = None if z is None else np.empty((batch, dim, L), rdt)
    _selective_backward.selective_scan_real_forward(
        u, delta, A, B, bl, C, cl, h0, y, ck, K, nthreads, y0=y0, **opt)
    out = (y, ck[:, :, nseg].copy()) if ret_last else y

    def back(g, X, view):
        """A per-thread gradient of B or C, summed, in X's layout."""
        g = (g[0] if g.shape[0] == 1 else g.sum(axis=0)).reshape(view.shape)
        if X.ndim == 3:
            return g.transpose(0, 2, 1)
        if X.ndim == 4:
            return g.transpose(0, 1, 3, 2)
        return g

    def backward(ct):
        gy, glast = ct if ret_last else (ct, None)
        gy = np.ascontiguousarray(gy, dtype=rdt)
        glast = np.zeros((batch, dim, N), rdt) if glast is None \
            else np.ascontiguousarray(glast, dtype=rdt)
        gu = np.empty((batch, dim, L), rdt)
        gdelta = np.empty((batch, dim, L), rdt)
        gz = None if z is None else np.empty((batch, dim, L), rdt)
        gA = np.empty((batch, dim, N), rdt)
        gh0 = np.empty((batch, dim, N), rdt)
        sums = np.empty((batch, dim, 2), rdt)
        gB = np.zeros((lanes, B.size), rdt)
        gC = np.zeros((lanes, C.size), rdt)
        _selective_backward.selective_scan_real_backward(
            u, delta, A, B, bl, C, cl, ck, gy, glast, gu, gdelta, gA, gh0,
            sums, gB, gC, K, nthreads, y0=y0, gz=gz, **opt)
        Bv = np.asarray(args["B"])
        Cv = np.asarray(args["C"])
        grads = {"u": gu, "delta": gdelta, "A": gA.sum(axis=0),
                 "B": back(gB, Bv, x["Bt"]), "C": back(gC, Cv, x["Ct"])}
        if x["D"] is not None:
            grads["D"] = sums[:, :, 0].sum(axis=0)
        if x["delta_bias"] is not None:
            grads["delta_bias"] = sums[:, :, 1].sum(axis=0)
        if z is not None:
            grads["z"] = gz
        if x["initial_state"] is not None:
            grads["initial_state"] = gh0
        return grads

    return out, backward


def _complex_scan_vjp(args):
    """Pullback of :func:`selective_scan` with complex A.

    Keeps the inputs and, with `z`, the output before the gate. The
    backward is the compiled kernel of _selective_backward: per channel,
    the recurrence run forward once keeping the state at the start of every
    segment of 128 steps (in the thread's scratch), then the segments walked
    in reverse, each one's states replayed from its checkpoint and the
    adjoint lambda_t = conj(e^{Delta_{t+1} A}) lambda_{t+1} + dL/dh_t run
    backward through it, every gradient accumulated on the way.
    """
    from . import _selective_backward

    y0 = None
    if args["z"] is None:
        out = selective_scan(**args)
    else:
        # keep the output before the gate; gate it as the forward does
        res = selective_scan(**dict(args, z=None))
        y0 = res[0] if isinstance(res, tuple) else res
        zz = np.asarray(args["z"], dtype=y0.dtype)
        y = y0 * _silu(zz)
        out = (y, res[1]) if isinstance(res, tuple) else y
    y = out[0] if isinstance(out, tuple) else out
    rdt = y.dtype
    batch, dim, L = np.shape(args["u"])
    N = np.shape(args["A"])[1]
    ret_last = bool(args["return_last_state"])
    softplus = bool(args["delta_softplus"])
    nthreads = max(1, min(resolve_workers(args["workers"]), batch * dim))
    K = _REAL_SEGMENT
    lanes = 1 if nthreads == 1 else min(batch * dim, _LANES_PER_THREAD * nthreads)
    if lanes * 2 * (np.size(args["B"]) + np.size(args["C"])) > _LANE_BUDGET:
        lanes = nthreads

    def real(x):
        return None if x is None else np.ascontiguousarray(x, dtype=rdt)

    def parts(x, shape=None):
        if x is None:
            zeros = np.zeros(shape, rdt)
            return zeros, zeros
        x = np.asarray(x)
        if x.dtype.kind == "c":
            return real(x.real), real(x.imag)
        return real(x), np.zeros(x.shape, rdt)

    def back(g, X, view):
        """A per-lane gradient of B or C, summed, in X's layout."""
        g = (g[0] if g.shape[0] == 1 else g.sum(axis=0)).reshape(view.shape)
        if X.ndim == 3:
            return g.transpose(0, 2, 1)
        if X.ndim == 4:
            return g.transpose(0, 1, 3, 2)
        return g

    def backward(ct):
        gy, glast = ct if ret_last else (ct, None)
        gy = real(gy)
        Bv = np.asarray(args["B"])
        Cv = np.asarray(args["C"])
        Bt, b_layout = _bc_layout(Bv, "B", batch, dim, N, L)
        Ct, c_layout = _bc_layout(Cv, "C", batch, dim, N, L)
        A_re, A_im = parts(args["A"])
        B_re, B_im = parts(Bt)
        C_re, C_im = parts(Ct)
        h0_re, h0_im = parts(args["initial_state"], (batch, dim, N))
        gl_re, gl_im = parts(glast, (batch, dim, N))
        z = real(args["z"])
        gu = np.empty((batch, dim, L), rdt)
        gdelta = np.empty((batch, dim, L), rdt)
        gz = None if z is None else np.empty((batch, dim, L), rdt)
        gA_re, gA_im, gh_re, gh_im = (np.empty((batch, dim, N), rdt) for _ in range(4))
        sums = np.empty((batch, dim, 2), rdt)
        gB_re, gB_im = (np.zeros((lanes, B_re.size), rdt) for _ in range(2))
        gC_re, gC_im = (np.zeros((lanes, C_re.size), rdt) for _ in range(2))
        _selective_backward.selective_scan_complex_backward(
            real(args["u"]), real(args["delta"]), A_re, A_im, B_re.ravel(),
            B_im.ravel(), np.asarray(b_layout, dtype=np.intp), C_re.ravel(),
            C_im.ravel(), np.asarray(c_layout, dtype=np.intp), h0_re, h0_im, gy,
            gl_re, gl_im, gu, gdelta, gA_re, gA_im, gh_re, gh_im, sums, gB_re,
            gB_im, gC_re, gC_im, K, nthreads, D=real(args["D"]),
            delta_bias=real(args["delta_bias"]), delta_softplus=softplus, z=z,
            y0=y0, gz=gz)
        grads = {"u": gu, "delta": gdelta,
                 "A": gA_re.sum(axis=0) + 1j * gA_im.sum(axis=0),
                 "B": back(gB_re, Bv, Bt) + 1j * back(gB_im, Bv, Bt),
                 "C": back(gC_re, Cv, Ct) + 1j * back(gC_im, Cv, Ct)}
        if args["D"] is not None:
            grads["D"] = sums[:, :, 0].sum(axis=0)
        if args["delta_bias"] is not None:
            grads["delta_bias"] = sums[:, :, 1].sum(axis=0)
        if z is not None:
            grads["z"] = gz
        if args["initial_state"] is not None:
            grads["initial_state"] = gh_re + 1j * gh_im
        return grads

    return out, backward
