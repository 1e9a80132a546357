"""The build and its configuration: version, OpenMP, imports.

Oracles: the installed distribution's metadata and meson.build for the
version; the build's own record of its options (zilla_muf/_build_config.py,
written by meson) for whether OpenMP must be there; a subprocess for what
importing the package does.
"""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import zilla_muf
from zilla_muf import _build_config

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_the_distribution_version():
    assert zilla_muf.__version__ == importlib.metadata.version("zilla-muf")
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|rc\d+)?", zilla_muf.__version__)


def test_version_is_written_once():
    """meson.build holds the version; pyproject.toml takes it from there."""
    meson_build = ROOT / "meson.build"
    pyproject = ROOT / "pyproject.toml"
    if not (meson_build.exists() and pyproject.exists()):
        # the tests copied out of a checkout: only the metadata check applies
        return
    project = re.search(r"project\((.*?)\n\)", meson_build.read_text(), re.S).group(1)
    assert re.search(r"version:\s*'([^']+)'", project).group(1) == zilla_muf.__version__
    text = pyproject.read_text()
    table = text[text.index("[project]"):]
    table = table[:table.index("\n[", 1)]
    assert re.search(r'^dynamic\s*=\s*\[[^\]]*"version"', table, re.M)
    assert not re.search(r"^version\s*=", table, re.M)


def test_openmp_as_the_build_expects():
    """A build has OpenMP unless it was configured with -Dopenmp=disabled."""
    assert _build_config.openmp_option in ("auto", "enabled", "disabled")
    # what meson found is what the C compiler saw (the _OPENMP macro)
    assert zilla_muf.have_openmp() is _build_config.openmp_found
    info = zilla_muf.openmp_info(workers=2)
    assert info["openmp"] is zilla_muf.have_openmp()
    assert info["requested"] == 2
    if _build_config.openmp_option == "disabled":
        assert not zilla_muf.have_openmp()
        assert info["threads_used"] == 1
        assert info["max_threads"] == 1
    else:
        assert zilla_muf.have_openmp(), (
            "the kernels were built without OpenMP, and the build did not say "
            "so: give the compiler an OpenMP runtime (macOS: brew install libomp) "
            "or build with -Csetup-args=-Dopenmp=disabled"
        )
        assert info["threads_used"] == 2
    assert zilla_muf.openmp_info(workers=1)["threads_used"] == 1


def test_openmp_info_keys_and_bad_workers():
    info = zilla_muf.openmp_info()
    assert sorted(info) == ["max_threads", "openmp", "requested", "threads_used"]
    assert info["requested"] == 1
    assert info["threads_used"] == 1
    assert info["max_threads"] >= 1
    with pytest.raises(ValueError, match="`workers`"):
        zilla_muf.openmp_info(workers=0)
    with pytest.raises(TypeError, match="`workers`"):
        zilla_muf.openmp_info(workers=1.5)


def test_config_functions_are_reexported():
    from zilla_muf import _config

    for name in ("openmp_info", "buffer_cache", "have_openmp"):
        assert getattr(zilla_muf, name) is getattr(_config, name)
        assert name in zilla_muf.__all__


