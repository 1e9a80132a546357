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
- :func:`inplace_array` -- an output argument a function writes into.
"""

import operator
import os

import numpy as np

__all__ = [
    "as_array",
    "broadcast_shapes",
    "check_shape",
    "dtype_operand",
    "inplace_array",
    "normalize_axis",
    "positive_int",
    "resolve_workers",
    "result_dtype",
]

_REAL = (np.dtype(np.float32), np.dtype(np.float64))
_COMPLEX = (np.dtype(np.complex64), np.dtype(np.complex128))


def as_array(x, name):
    """Return `x` as an ndarray, rejecting kinds no kernel computes with.

    Integers and bools are accepted (they promote to float64 later); object,
    string, bytes, datetime, timedelta and void arrays raise ``TypeError``,
    and so does a lazy Dask collection, which ``np.asarray`` would compute
    silently (the check reads attributes only and never imports dask).
    """
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


def resolve_workers(workers, name="workers"):
    """Return the number of threads a kernel should use.

    ``None`` means 1; a positive integer is taken as is; ``-1`` means all
    cores and other negatives count back from there as in ``scipy.fft``
    (``-2`` is all cores but one). ``0`` and values below ``-cpu_count``
    raise ``ValueError``.
    """
    if workers is None:
        return 1
    if isinstance(workers, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be an integer or None, got {workers!r}")
    try:
        w = operator.index(workers)
    except TypeError:
        raise TypeError(f"`{name}` must be an integer or None, got {workers!r}") from None
    if w > 0:
        return w
    ncpu = os.cpu_count() or 1
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
    return v


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
    ok = len(shape) == len(expected) and all(
        e is None or e == s for e, s in zip(expected, shape)
    )
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
