"""Shared parameter text for the public docstrings (a small docfiller).

A docstring line that holds only a placeholder such as ``%(workers)s`` is
replaced by the entry of :data:`PARAMS` of that name, indented as the
placeholder was. Only whole-line placeholders are replaced, so ``%`` signs
elsewhere in a docstring (math, format examples) need no escaping. Use the
:func:`fill_doc` decorator on a function whose docstring holds placeholders.
"""

import re

__all__ = ["PARAMS", "fill_doc"]

PARAMS = {
    "x_real": """\
x : array_like
    Real input, float32 or float64 (integers and bools are promoted to
    float64, float16 to float32; complex input raises ``TypeError``).""",
    "workers": """\
workers : int, optional
    Threads to use: None (default) is 1, -1 is all cores, and other
    negative values count back from all cores as in :mod:`scipy.fft`
    (-2 is all cores but one). More threads than cores, or than the input
    has work for, are not started: a larger value behaves as -1 would, and
    a small input runs on fewer threads. 0 raises ``ValueError``. Results
    do not depend on the value.""",
    "axis_row": """\
axis : int, optional
    The axis to work along. Default -1. Out of range raises ``ValueError``
    (it is never wrapped).""",
    "out_x": """\
out : ndarray, optional
    Where to write the result: a writable ndarray of exactly the result's
    shape and dtype, with any strides; it is returned. ``out=x`` (the same
    array) computes in place, exactly. An `out` of another shape or dtype,
    read-only, or sharing memory with `x` in any other way raises
    ``ValueError``. Default: a new array.""",
    "dtype_complex": """\
Inputs may be float32, float64, complex64 or complex128; integers and bools
promote to float64 and float16 to float32. The result has the
``np.result_type`` of the inputs, and a Python number never raises its
precision (float32 with 0.5 stays float32, as NumPy's NEP 50 says).""",
    "scan_inputs": """\
a : array_like
    Decays :math:`a_t`, float32, float64, complex64 or complex128 (integers
    and bools are promoted to float64). Broadcast against `b`.
b : array_like
    Inputs :math:`b_t`. Broadcast against `a`.
h0 : array_like, optional
    The state before the first step, broadcastable to the result shape
    with `axis` removed. Default 0.""",
    "scan_axis": """\
axis : int, optional
    The time axis. Default -1.
reverse : bool, optional
    Run from the last element to the first:
    :math:`h_t = a_t h_{t+1} + b_t`, :math:`h_n = h_0` (the adjoint scan).
return_final : bool, optional
    Also return the last state computed.""",
    "scan_workers": """\
workers : int, optional
    Threads to use at most: None is 1, -1 all cores, negative values
    count back from all cores as in :mod:`scipy.fft`. A problem too
    small to share (under 32768 elements per thread) uses fewer. The
    work is cut up for this many threads; when other processes keep
    cores busy it runs on the free cores only (a descheduled thread
    would hold up the others), with the same result.""",
    "scan_out": """\
out : ndarray, optional
    Where to write the result: a writable array of exactly the result's
    shape and dtype, any strides. It may be `b` itself (the scan then
    runs in place, with the same result); it must not overlap `a` or
    `h0`. Default: a new array.""",
    "scan_returns": """\
h : ndarray
    The states, of the broadcast shape of `a` and `b` and dtype
    ``np.result_type`` of the inputs; ``h[..., t]`` (along `axis`) is the
    state after step t. `out` when given.
h_final : ndarray
    Only with ``return_final=True``: the last state computed, the shape of
    `h` without `axis` (`h0` when the axis has length 0).""",
}

_PLACEHOLDER = re.compile(r"^(\s*)%\((\w+)\)s\s*$")


def fill_doc(func):
    """Replace the whole-line ``%(name)s`` placeholders of ``func.__doc__``.

    Raises ``KeyError`` (at import) for an unknown name, so a typo cannot
    ship an unfilled docstring.
    """
    doc = func.__doc__
    if doc is None:          # python -OO
        return func
    lines = []
    for line in doc.split("\n"):
        m = _PLACEHOLDER.match(line)
        if m is None:
            lines.append(line)
            continue
        indent, name = m.groups()
        lines.extend(indent + t if t else t for t in PARAMS[name].split("\n"))
    func.__doc__ = "\n".join(lines)
    return func
