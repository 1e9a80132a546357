"""Argument handling shared by every public function.

One helper per concern, so that every wrapper resolves dtypes, normalises
axes, counts threads and checks shapes the same way and with the same words:

- :func:`result_dtype` -- the computation dtype of several named arrays;
- :func:`dtype_operand` -- a Python number stays weak in :func:`result_dtype`;
- :func:`as_array` -- an argument as an ndarray of a checked kind;
- :func:`normalize_axis` -- an ``axis`` argument, never wrapped silently;
- :func:`resolve_workers` -- the ``workers`` argument, as in ``scipy.fft``;
- :func:`positive_int` -- integer options such as ``chunk_size``;
- :func:`broadcast_shapes` -- broadcasting with the offending names;
- :func:`check_shape` -- an exact expected shape;
- :func:`inplace_array` -- an output argument a function writes into;
- :func:`output_array` -- an ``out=`` argument;
- :func:`real_dtype`, :func:`complex_dtype` -- the counterpart of a dtype;
- :func:`require_real` -- arrays that must not be complex;
- :func:`real_scalar` -- a real scalar option such as ``eps``;
- :func:`at_least_1d` -- an array that needs an axis.
"""

import operator
import os

import numpy as np

__all__ = [
    "as_array",
    "at_least_1d",
    "broadcast_shapes",
    "check_shape",
    "complex_dtype",
    "dtype_operand",
    "inplace_array",
    "max_workers",
    "normalize_axis",
    "output_array",
    "positive_int",
    "real_dtype",
    "real_scalar",
    "require_real",
    "resolve_workers",
    "result_dtype",
]

# Integer options are passed to kernels as C ``Py_ssize_t``/``int``: a value
# at or beyond this bound cannot be meant and would overflow there.
_INT_LIMIT = 2 ** 63

_REAL = (np.dtype(np.float32), np.dtype(np.float64))
_COMPLEX = (np.dtype(np.complex64), np.dtype(np.complex128))


def as_array(x, name):
    """Return `x` as an ndarray, rejecting kinds no kernel computes with.

    Integers and bools are accepted (they promote to float64 later); object,
    string, bytes, datetime, timedelta and void arrays raise ``TypeError``,
    and so does a lazy Dask collection, which ``np.asarray`` would compute
    silently (the check reads attributes only and never imports dask).
    """
    if type(x) is np.ndarray and x.dtype.kind in "biufc":
        return x
    if hasattr(x, "__dask_graph__") or type(x).__module__.startswith("dask."):
        raise TypeError(
            f"`{name}` is a Dask collection ({type(x).__name__}); the in-memory "
            f"functions would compute it whole. Use the same function from "
            f"`zilla_muf.dask`, or pass `{name}.compute()`"
        )
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"`{name}` must be array_like of numbers: {exc}") from None
    if arr.dtype.kind not in "biufc":
        raise TypeError(
            f"`{name}` must have a numeric dtype, got dtype {arr.dtype}"
        )
    return arr


def _kernel_dtype(dt):
    """The dtype a kernel computes in for an input of dtype `dt`."""
    if dt.kind in "bui":
        return np.dtype(np.float64)
    if dt.kind == "f":
        if dt.itemsize <= 4:
            return np.dtype(np.float32)
        return np.dtype(np.float64)
    # complex
    if dt.itemsize <= 8:
        return np.dtype(np.complex64)
    return np.dtype(np.complex128)


def result_dtype(*, allow_complex=True, **arrays):
    """The dtype the computation runs in for the named arrays.

    Follows the package convention: ``np.result_type`` of the inputs, with
    integers and bools promoted to float64, float16 to float32 and long
    double to float64. ``None`` values are ignored.

    Parameters
    ----------
    allow_complex : bool
        When False, a complex input raises ``TypeError`` naming it.
    **arrays
        The arguments, by their public names, as ndarrays (see
        :func:`as_array`), plain Python numbers (weak: they decide only the
        kind, see :func:`dtype_operand`) or None.
    """
    # the common case: every argument an array of one kernel dtype
    dts = {arr.dtype for arr in arrays.values()
           if arr is not None and type(arr) is np.ndarray}
    if len(dts) == 1 and all(arr is None or type(arr) is np.ndarray
                             for arr in arrays.values()):
        (dt,) = dts
        if dt in _REAL or (allow_complex and dt in _COMPLEX):
            return dt
    kinds = []
    weak = []
    for name, arr in arrays.items():
        if arr is None:
            continue
        if type(arr) in _PY_SCALARS:
            # a Python number is "weak", as in np.result_type (NEP 50): it
            # only decides the kind (float32 * 0.5 stays float32)
            if type(arr) is complex and not allow_complex:
                raise TypeError(f"`{name}` must be real, got {arr!r}")
            weak.append(arr)
            continue
        if arr.dtype.kind not in "biufc":
            raise TypeError(
                f"`{name}` must have a numeric dtype, got dtype {arr.dtype}"
            )
        if arr.dtype.kind == "c" and not allow_complex:
            raise TypeError(
                f"`{name}` must be real (float32 or float64), got dtype {arr.dtype}"
            )
        kinds.append(_kernel_dtype(arr.dtype))
    if not kinds and not weak:
        return np.dtype(np.float64)
    return _kernel_dtype(np.result_type(*kinds, *weak))


