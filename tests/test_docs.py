"""The Sphinx documentation builds without warnings (-W -n)."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sphinx") is None or not (DOCS / "conf.py").exists(),
    reason="needs sphinx and the docs/ sources of a checkout",
)


def test_docs_build_without_warnings(tmp_path):
    out = tmp_path / "html"
    # generated stubs are rebuilt from scratch, inside tmp_path
    shutil.copytree(DOCS, tmp_path / "src", ignore=shutil.ignore_patterns("_build", "generated"))
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-n", "--keep-going", "-q",
         "-b", "html", str(tmp_path / "src"), str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "index.html").exists()
    assert (out / "generated" / "zilla_muf.chunked_scan.html").exists()
