"""The library's functions as ``torch.library`` custom operators.

Each differentiable function becomes two operators: ``zilla_muf::<name>``
(the forward) and ``zilla_muf::<name>_backward`` (the pullback of the same
call, through :func:`zilla_muf.vjp`), joined by ``register_autograd``. Both
have fake (meta) kernels, so ``torch.compile`` traces through them and
``torch.library.opcheck`` passes. The backward operator recomputes what the
pullback needs from the inputs, as the library's pullbacks do anyway; no
Python object crosses from the forward to the backward. The one exception,
the Mamba-2 layer of a training step (``zilla_muf::mamba2_split_layer``),
returns its intermediate results as extra tensors, which autograd saves for
its backward operator.

Tensors cross to NumPy without copies when they are contiguous CPU tensors
of float32 or float64 (``Tensor.numpy()``) and come back with
``torch.from_numpy``; float16 and bfloat16 are computed in float32 and
returned in their own dtype. Nothing here computes: every number comes from
the NumPy API.
"""

import contextlib
import threading

import numpy as np
import torch

import zilla_muf
from zilla_muf._vjp import pullback_from, vjp

__all__ = ["OPS", "SPLIT_LAYER", "call", "to_numpy", "inplace_numpy"]

_HALF = (torch.float16, torch.bfloat16)
_KERNEL_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


def _check_tensor(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(
            f"`{name}` must be a CPU tensor, got a tensor on {t.device}; "
            "zilla_muf.torch computes on the CPU"
        )


def to_numpy(t, name):
    """A CPU tensor as an ndarray, without a copy where its layout allows."""
    if t is None:
        return None
    _check_tensor(t, name)
    if t.dtype in _HALF:
        t = t.to(torch.float32)
    elif t.dtype not in _KERNEL_DTYPES and t.is_floating_point():
        t = t.to(torch.float64)
    if t.is_conj():
        t = t.resolve_conj()
    if t.requires_grad:
        # only reached where no gradient flows through this call: inside an
        # operator's kernel (autograd is the operator's business) or on the
        # direct path, which is taken only when no gradient is needed
        t = t.detach()
    return t.contiguous().numpy()


def inplace_numpy(t, name):
    """The memory of a state tensor that is updated in place, never a copy."""
    _check_tensor(t, name)
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"`{name}` must be float32 or float64 to be updated in place, got {t.dtype}"
        )
    if not t.is_contiguous():
        raise ValueError(f"`{name}` must be contiguous: it is updated in place")
    return t.numpy()


def _from_numpy(arr, dtype):
    out = torch.from_numpy(np.ascontiguousarray(arr))
    if dtype is not None and out.dtype != dtype:
        out = out.to(dtype)
    return out


# Below this many elements in the largest tensor argument a call runs on
# the calling thread: waking a second thread costs more than the work (a
# decoding step is a few thousand elements).
_SMALL = 1 << 15


def _workers(size=None):
    """torch's intra-op thread count, or None (one thread) for small calls."""
    if size is not None and size < _SMALL:
        return None
    return max(1, torch.get_num_threads())


def _plain_eager(tensors):
    """Whether a call on `tensors` may skip the operator dispatcher.

    True in eager mode (not tracing for torch.compile, no dispatch mode such
    as FakeTensorMode active) when the arguments are plain tensors and none
    of them needs a gradient: the operator would then only run its CPU
    kernel, which is called directly, without the dispatcher's per-call
    cost.
    """
    if torch.compiler.is_compiling() or _dispatch_modes() or _functorch_level():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (type(t) not in _PLAIN or (grad and t.requires_grad)):
            return False
    return True


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _dispatch_modes():
    """Whether a dispatch mode (FakeTensorMode, a tracer) is active."""
    stack_len = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return True if stack_len is None else bool(stack_len())


def _functorch_level():
    """Whether a functorch transform (vmap, grad) is running."""
    functorch = getattr(torch._C, "_functorch", None)
    peek = getattr(functorch, "peek_interpreter_stack", None)
    return True if peek is None else peek() is not None


_BLAS_LOCK = threading.Lock()
_BLAS = {"depth": 0, "limiter": None, "controller": None}


