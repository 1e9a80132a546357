"""The test machinery of tests/conftest.py: the markers each test file gets,
and, under ZILLA_MUF_CI=1, skips for a missing dependency that fail.

Oracle: a pytest run in a subprocess on a scratch folder holding this
folder's conftest.py and small test files, judged by pytest's own summary.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import markers_of

HERE = Path(__file__).resolve().parent

SKIPS = '''
import pytest

def test_missing_module():
    pytest.importorskip("zilla_muf_no_such_module")

@pytest.mark.skipif(True, reason="needs 12 GiB of free memory")
def test_too_little_memory():
    pass

def test_passes():
    pass
'''

PASSES = '''
def test_passes():
    pass
'''


@pytest.fixture
def scratch(tmp_path):
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    # the markers are registered in pyproject.toml (pytest's strict settings)
    pyproject = HERE.parent / "pyproject.toml"
    text = pyproject.read_text()
    table = text[text.index("[tool.pytest.ini_options]"):]
    (tmp_path / "pyproject.toml").write_text(table)
    return tmp_path


def _pytest(folder, *args, ci):
    env = dict(os.environ)
    env.pop("ZILLA_MUF_CI", None)
    if ci:
        env["ZILLA_MUF_CI"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, "."],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300,
    )
    summary = proc.stdout.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}
    return proc.returncode, counts, proc.stdout


def test_skips_fail_in_ci_unless_accepted(scratch):
    (scratch / "test_skips.py").write_text(SKIPS)
    code, counts, out = _pytest(scratch, ci=False)
    assert code == 0, out
    assert counts == {"passed": 1, "skipped": 2}, out

    code, counts, out = _pytest(scratch, "-rA", ci=True)
    assert code == 1, out
    assert counts == {"failed": 1, "passed": 1, "skipped": 1}, out
    assert "FAILED test_skips.py::test_missing_module" in out
    assert "skipped in CI" in out


def test_markers_come_from_file_names(scratch):
    want = {
        "test_docs.py": ["docs"],
        "test_docs_browser.py": ["docs", "browser"],
        "test_layers.py": ["torch"],
        "test_torch_ops.py": ["torch"],
        "test_dask_scan.py": ["dask"],
        "test_scan.py": ["kernels"],
        "test_complex_ops.py": ["kernels"],
        "test_doctests.py": ["kernels"],
    }
    for name, marks in want.items():
        assert markers_of(name) == marks, name
    # and pytest selects by them: the hook runs before `-m` deselects
    for name in want:
        (scratch / name).write_text(PASSES)
    for expr, files in [("kernels", ["test_complex_ops.py", "test_doctests.py",
                                     "test_scan.py"]),
                        ("docs and not browser", ["test_docs.py"])]:
        code, counts, out = _pytest(scratch, "-m", expr, "-rA", ci=True)
        assert code == 0, out
        ran = sorted(re.findall(r"^PASSED (test_\w+\.py)::", out, re.M))
        assert ran == files, (expr, out)
