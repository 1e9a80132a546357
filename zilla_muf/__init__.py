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
    semiseparable_matrix,
    semiseparable_matvec,
    toeplitz_matvec,
    vandermonde_matvec,
    vandermonde_rmatvec,
)

__version__ = "0.1.0"

# The public modules, and every public function of theirs.
_MODULES = ["complex_ops", "discretize", "fft_conv", "scan", "selective", "ssd",
            "stable_ops", "structured"]
__all__ = sorted(
    set(_MODULES)
    | {"have_openmp", "openmp_info"}
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