@contextlib.contextmanager
def _blas_one_thread():
    """BLAS on the calling thread only, while a backward runs.

    The pullbacks split their work over a pool of `workers` threads whose
    matrix products are small; a threaded BLAS under them oversubscribes
    the cores (2 x 2 threads on 2 cores), which costs several times the
    work. threadpoolctl (optional) sets the limit; without it BLAS keeps its
    own setting. Concurrent backward calls share one limit, set by the first
    to enter and restored by the last to leave.
    """
    with _BLAS_LOCK:
        if _BLAS["depth"] == 0:
            if _BLAS["controller"] is None:
                try:
                    from threadpoolctl import ThreadpoolController
                except ImportError:
                    _BLAS["controller"] = False
                else:
                    _BLAS["controller"] = ThreadpoolController()
            ctl = _BLAS["controller"]
            _BLAS["limiter"] = ctl.limit(limits=1, user_api="blas") if ctl else None
        _BLAS["depth"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS["depth"] -= 1
            if _BLAS["depth"] == 0 and _BLAS["limiter"] is not None:
                _BLAS["limiter"].restore_original_limits()
                _BLAS["limiter"] = None


class _Op:
    """One differentiable function: forward and backward operators.

    Parameters
    ----------
    name : str
        The operator's name in the ``zilla_muf`` namespace.
    fun : callable
        The library function.
    params : list of (name, schema type)
        The operator's arguments, in order; tensor arguments are passed to
        `fun` by name, as are the others (after `convert`).
    differentiable : tuple of str
        The tensor arguments that get gradients.
    outputs : callable
        ``outputs(kwargs) -> list of (shape, dtype)`` of the results, for the
        fake kernels, from the (fake) input tensors and the options.
    convert : callable, optional
        Turns the operator's keyword arguments into `fun`'s.
    saved_backward : callable, optional
        ``saved_backward(numpy_kwargs) -> (out_like, make_backward)`` or
        None: a backward that needs nothing but the saved inputs, for
        :func:`zilla_muf._vjp.pullback_from`, so that the backward operator
        does not run the forward again; None falls back on
        :func:`zilla_muf.vjp` (which does).
    """

    def __init__(self, name, fun, params, differentiable, outputs, convert=None,
                 workers=True, saved_backward=None):
        self.saved_backward = saved_backward
        self.name = name
        self.fun = fun
        self.params = params
        self.names = [p for p, _ in params]
        self.tensor_names = [p for p, t in params if t.startswith("Tensor")]
        self.differentiable = differentiable
        self.outputs = outputs
        self.convert = convert or (lambda kw: kw)
        self.workers = workers
        args = ", ".join(f"{t} {p}" for p, t in params)
        self.forward = torch.library.custom_op(
            f"zilla_muf::{name}", self._forward_impl, mutates_args=(),
            device_types="cpu", schema=f"({args}) -> Tensor[]",
        )
        self.forward.register_fake(self._forward_fake)
        cts = ", ".join(f"Tensor? ct{i}" for i in range(self._nout_max()))
        self.backward = torch.library.custom_op(
            f"zilla_muf::{name}_backward", self._backward_impl, mutates_args=(),
            device_types="cpu", schema=f"({args}, {cts}) -> Tensor[]",
        )
        self.backward.register_fake(self._backward_fake)
        self.forward.register_autograd(self._autograd_backward,
                                       setup_context=self._setup_context)

    def _nout_max(self):
        return 3

    # -- forward
    def _kwargs(self, args):
        kw = dict(zip(self.names, args))
        numpy_kw = {}
        for p, t in self.params:
            v = kw[p]
            numpy_kw[p] = to_numpy(v, p) if t.startswith("Tensor") else v
        numpy_kw = self.convert(numpy_kw)
        if self.workers:
            size = max((kw[p].numel() for p in self.tensor_names if kw[p] is not None),
                       default=0)
            numpy_kw["workers"] = _workers(size)
        return kw, numpy_kw

    def _out_dtype(self, kw):
        for p in self.tensor_names:
            v = kw[p]
            if v is not None and v.dtype in _HALF:
                return v.dtype
        return None

    def _forward_impl(self, *args):
        kw, numpy_kw = self._kwargs(args)
        out = self.fun(**numpy_kw)
        out = out if isinstance(out, tuple) else (out,)
        dtype = self._out_dtype(kw)
        return [_from_numpy(y, dtype) for y in out]

    def _forward_fake(self, *args):
        kw = dict(zip(self.names, args))
        dtype = self._out_dtype(kw)
        return [torch.empty(shape, dtype=dtype or dt, device="cpu")
                for shape, dt in self.outputs(kw)]

    # -- backward
    def _backward_impl(self, *args):
        n = len(self.names)
        kw, numpy_kw = self._kwargs(args[:n])
        cts = [to_numpy(c, "cotangent") for c in args[n:]]
        with _blas_one_thread():
            saved = self.saved_backward(numpy_kw) if self.saved_backward else None
            if saved is None:
                out, pullback = vjp(self.fun, **numpy_kw)
            else:
                out, make_backward = saved
                pullback = pullback_from(self.fun, make_backward, out, **numpy_kw)
            nout = len(out) if isinstance(out, tuple) else 1
            cts = cts[:nout]
            grads = pullback(tuple(cts) if isinstance(out, tuple) else cts[0])
        result = []
        for p in self.differentiable:
            v = kw[p]
            if v is None or p not in grads:
                result.append(torch.empty(0, device="cpu"))
            else:
                result.append(_from_numpy(grads[p], v.dtype))
        return result

    def _backward_fake(self, *args):
        kw = dict(zip(self.names, args[:len(self.names)]))
        return [torch.empty(0, device="cpu") if kw[p] is None else torch.empty_like(kw[p])
                for p in self.differentiable]

    def _setup_context(self, ctx, inputs, output):
        tensors = [v for v in inputs if isinstance(v, torch.Tensor)]
        ctx.save_for_backward(*tensors)
        ctx.layout = [isinstance(v, torch.Tensor) for v in inputs]
        ctx.others = [None if isinstance(v, torch.Tensor) else v for v in inputs]

    def _autograd_backward(self, ctx, grads):
        saved = iter(ctx.saved_tensors)
        inputs = [next(saved) if is_t else other
                  for is_t, other in zip(ctx.layout, ctx.others)]
        cts = list(grads) + [None] * (self._nout_max() - len(grads))
        gin = self.backward(*inputs, *cts)
        by_name = dict(zip(self.differentiable, gin))
        result = []
        for p, v in zip(self.names, inputs):
            g = by_name.get(p)
            if (g is None or not isinstance(v, torch.Tensor)
                    or (g.numel() == 0 and v.numel() != 0)):
                result.append(None)
            else:
                result.append(g)
        return tuple(result)

    def __call__(self, **kw):
        for p in self.tensor_names:
            v = kw.get(p)
            if v is not None:
                _check_tensor(v, p)
                if not v.is_contiguous():
                    # made contiguous here, in the graph, rather than in the
                    # kernel: the backward operator then gets the saved
                    # contiguous tensor and does not copy it again
                    kw[p] = v.contiguous()
        args = [kw.get(p) for p in self.names]
        if _plain_eager([kw.get(p) for p in self.tensor_names]):
            return self._forward_impl(*args)
        return self.forward(*args)


def _ssd_outputs(kw):
    x = kw["x"]
    b, _, h, p = x.shape
    n = kw["B"].shape[-1]
    shapes = [(tuple(x.shape), x.dtype)]
    if kw["return_final_states"]:
        shapes.append(((b, h, p, n), x.dtype))
    if kw["return_varlen_states"]:
        nseq = kw["cu_seqlens"].shape[0] - 1
        shapes.append(((nseq, h, p, n), x.dtype))
    return shapes


def _ssd_convert(kw):
    kw = dict(kw)
    kw["dt_limit"] = (kw.pop("dt_limit_lo"), kw.pop("dt_limit_hi"))
    for name in ("cu_seqlens", "return_varlen_states"):
        if kw[name] is None or kw[name] is False:
            kw.pop(name)
    return kw


def _ssd_saved_backward(numpy_kw):
    """The SSD pullback from the saved inputs, without a second forward.

    Without a gate `z` the backward needs only the inputs (with one, it
    needs the output before the gate, and the rule recomputes it); packed
    calls with per-sequence states keep the rule's own handling.
    """
    if numpy_kw.get("z") is not None or "cu_seqlens" in numpy_kw:
        return None
    from zilla_muf import ssd as _ssd_module
    from zilla_muf._config import running_threads
    from zilla_muf._validation import resolve_workers, result_dtype

    def make_backward(args):
        p = _ssd_module._Problem(
            args["x"], args["dt"], args["A"], args["B"], args["C"], D=args["D"],
            dt_bias=args["dt_bias"], initial_states=args["initial_states"],
            seq_idx=args["seq_idx"], dt_softplus=args["dt_softplus"],
            dt_limit=args["dt_limit"])
        cs = _ssd_module._chunk_size(args["chunk_size"], p.L)
        nthreads = running_threads(resolve_workers(args.get("workers")))
        ret = bool(args["return_final_states"])

        def backward(ct):
            gy, gfinal = ct if ret else (ct, None)
            return _ssd_module._ssd_backward(p, cs, None, gy, gfinal, nthreads)

        return backward

    x = numpy_kw["x"]
    dtype = result_dtype(allow_complex=False, **{
        k: numpy_kw[k] for k in ("x", "dt", "A", "B", "C", "D", "dt_bias",
                                 "initial_states")})
    b, _, h, p = x.shape
    like = [np.broadcast_to(np.zeros((), dtype), x.shape)]
    if numpy_kw["return_final_states"]:
        like.append(np.broadcast_to(np.zeros((), dtype),
                                    (b, h, p, numpy_kw["B"].shape[-1])))
    return (tuple(like) if len(like) > 1 else like[0]), make_backward


def _selective_outputs(kw):
    u = kw["u"]
    shapes = [(tuple(u.shape), u.dtype)]
    if kw["return_last_state"]:
        b, d, _ = u.shape
        n = kw["A"].shape[-1]
        dtype = kw["A"].dtype if kw["A"].is_complex() else u.dtype
        shapes.append(((b, d, n), dtype))
    return shapes


def _conv_outputs(kw):
    x = kw["x"]
    shapes = [(tuple(x.shape), x.dtype)]
    if kw["return_final_states"]:
        b, d, _ = x.shape
        shapes.append(((b, d, kw["weight"].shape[-1] - 1), x.dtype))
    return shapes


def _conv_convert(kw):
    kw = dict(kw)
    if kw.get("seq_idx") is None:
        kw.pop("seq_idx", None)
    return kw


def _norm_outputs(kw):
    return [(tuple(kw["x"].shape), kw["x"].dtype)]


def _norm_saved_backward(numpy_kw):
    """The norm's pullback from the saved inputs, without a second forward."""
    from zilla_muf._validation import result_dtype
    from zilla_muf.stable_ops import _rms_norm_backward

    x, w, z = numpy_kw["x"], numpy_kw.get("weight"), numpy_kw.get("z")
    dtype = result_dtype(allow_complex=False, x=x, weight=w, z=z)
    shape = x.shape if z is None else np.broadcast_shapes(x.shape, z.shape)
    like = np.broadcast_to(np.zeros((), dtype), shape)
    return like, lambda args: _rms_norm_backward(args, dtype, shape)


def _norm_convert(kw):
    kw = dict(kw)
    if kw["group_size"] is None or kw["group_size"] <= 0:
        kw["group_size"] = None
    return kw


def _scan_outputs(kw):
    shape = torch.broadcast_shapes(kw["a"].shape, kw["b"].shape)
    dtype = torch.promote_types(kw["a"].dtype, kw["b"].dtype)
    return [(tuple(shape), dtype)]


OPS = {
    "ssd_combined": _Op(
        "ssd_combined", zilla_muf.ssd_chunk_scan_combined,
        [("x", "Tensor"), ("dt", "Tensor"), ("A", "Tensor"), ("B", "Tensor"),
         ("C", "Tensor"), ("chunk_size", "int"), ("D", "Tensor?"), ("z", "Tensor?"),
         ("dt_bias", "Tensor?"), ("initial_states", "Tensor?"),
         ("seq_idx", "Tensor?"), ("cu_seqlens", "Tensor?"), ("dt_softplus", "bool"),
         ("dt_limit_lo", "float"), ("dt_limit_hi", "float"),
         ("return_final_states", "bool"), ("return_varlen_states", "bool")],
        ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"),
        _ssd_outputs, _ssd_convert, saved_backward=_ssd_saved_backward),
    "selective_scan": _Op(
        "selective_scan", zilla_muf.selective_scan,
        [("u", "Tensor"), ("delta", "Tensor"), ("A", "Tensor"), ("B", "Tensor"),
         ("C", "Tensor"), ("D", "Tensor?"), ("z", "Tensor?"), ("delta_bias", "Tensor?"),
         ("delta_softplus", "bool"), ("return_last_state", "bool")],
        ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"),
        _selective_outputs),
    "causal_conv1d": _Op(
        "causal_conv1d", zilla_muf.causal_conv1d,
        [("x", "Tensor"), ("weight", "Tensor"), ("bias", "Tensor?"),
         ("seq_idx", "Tensor?"), ("initial_states", "Tensor?"),
         ("return_final_states", "bool"), ("activation", "str?")],
        ("x", "weight", "bias", "initial_states"),
        _conv_outputs, _conv_convert),
    "rms_norm": _Op(
        "rms_norm", zilla_muf.rms_norm,
        [("x", "Tensor"), ("weight", "Tensor?"), ("z", "Tensor?"), ("eps", "float"),
         ("group_size", "int?"), ("norm_before_gate", "bool")],
        ("x", "weight", "z"),
        _norm_outputs, _norm_convert, saved_backward=_norm_saved_backward),
    "linear_scan": _Op(
        "linear_scan", zilla_muf.linear_scan,
        [("a", "Tensor"), ("b", "Tensor"), ("h0", "Tensor?"), ("axis", "int"),
         ("reverse", "bool")],
        ("a", "b", "h0"),
        _scan_outputs),
}


class _SplitLayerOp:
    """The Mamba-2 layer of a training step between its projections
    (:class:`zilla_muf.ssd._SplitLayer`) as one operator pair.

    Unlike the operators above, the forward returns, after the output,
    what the backward needs (the SSD output before the norm, the
    convolution's pre-activation, the SSD's inputs, the chunk states): the
    backward operator takes them back as a list of tensors and runs no
    part of the forward. They are saved for backward and never
    differentiated.
    """

    differentiable = ("zxbcdt", "conv1d_weight", "conv1d_bias", "dt_bias", "A", "D",
                      "rmsnorm_weight")
    names = differentiable + ("chunk_size", "headdim", "ngroups", "eps",
                              "norm_before_gate", "dt_limit_lo", "dt_limit_hi")

    def __init__(self):
        args = ("Tensor zxbcdt, Tensor conv1d_weight, Tensor? conv1d_bias, "
                "Tensor? dt_bias, Tensor A, Tensor D, Tensor rmsnorm_weight, "
                "int chunk_size, int headdim, int ngroups, float eps, "
                "bool norm_before_gate, float dt_limit_lo, float dt_limit_hi")
        self.forward = torch.library.custom_op(
            "zilla_muf::mamba2_split_layer", self._forward_impl, mutates_args=(),
            device_types="cpu", schema=f"({args}) -> Tensor[]")
        self.forward.register_fake(self._forward_fake)
        self.backward = torch.library.custom_op(
            "zilla_muf::mamba2_split_layer_backward", self._backward_impl,
            mutates_args=(), device_types="cpu",
            schema=f"({args}, Tensor[] saved, Tensor gout) -> Tensor[]")
        self.backward.register_fake(self._backward_fake)
        self.forward.register_autograd(self._autograd_backward,
                                       setup_context=self._setup_context)

    def _layer(self, args):
        from zilla_muf.ssd import _SplitLayer

        kw = dict(zip(self.names, args))
        arrays = [to_numpy(kw[p], p) for p in self.differentiable]
        return _SplitLayer(
            *arrays, chunk_size=kw["chunk_size"], headdim=kw["headdim"],
            ngroups=kw["ngroups"], eps=kw["eps"],
            norm_before_gate=kw["norm_before_gate"],
            dt_limit=(kw["dt_limit_lo"], kw["dt_limit_hi"]),
            nthreads=_workers(kw["zxbcdt"].numel()) or 1)

    def _forward_impl(self, *args):
        out, saved = self._layer(args).forward(keep=True)
        return [_from_numpy(a, None) for a in (out,) + saved]

    @staticmethod
    def _dtype(tensors):
        dtype = torch.float32
        for t in tensors:
            if t is not None:
                dtype = torch.promote_types(dtype, t.dtype)
        return dtype

    def _forward_fake(self, *args):
        from zilla_muf.ssd import _SplitLayer

        kw = dict(zip(self.names, args))
        dtype = self._dtype([kw[p] for p in self.differentiable])
        nb, L = kw["zxbcdt"].shape[:2]
        H, P, G = kw["A"].shape[0], kw["headdim"], kw["ngroups"]
        N = (kw["conv1d_weight"].shape[0] - H * P) // (2 * G)
        shapes = [(nb, L, H * P)] + _SplitLayer.saved_shapes(
            nb, L, H, P, G, N, kw["chunk_size"], dtype == torch.float32)
        return [torch.empty(s, dtype=dtype, device="cpu") for s in shapes]

    def _backward_impl(self, *args):
        n = len(self.names)
        saved = [t.numpy() for t in args[n]]
        gout = to_numpy(args[n + 1], "gout")
        layer = self._layer(args[:n])
        with _blas_one_thread():
            grads = layer.backward(saved, gout)
        return [torch.empty(0, device="cpu") if grads[p] is None
                else _from_numpy(grads[p], v.dtype)
                for p, v in zip(self.differentiable, args[:n])]

    def _backward_fake(self, *args):
        return [torch.empty(0, device="cpu") if v is None else torch.empty_like(v)
                for v in args[:len(self.differentiable)]]

    def _setup_context(self, ctx, inputs, output):
        ctx.mark_non_differentiable(*output[1:])
        # the kept tensors get no cotangents: no zeros are made for them
        ctx.set_materialize_grads(False)
        ctx.n_inputs = len(inputs)
        ctx.is_tensor = [isinstance(v, torch.Tensor) for v in inputs]
        ctx.others = [None if t else v for t, v in zip(ctx.is_tensor, inputs)]
        ctx.save_for_backward(*[v for v in inputs if isinstance(v, torch.Tensor)],
                              *output[1:])

    def _autograd_backward(self, ctx, grads):
        tensors = iter(ctx.saved_tensors)
        inputs = [next(tensors) if t else o for t, o in zip(ctx.is_tensor, ctx.others)]
        saved = list(tensors)
        gout = grads[0]
        if gout is None:
            return (None,) * ctx.n_inputs
        gin = self.backward(*inputs, saved, gout.contiguous())
        result = [None if v is None or (g.numel() == 0 and v.numel() != 0) else g
                  for g, v in zip(gin, inputs)]
        return tuple(result) + (None,) * (ctx.n_inputs - len(result))

    def __call__(self, **kw):
        for p in self.differentiable:
            if kw.get(p) is not None:
                _check_tensor(kw[p], p)
        args = [kw.get(p) for p in self.names]
        tensors = [kw.get(p) for p in self.differentiable]
        if _plain_eager(tensors):
            # no gradient to record: the output only, nothing kept
            out = self._layer(args).forward(keep=False)
            return _from_numpy(out, None)
        return self.forward(*args)[0]


SPLIT_LAYER = _SplitLayerOp()


def call(name, **kw):
    """Run operator `name` with keyword arguments; a tuple of tensors."""
    return tuple(OPS[name](**kw))


# -- in-place decode steps (no gradient: they advance a cache)

def _decode_step(fun, state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                 state_batch_indices, **kw):
    """One decoding step of `fun`, advancing `state`'s own memory."""
    if state_batch_indices is not None:
        kw["state_batch_indices"] = to_numpy(state_batch_indices, "state_batch_indices")
    y = fun(inplace_numpy(state, "state"), to_numpy(x, "x"), to_numpy(dt, "dt"),
            to_numpy(A, "A"), to_numpy(B, "B"), to_numpy(C, "C"), D=to_numpy(D, "D"),
            z=to_numpy(z, "z"), dt_bias=to_numpy(dt_bias, "dt_bias"),
            dt_softplus=dt_softplus, **kw)
    return _from_numpy(y, x.dtype if x.dtype in _HALF else None)


def _ssd_state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor,
                      A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      D: torch.Tensor | None, z: torch.Tensor | None,
                      dt_bias: torch.Tensor | None, dt_softplus: bool,
                      state_batch_indices: torch.Tensor | None) -> torch.Tensor:
    return _decode_step(zilla_muf.selective_state_update, state, x, dt, A, B, C, D,
                        z, dt_bias, dt_softplus, state_batch_indices,
                        workers=_workers())