def _run(code, *args, cwd=None):
    return subprocess.run([sys.executable, *args, "-c", code], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_uncompiled_source_tree_says_how_to_build(tmp_path):
    """Importing a copy of the package's Python sources without the compiled
    kernels fails at once, naming the command that builds them."""
    src = Path(zilla_muf.__file__).resolve().parent
    dest = tmp_path / "zilla_muf"
    dest.mkdir()
    for py in src.glob("*.py"):
        if py.name != "_build_config.py":
            shutil.copy(py, dest / py.name)
    # -I -S: no site-packages, so neither an installed nor an editable copy
    # of the package can answer the import
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import zilla_muf"
    proc = _run(code, "-I", "-S")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: zilla_muf's compiled kernels could not be imported")
    assert "pip install --no-build-isolation -e ." in last
    assert str(dest) in last


def test_import_loads_no_optional_dependency(tmp_path):
    code = ("import sys, zilla_muf; "
            "print(sorted({m.split('.')[0] for m in sys.modules} "
            "& {'torch', 'dask', 'distributed', 'zarr', 'transformers'}))")
    proc = _run(code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("runnable, own, free",
                         [(1, 1, 2), (2, 1, 1), (3, 1, 1), (40, 1, 1),
                          (2, 2, 2), (3, 2, 1)])
def test_free_cores_reads_the_runnable_tasks(monkeypatch, runnable, own, free):
    """Runnable tasks of other processes take cores; this process's own
    (the caller, a pool thread still spinning) do not."""
    import io

    from zilla_muf import _config

    line = f"0.50 0.40 0.30 {runnable}/200 1234\n".encode()
    monkeypatch.setattr(_config.os, "sched_getaffinity", lambda pid: {0, 1},
                        raising=False)
    monkeypatch.setattr(_config, "open", lambda *a, **k: io.BytesIO(line),
                        raising=False)
    monkeypatch.setattr(_config, "_own_runnable_threads", lambda: own)
    monkeypatch.setattr(_config, "_FREE_CORES_TTL", 0.0)
    assert _config.free_cores() == free


@pytest.mark.parametrize("readings, own, free",
                         [((2, 1), 1, 2), ((3, 2), 1, 1), ((2, 2), 1, 1),
                          ((3, 3), 2, 1), ((3, 2), 2, 2)])
def test_free_cores_takes_the_lower_reading(monkeypatch, readings, own, free):
    """A pool thread that stops spinning between the load's reading and
    the reading of this process's threads is not taken for another
    process: the runnable count is read again after, the lower kept."""
    from zilla_muf import _config

    seq = iter(readings)
    monkeypatch.setattr(_config.os, "sched_getaffinity", lambda pid: {0, 1},
                        raising=False)
    monkeypatch.setattr(_config, "_runnable_tasks", lambda: next(seq))
    monkeypatch.setattr(_config, "_own_runnable_threads", lambda: own)
    monkeypatch.setattr(_config, "_FREE_CORES_TTL", 0.0)
    assert _config.free_cores() == free


def test_free_cores_reuses_a_fresh_answer(monkeypatch):
    """Within the reuse interval the load is not read again; after it, it is."""
    import io

    from zilla_muf import _config

    reads = []

    def fake_open(*a, **k):
        reads.append(a[0])
        return io.BytesIO(b"0.50 0.40 0.30 1/200 1234\n")

    monkeypatch.setattr(_config.os, "sched_getaffinity", lambda pid: {0, 1},
                        raising=False)
    monkeypatch.setattr(_config, "open", fake_open, raising=False)
    # nothing read yet (not a time 1 s before 0: monotonic time starts near
    # 0 on a machine just booted, and a long reuse interval would cover it)
    monkeypatch.setattr(_config, "_free_cores_seen", [float("-inf"), 1])
    monkeypatch.setattr(_config, "_FREE_CORES_TTL", 3600.0)
    assert _config.free_cores() == 2
    assert _config.free_cores() == 2
    assert reads == ["/proc/loadavg"]
    monkeypatch.setattr(_config, "_FREE_CORES_TTL", 0.0)
    assert _config.free_cores() == 2
    assert reads == ["/proc/loadavg"] * 2


def test_own_runnable_threads_counts_the_caller():
    from zilla_muf import _config

    n = _config._own_runnable_threads()
    assert n >= 1
    if os.path.isdir("/proc/self/task"):     # Linux
        assert n <= len(os.listdir("/proc/self/task"))


def test_running_threads_caps_by_the_free_cores(monkeypatch):
    from zilla_muf import _config

    monkeypatch.setattr(_config, "free_cores", lambda: 1)
    assert _config.running_threads(1) == 1
    assert _config.running_threads(4) == 1
    monkeypatch.setattr(_config, "free_cores", lambda: 3)
    assert _config.running_threads(2) == 2
    assert _config.running_threads(8) == 3
