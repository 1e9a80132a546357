"""zilla-muf: structured-matrix kernels for state space models and linear attention.

State space models (S4, Mamba, Mamba-2) and linear attention compute the same
object: a product with a structured (semiseparable, Toeplitz, Cauchy,
Vandermonde) matrix, evaluated as the chunked recurrence
``h_t = a_t * h_{t-1} + b_t``. zilla-muf provides those kernels for NumPy
arrays, in compiled, multithreaded form. Every public function is importable
from this package and from its module.

Modules
-------
scan
    The recurrence, by sequential, chunked and associative algorithms.
structured
    Products with semiseparable, causal Toeplitz, Cauchy and Vandermonde
    matrices, without forming them.
fft_conv
    Causal convolution by FFT. The module is callable:
    ``zilla_muf.fft_conv(signal, kernel)`` is
    ``zilla_muf.fft_conv.fft_conv(signal, kernel)``.
selective
    Mamba-1: the selective scan and the depthwise causal convolution.
stable_ops
    Overflow-free softmax, log-sum-exp, segment sums, gates, RMS norm.
discretize
    Zero-order-hold and bilinear discretisation, diagonal or dense.
complex_ops
    Complex exponentials and the conjugate-pair readout of diagonal SSMs.
ssd
    Mamba-2's structured state space duality: the chunked SSD layer, its four
    stages, the sequential and quadratic (attention) forms, and the one-token
    decoding update.
"""


def _has_kernels(folder):
    """Whether `folder` holds this package's compiled extensions."""
    import os
    from importlib.machinery import EXTENSION_SUFFIXES

    return any(os.path.isfile(os.path.join(folder, "_openmp_helpers" + suffix))
               for suffix in EXTENSION_SUFFIXES)


def _installed_copy():
    """The directory of an installed, compiled copy of this package.

    Running ``python -m zilla_muf`` or ``python -m pytest`` from the root of
    a source checkout puts the checkout first on ``sys.path``, so the
    uncompiled ``zilla_muf/`` source folder is imported instead of the
    installed package. Its modules are then taken from the installed copy,
    found on the rest of ``sys.path``.
    """
    import os
    import sys

    here = os.path.normcase(os.path.dirname(os.path.abspath(__file__)))
    for entry in sys.path:
        cand = os.path.join(os.path.abspath(entry or os.curdir), "zilla_muf")
        if os.path.normcase(cand) != here and _has_kernels(cand):
            return cand
    return None


try:
    from . import _openmp_helpers
except ImportError:
    import os as _os

    if _has_kernels(_os.path.dirname(_os.path.abspath(__file__))):
        raise  # the kernels are here but do not load: report why
    _where = _installed_copy()
    if _where is None:
        raise ImportError(
            "zilla_muf's compiled kernels are not built: this is the source "
            "tree. Install the package (`pip install .`), or for development "
            "`pip install --no-build-isolation -e .`."
        ) from None
    __path__[:] = [_where]
    from . import _openmp_helpers


# `fft_conv` is both a module and its function: the module is callable (see
# zilla_muf/fft_conv.py), so zilla_muf.fft_conv(...) and
# zilla_muf.fft_conv.fft_conv(...) are the same call.
from . import (
    complex_ops,
    discretize,
    fft_conv,
    scan,
    selective,
    ssd,
    stable_ops,
    structured,
)
from ._openmp_helpers import have_openmp
from ._vjp import vjp
from .complex_ops import complex_exp, conjugate_pair_output, diag_complex_matrix_exp
from .discretize import bilinear_discretize, zoh_discretize
from .scan import associative_scan, chunked_scan, linear_scan, sequential_scan
from .selective import causal_conv1d, causal_conv1d_update, selective_scan
from .ssd import (
    selective_state_update,
    ssd_chunk_cumsum,
    ssd_chunk_scan,
    ssd_chunk_scan_combined,
    ssd_chunk_state,
    ssd_quadratic,
    ssd_sequential,
    ssd_state_passing,
)
from .stable_ops import (
    log_softmax,
    log_sum_exp,
    logcumsumexp,
    rms_norm,
    segsum,
    sigmoid,
    silu,
    softmax,
    softplus,
)
from .structured import (
    cauchy_matvec,
    cauchy_operator,
    semiseparable_matrix,
    semiseparable_matvec,
    semiseparable_operator,
    toeplitz_matvec,
    toeplitz_operator,
    vandermonde_matvec,
    vandermonde_operator,
    vandermonde_rmatvec,
)