_ssd_state_update_op = torch.library.custom_op(
    "zilla_muf::ssd_state_update", _ssd_state_update, mutates_args=("state",),
    device_types="cpu")


@_ssd_state_update_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices):
    return torch.empty_like(x)


def _selective_scan_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor,
                           A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                           D: torch.Tensor | None, z: torch.Tensor | None,
                           dt_bias: torch.Tensor | None, dt_softplus: bool,
                           state_batch_indices: torch.Tensor | None) -> torch.Tensor:
    return _decode_step(zilla_muf.selective.selective_scan_update, state, x, dt, A, B,
                        C, D, z, dt_bias, dt_softplus, state_batch_indices,
                        workers=_workers())


_selective_scan_update_op = torch.library.custom_op(
    "zilla_muf::selective_scan_update", _selective_scan_update, mutates_args=("state",),
    device_types="cpu")


@_selective_scan_update_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices):
    return torch.empty_like(x)


def _conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None, activation: str | None,
                   conv_state_indices: torch.Tensor | None) -> torch.Tensor:
    kw = {}
    if conv_state_indices is not None:
        kw["conv_state_indices"] = to_numpy(conv_state_indices, "conv_state_indices")
    y = zilla_muf.causal_conv1d_update(
        to_numpy(x, "x"), inplace_numpy(conv_state, "conv_state"),
        to_numpy(weight, "weight"), to_numpy(bias, "bias"), activation=activation, **kw)
    return _from_numpy(y, x.dtype if x.dtype in _HALF else None)