_PY_SCALARS = (bool, int, float, complex)


def dtype_operand(value, arr):
    """What to pass to :func:`result_dtype` for an argument.

    `value` itself when it is a plain Python number (weak, as NumPy treats
    Python scalars), otherwise its array `arr` (see :func:`as_array`).
    """
    return value if type(value) in _PY_SCALARS else arr


def normalize_axis(axis, ndim, name="axis"):
    """Return `axis` as an index in ``range(ndim)``.

    Negative values count from the end; anything outside ``[-ndim, ndim)``
    raises ``ValueError`` (it is never wrapped modulo `ndim`).
    """
    try:
        ax = operator.index(axis)
    except TypeError:
        raise TypeError(f"`{name}` must be an integer, got {axis!r}") from None
    if not -ndim <= ax < ndim:
        raise ValueError(
            f"`{name}` must be in the range [{-ndim}, {ndim}) for an input "
            f"of {ndim} dimension(s), got {ax}"
        )
    return ax % ndim


def max_workers():
    """The most threads any kernel starts: the number of CPUs.

    More threads than cores only adds start-up cost and contention (and
    tens of thousands of them exhaust the OpenMP runtime), so larger
    requests are capped here, for every function. Read once, at import:
    ``os.cpu_count()`` costs tens of microseconds, as much as a whole
    decode step.
    """
    return _NCPU


_NCPU = os.cpu_count() or 1