__version__ = "0.1.0"

# The public modules, and every public function of theirs.
_MODULES = ["complex_ops", "discretize", "fft_conv", "scan", "selective", "ssd",
            "stable_ops", "structured"]
__all__ = sorted(
    set(_MODULES)
    | {"buffer_cache", "have_openmp", "openmp_info", "vjp"}
    | {name for mod in _MODULES for name in globals()[mod].__all__}
)


def openmp_info(workers=None):
    """Report how the kernels parallelise on this build and machine.

    Parameters
    ----------
    workers : int, optional
        Threads to ask a parallel kernel for, as the ``workers`` argument of
        every function (None is 1, -1 all cores).

    Returns
    -------
    info : dict
        ``"openmp"``: whether the kernels were compiled with OpenMP;
        ``"max_threads"``: the OpenMP runtime's default thread count;
        ``"requested"``: the threads `workers` resolves to;
        ``"threads_used"``: how many distinct threads a parallel loop run with
        that request actually used (1 without OpenMP).

    Examples
    --------
    >>> import zilla_muf
    >>> info = zilla_muf.openmp_info(workers=1)
    >>> info["threads_used"]
    1
    """
    from ._openmp_helpers import max_threads, threads_used
    from ._validation import resolve_workers

    n = resolve_workers(workers)
    return {
        "openmp": have_openmp(),
        "max_threads": max_threads(),
        "requested": n,
        "threads_used": threads_used(n),
    }


def buffer_cache(max_bytes=None):
    """Report, and optionally resize, the cache of large output buffers.

    A new array's memory is mapped in by the operating system page by page
    when it is first written, and every page is zeroed then. For an output of
    tens of megabytes that costs about as much as the scan that fills it
    (see Notes). So the memory of large outputs is kept when they are freed,
    and the next output it fits reuses it.

    Parameters
    ----------
    max_bytes : int, optional
        The most memory the cache holds, in bytes; 0 turns it off and frees
        what it holds. None (default) leaves the limit as it is. The limit
        starts at 256 MiB.

    Returns
    -------
    info : dict
        ``"max_bytes"``: the limit; ``"cached_bytes"`` and
        ``"cached_blocks"``: the memory held now; ``"hits"`` and
        ``"misses"``: how many large outputs reused a block and how many
        did not, since the start.

    Raises
    ------
    ValueError
        If `max_bytes` is negative.
    TypeError
        If `max_bytes` is not an integer.

    Notes
    -----
    The outputs of the scan functions (:func:`linear_scan` and the others)
    of at least 1 MiB come from the cache. When such an array is freed, its
    block is kept if it fits under the limit; the oldest blocks make room,
    and at most 8 are held. A new output takes the smallest held block that
    is at least as large and no more than a quarter larger. The arrays are
    ordinary NumPy arrays; only NumPy's name of the allocator that made
    them (``numpy._core.multiarray.get_handler_name``) tells them apart.
    They can be freed, resized and pickled as any other, from any thread.

    On this project's benchmark machine, writing a fresh 64 MiB array takes
    5-6 ms longer than rewriting one already mapped, against 9-10 ms for a
    pass of ``np.add`` over arrays of that size.

    Examples
    --------
    >>> import numpy as np
    >>> import zilla_muf
    >>> a = np.full((4, 1 << 16), 0.5)
    >>> h = zilla_muf.linear_scan(a, a)      # 2 MiB: from the cache
    >>> del h                                # kept for the next output
    >>> zilla_muf.buffer_cache()["cached_blocks"] >= 1
    True
    >>> zilla_muf.buffer_cache(0)["cached_bytes"]   # turn it off
    0
    >>> _ = zilla_muf.buffer_cache(256 << 20)       # and on again
    """
    import operator

    from . import _buffers

    if max_bytes is not None:
        if isinstance(max_bytes, bool):
            raise TypeError("`max_bytes` must be an integer, got bool")
        try:
            limit = operator.index(max_bytes)
        except TypeError:
            raise TypeError(
                f"`max_bytes` must be an integer, got {type(max_bytes).__name__}"
            ) from None
        if limit < 0:
            raise ValueError(f"`max_bytes` must be >= 0, got {limit}")
        _buffers.set_limit(min(limit, 2**62))
    return _buffers.stats()