_conv1d_update_op = torch.library.custom_op(
    "zilla_muf::conv1d_update", _conv1d_update, mutates_args=("conv_state",),
    device_types="cpu")


@_conv1d_update_op.register_fake
def _(x, conv_state, weight, bias, activation, conv_state_indices):
    return torch.empty_like(x)


_increment_version = getattr(torch.autograd.graph, "increment_version", None)


class _InPlace:
    """An in-place operator, called directly in plain eager mode.

    A decoding step is a few microseconds of work; the dispatcher's
    handling of a mutating custom operator costs far more. In eager mode,
    with plain tensors none of which needs a gradient, the kernel runs
    directly and the mutated tensor's version counter is bumped as the
    operator would; otherwise (torch.compile, a dispatch mode, a tensor
    that requires grad) the registered operator runs.
    """

    def __init__(self, op, impl, mutated):
        self.op, self.impl, self.mutated = op, impl, mutated

    def __call__(self, *args):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if _increment_version is not None and _plain_eager(tensors):
            out = self.impl(*args)
            _increment_version(args[self.mutated])
            return out
        return self.op(*args)


INPLACE = {
    "ssd_state_update": _InPlace(_ssd_state_update_op, _ssd_state_update, 0),
    "selective_scan_update": _InPlace(_selective_scan_update_op,
                                      _selective_scan_update, 0),
    "conv1d_update": _InPlace(_conv1d_update_op, _conv1d_update, 1),
}
