"""Shared test configuration: tolerances by dtype, random generators, the
markers each test file gets, and the strict skips of CI.

Markers are given by file name, so that no list of test files is kept by
hand anywhere:

- ``docs``: builds the Sphinx site (``test_docs*.py``);
- ``browser``: also needs Chromium (``test_docs_browser*.py``);
- ``torch``: needs torch, and transformers for the layer oracles
  (``test_layers*.py``, ``test_torch*.py``, the layer-gradient tests whose
  oracles are torch autograd, FLA's and mamba_ssm's references); single tests of other files
  that need torch carry the marker themselves;
- ``dask``: needs dask (``test_dask*.py``);
- ``kernels``: every other test file. These need only the package, pytest and
  hypothesis; ``.ci/run`` runs them (``-m kernels``) against each build.

Locally, ``python -m pytest -m "not docs"`` leaves out the documentation
builds.

With the environment variable ``ZILLA_MUF_CI=1`` (``.ci/run`` sets it) a test
that skips fails instead, unless it skips for a reason CI accepts (too little
free memory, a platform without ``os.fork``, a build configured without
OpenMP, which ``tests/test_config.py`` checks on its own): in CI a missing
dependency is an error, never a pass.
"""

import fnmatch
import importlib.util
import os
import re

import numpy as np
import pytest

_FILE_MARKERS = [
    ("test_docs*.py", ("docs",)),
    ("test_docs_browser*.py", ("browser",)),
    ("test_layers*.py", ("torch",)),
    ("test_torch*.py", ("torch",)),
    ("test_vjp_norm_conv.py", ("torch",)),
    ("test_vjp_selective.py", ("torch",)),
    ("test_vjp_ssd.py", ("torch",)),
    ("test_linear_attention_fla.py", ("torch",)),
    ("test_mamba_listings.py", ("torch",)),
    ("test_dask*.py", ("dask",)),
]

_CI = os.environ.get("ZILLA_MUF_CI", "").lower() in ("1", "true", "yes")
_CI_ACCEPTED_SKIPS = re.compile(r"free memory|os\.fork|built without OpenMP")


def markers_of(filename):
    """The markers of the tests in the test file `filename`."""
    marks = []
    for pattern, names in _FILE_MARKERS:
        if fnmatch.fnmatchcase(filename, pattern):
            marks += [n for n in names if n not in marks]
    return marks or ["kernels"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # tryfirst: before pytest's own hook deselects by `-m`
    for item in items:
        for name in markers_of(item.path.name):
            item.add_marker(name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if _CI and report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        if not _CI_ACCEPTED_SKIPS.search(reason):
            report.outcome = "failed"
            report.longrepr = (
                f"skipped in CI (ZILLA_MUF_CI is set): {reason}\n"
                "Install what the test needs; a skip CI accepts must match "
                "_CI_ACCEPTED_SKIPS in tests/conftest.py."
            )
    return report

REAL_DTYPES = [np.float32, np.float64]
COMPLEX_DTYPES = [np.complex64, np.complex128]
ALL_DTYPES = REAL_DTYPES + COMPLEX_DTYPES

# Relative tolerances against a float64 / long double oracle, by dtype.
_RTOL = {
    np.dtype(np.float32): 2e-5,
    np.dtype(np.complex64): 2e-5,
    np.dtype(np.float64): 1e-12,
    np.dtype(np.complex128): 1e-12,
}


def rtol_for(dtype, scale=1.0):
    """Relative tolerance of a result of `dtype` (times `scale`)."""
    return _RTOL[np.dtype(dtype)] * scale


def assert_close(actual, desired, dtype=None, scale=1.0, atol_rel=None):
    """Compare to an oracle with the tolerance of `dtype`.

    The absolute tolerance is relative to ``max |desired|`` so that values
    near zero in a large result are judged by the result's size.
    """
    actual = np.asarray(actual)
    desired = np.asarray(desired)
    dtype = actual.dtype if dtype is None else np.dtype(dtype)
    rtol = rtol_for(dtype, scale)
    mag = float(np.max(np.abs(desired))) if desired.size else 0.0
    atol = (rtol if atol_rel is None else atol_rel) * max(mag, np.finfo(np.float64).tiny)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol)


def random_array(rng, shape, dtype, low=-1.0, high=1.0):
    """Uniform random values of `dtype`; complex values get both parts."""
    dtype = np.dtype(dtype)
    x = rng.uniform(low, high, size=shape)
    if dtype.kind == "c":
        x = x + 1j * rng.uniform(low, high, size=shape)
    return x.astype(dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


def _ssd_builds():
    from zilla_muf import _ssd

    names = ["avx2", "avx512"]
    return names[:names.index(_ssd.kernel_build()) + 1]


# every build of the SSD's chunk kernels this CPU runs (AVX-512 CPUs: both),
# for a whole module at a time (module scope: hypothesis tests may use it)
@pytest.fixture(scope="module", params=_ssd_builds())
def ssd_build(request):
    from zilla_muf import _ssd

    _ssd.set_kernel_build(request.param)
    yield request.param
    _ssd.set_kernel_build(None)


def load_bench_module(name):
    """Import bench/<name>.py (a loader of reference listings) as a module."""
    path = os.path.join(os.path.dirname(__file__), os.pardir, "bench", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_zilla_muf_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
