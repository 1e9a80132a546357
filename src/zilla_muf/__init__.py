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
convolution
    Causal convolution by FFT (:func:`fft_conv`).
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
    stages, the sequential and quadratic (attention) forms, packed sequences
    and the decoding updates.
linear_attention
    Gated linear attention and the gated delta rule, in FLA's layouts.

:func:`vjp` gives the gradient (vector-Jacobian product) of every function
above. Two optional subpackages are imported only on request:
``zilla_muf.torch`` (PyTorch custom operators with mamba_ssm's names, and
transformers' Mamba models on them) and ``zilla_muf.dask`` (the same
functions on Dask arrays).
"""


try:
    from . import _openmp_helpers
except ImportError as exc:
    import os as _os

    raise ImportError(
        "zilla_muf's compiled kernels could not be imported from "
        f"{_os.path.dirname(_os.path.abspath(__file__))}. In a source checkout, "
        "build them in place with `pip install --no-build-isolation -e .` (the "
        "build requirements installed first: meson-python, meson, ninja, "
        "Cython, numpy). If zilla-muf is installed, this source folder shadows "
        "it: run Python from outside the checkout."
    ) from exc

# `linear_attention` is both a module and its function (API: the module
# zilla_muf.linear_attention holds linear_attention and gated_delta_rule, and
# every function is importable from the package): the module is callable, so
# zilla_muf.linear_attention(...) and zilla_muf.linear_attention.linear_attention(...)
# are the same call.
from . import (
    complex_ops,
    convolution,
    discretize,
    linear_attention,
    scan,
    selective,
    ssd,
    stable_ops,
    structured,
)
from ._build_config import version as __version__
from ._config import buffer_cache, have_openmp, openmp_info
from ._vjp import vjp
from .complex_ops import complex_exp, conjugate_pair_output, diag_complex_matrix_exp
from .convolution import fft_conv
from .discretize import bilinear_discretize, zoh_discretize
from .linear_attention import gated_delta_rule
from .scan import associative_scan, chunked_scan, linear_scan, sequential_scan
from .selective import (
    causal_conv1d,
    causal_conv1d_update,
    selective_scan,
    selective_scan_update,
)
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

# The public modules, and every public function of theirs.
_MODULES = ["complex_ops", "convolution", "discretize", "linear_attention", "scan",
            "selective", "ssd", "stable_ops", "structured"]
__all__ = sorted(
    set(_MODULES)
    | {"buffer_cache", "have_openmp", "openmp_info", "vjp"}
    | {name for mod in _MODULES for name in globals()[mod].__all__}
)
