"""zilla_muf on Dask arrays: the same functions, built as lazy graphs.

Each function has the name, arguments and results of its in-memory
counterpart in ``zilla_muf``, takes ``dask.array`` arrays (array_like
inputs are wrapped) and returns lazy dask arrays (tuples where the in-memory
function returns a tuple). Every task runs the in-memory function on one
block; states cross block boundaries exactly, so the sequence axis may be
chunked in any way. Requires the ``dask`` extra:
``pip install "zilla-muf[dask]"``.

.. versionadded:: 0.2.0
"""

try:
    import dask.array  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "zilla_muf.dask needs Dask: install it with "
        '`pip install "zilla-muf[dask]"`'
    ) from exc

from ._wrappers import (  # noqa: E402
    associative_scan,
    cauchy_matvec,
    causal_conv1d,
    chunked_scan,
    fft_conv,
    linear_scan,
    log_softmax,
    log_sum_exp,
    logcumsumexp,
    rms_norm,
    selective_scan,
    sequential_scan,
    softmax,
    ssd_chunk_scan_combined,
    toeplitz_matvec,
    vandermonde_matvec,
)

__all__ = [
    "associative_scan",
    "cauchy_matvec",
    "causal_conv1d",
    "chunked_scan",
    "fft_conv",
    "linear_scan",
    "log_softmax",
    "log_sum_exp",
    "logcumsumexp",
    "rms_norm",
    "selective_scan",
    "sequential_scan",
    "softmax",
    "ssd_chunk_scan_combined",
    "toeplitz_matvec",
    "vandermonde_matvec",
]