def resolve_workers(workers, name="workers"):
    """Return the number of threads a kernel should use.

    ``None`` means 1; a positive integer is taken as is, up to
    :func:`max_workers` (a larger request behaves as ``-1``); ``-1`` means
    all cores and other negatives count back from there as in ``scipy.fft``
    (``-2`` is all cores but one). ``0``, values below ``-cpu_count`` and
    values of magnitude ``2**63`` or more raise ``ValueError``. Callers that
    know the amount of work cap the result further.
    """
    if workers is None:
        return 1
    if isinstance(workers, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be an integer or None, got {workers!r}")
    try:
        w = operator.index(workers)
    except TypeError:
        raise TypeError(f"`{name}` must be an integer or None, got {workers!r}") from None
    if not -_INT_LIMIT < w < _INT_LIMIT:
        raise ValueError(
            f"`{name}` must be an integer of magnitude below 2**63, got {w}"
        )
    ncpu = max_workers()
    if w > 0:
        return min(w, ncpu)
    if w == 0:
        raise ValueError(f"`{name}` must not be 0, got 0")
    n = ncpu + 1 + w
    if n < 1:
        raise ValueError(
            f"`{name}` = {w} asks for {n} threads on a machine with {ncpu} "
            f"cores; use a value in [-{ncpu}, -1] or a positive integer"
        )
    return n


def positive_int(value, name, allow_none=False):
    """Return `value` as a positive Python int, or None when allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}") from None
    if v < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {v}")
    if v >= _INT_LIMIT:
        raise ValueError(
            f"`{name}` must be a positive integer below 2**63, got {v}"
        )
    return v


def real_dtype(dtype):
    """The real dtype of the same precision: float32 for float32 and
    complex64, float64 for float64 and complex128."""
    dt = np.dtype(dtype)
    single = dt in (np.dtype(np.float32), np.dtype(np.complex64))
    return np.dtype(np.float32) if single else np.dtype(np.float64)


def complex_dtype(dtype):
    """The complex dtype of the same precision: complex64 for float32 and
    complex64, complex128 for float64 and complex128."""
    single = real_dtype(dtype) == np.dtype(np.float32)
    return np.dtype(np.complex64) if single else np.dtype(np.complex128)


def require_real(**arrays):
    """Raise ``TypeError`` naming the first complex array (None is skipped)."""
    for name, arr in arrays.items():
        if arr is not None and np.iscomplexobj(arr):
            what = f"dtype {arr.dtype}" if hasattr(arr, "dtype") else repr(arr)
            raise TypeError(
                f"`{name}` must be real (float32 or float64), got {what}"
            )


def real_scalar(value, name):
    """A real scalar option (``eps``, ``beta``, ...) as a Python float.

    Bools, complex numbers, arrays of any other shape than ``()`` and
    non-numbers raise ``TypeError`` naming the argument.
    """
    if isinstance(value, (bool, np.bool_)) or not np.isrealobj(value) \
            or np.ndim(value) != 0:
        raise TypeError(f"`{name}` must be a real number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a real number, got {value!r}") from None


def at_least_1d(arr, name, what="(..., n)"):
    """Raise ``ValueError`` naming `arr` when it is 0-d."""
    if arr.ndim == 0:
        raise ValueError(f"`{name}` must have shape {what}, got shape ()")
    return arr


def broadcast_shapes(**shapes):
    """Broadcast the named shapes; on failure name every argument involved."""
    values = list(shapes.values())
    first = tuple(values[0]) if values else ()
    if all(tuple(v) == first for v in values):
        return first
    try:
        return np.broadcast_shapes(*values)
    except ValueError:
        desc = ", ".join(f"`{k}` {tuple(v)}" for k, v in shapes.items())
        raise ValueError(
            f"shapes do not broadcast together: {desc}"
        ) from None


def check_shape(arr, expected, name):
    """Raise ``ValueError`` unless ``arr.shape == expected``.

    `expected` may contain ``None`` for a dimension of any length.
    """
    shape = arr.shape
    ok = shape == expected or (len(shape) == len(expected) and all(
        e is None or e == s for e, s in zip(expected, shape)
    ))
    if not ok:
        exp = "(" + ", ".join("any" if e is None else str(e) for e in expected)
        exp += ",)" if len(expected) == 1 else ")"
        raise ValueError(f"`{name}` must have shape {exp}, got {shape}")
    return arr


def inplace_array(arr, name, dtypes=_REAL):
    """Check that `arr` can be updated in place by a compiled kernel.

    It must be an ndarray (``TypeError``) of one of `dtypes` (``TypeError``),
    writeable and C-contiguous (``ValueError``). Returns `arr` itself.
    """
    if not isinstance(arr, np.ndarray):
        raise TypeError(
            f"`{name}` must be a NumPy array (it is updated in place), "
            f"got {type(arr).__name__}"
        )
    if arr.dtype not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise TypeError(f"`{name}` must have dtype {allowed}, got dtype {arr.dtype}")
    if not arr.flags.writeable:
        raise ValueError(f"`{name}` must be writeable (it is updated in place)")
    if not arr.flags.c_contiguous:
        raise ValueError(
            f"`{name}` must be C-contiguous (it is updated in place); "
            f"use np.ascontiguousarray and keep the copy"
        )
    return arr


def output_array(out, shape, dtype, inputs=(), in_place=None, name="out"):
    """Check an ``out=`` argument and return it.

    `out` must be an ndarray (``TypeError``) of exactly `shape` and `dtype`,
    writeable, and must not share memory with any of `inputs` (a mapping of
    argument names to arrays); ``ValueError`` naming `out` otherwise. Any
    strides are accepted. `in_place`, when given, is the one input `out`
    may be (the same array, same memory and strides): the computation is
    then done in place.

    Returns
    -------
    out : ndarray
        `out` itself.
    """
    if not isinstance(out, np.ndarray):
        raise TypeError(
            f"`{name}` must be a NumPy array or None, got {type(out).__name__}"
        )
    if out.shape != tuple(shape):
        raise ValueError(
            f"`{name}` must have shape {tuple(shape)} (the result's), got {out.shape}"
        )
    if out.dtype != np.dtype(dtype):
        raise ValueError(
            f"`{name}` must have dtype {np.dtype(dtype)} (the result's), got "
            f"dtype {out.dtype}"
        )
    if not out.flags.writeable:
        raise ValueError(f"`{name}` must be writeable, got a read-only array")
    for arg, arr in inputs.items():
        if arr is None or not isinstance(arr, np.ndarray):
            continue
        if arg == in_place and arr is out:
            continue
        if arg == in_place and _same_view(arr, out):
            continue
        if _overlap(out, arr):
            if arg == in_place:
                raise ValueError(
                    f"`{name}` overlaps `{arg}` without being the same view of "
                    f"it; pass `{name}={arg}` (the same array) to compute in "
                    f"place, or a separate array"
                )
            raise ValueError(f"`{name}` must not overlap the input `{arg}`")
    return out


def _overlap(a, b):
    """True when `a` and `b` may share an element (exact for simple
    layouts, conservative when the exact question is too hard)."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=100_000))
    except np.exceptions.TooHardError:
        return True


def _same_view(a, b):
    """True when `a` and `b` view the same memory the same way."""
    return (a.shape == b.shape and a.dtype == b.dtype and a.strides == b.strides
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])
