"""zilla-muf: structured-matrix kernels for state space models and linear attention.

State space models (S4, Mamba, Mamba-2) and linear attention compute the same
object: a product with a structured (semiseparable, Toeplitz, Cauchy,
Vandermonde) matrix, evaluated as the chunked recurrence
``h_t = a_t * h_{t-1} + b_t``. zilla-muf provides those kernels for NumPy
arrays, in compiled, multithreaded form.

Modules
-------
scan
    The recurrence, by sequential, chunked and associative algorithms.
selective
    Mamba-1: the selective scan and the depthwise causal convolution.
ssd
    Mamba-2's structured state space duality: the chunked SSD layer, its four
    stages, the sequential and quadratic (attention) forms, and the one-token
    decoding update.
stable_ops
    Overflow-free softmax, log-sum-exp, segment sums, gates, RMS norm.
discretize
    Zero-order-hold and bilinear discretisation, diagonal or dense.
complex_ops
    Complex exponentials and the conjugate-pair readout of diagonal SSMs.
"""

from . import complex_ops, discretize, scan, selective, ssd, stable_ops
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

__version__ = "0.1.0"

__all__ = [
    "associative_scan",
    "bilinear_discretize",
    "causal_conv1d",
    "causal_conv1d_update",
    "chunked_scan",
    "complex_exp",
    "complex_ops",
    "conjugate_pair_output",
    "diag_complex_matrix_exp",
    "discretize",
    "have_openmp",
    "linear_scan",
    "log_softmax",
    "log_sum_exp",
    "logcumsumexp",
    "openmp_info",
    "rms_norm",
    "scan",
    "segsum",
    "selective",
    "selective_scan",
    "selective_state_update",
    "sequential_scan",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "ssd",
    "ssd_chunk_cumsum",
    "ssd_chunk_scan",
    "ssd_chunk_scan_combined",
    "ssd_chunk_state",
    "ssd_quadratic",
    "ssd_sequential",
    "ssd_state_passing",
    "stable_ops",
    "zoh_discretize",
]


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
