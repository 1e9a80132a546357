"""The built documentation renders in a browser: formulas typeset offline,
images present, internal links resolve (docs/screenshots.py's checks).

Skipped unless Chromium is installed (Debian: ``chromium``) along with Sphinx.
"""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
SCRIPT = DOCS / "screenshots.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("_zilla_muf_docs_screenshots", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sphinx") is None or not SCRIPT.exists(),
    reason="needs sphinx and the docs/ sources of a checkout",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    shots = _load_script()
    browser = shots.find_browser()
    if browser is None:
        pytest.skip("needs Chromium (Debian: apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("docs-browser")
    shutil.copytree(DOCS, tmp / "src", ignore=shutil.ignore_patterns("_build", "generated"))
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-b", "html", str(tmp / "src"), str(tmp / "html")],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return shots, browser, tmp / "html"


@pytest.mark.parametrize("name", ["index", "duality", "benchmarks"])
def test_page_renders(site, name, tmp_path):
    shots, browser, html = site
    rel, height = shots.PAGES[name]
    page = html / rel
    assert shots.check_page(browser, page) == []
    png = shots.screenshot(browser, page, tmp_path / f"{name}.png", height=height)
    assert png.stat().st_size > 10_000
