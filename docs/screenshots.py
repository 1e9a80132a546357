"""Check the built documentation in a headless browser and take screenshots.

    python -m sphinx -W -n -b html docs /tmp/docs-html
    python docs/screenshots.py /tmp/docs-html [--out /tmp/docs-shots]

For the index, the duality guide page and the benchmark page, this opens the
built HTML in headless Chromium (Debian packages ``chromium`` and
``chromium-driver``; no network needed), saves a screenshot of each, and
checks, in the page as the browser rendered it (after its scripts ran):

* every formula was typeset by MathJax (``mjx-container`` elements, no
  ``merror`` or unprocessed ``\\(...\\)`` left), which also proves MathJax was
  loaded from the site itself;
* every image the page shows is a file in the site;
* every link to another page of the site points to a file that exists.

Exit status 0 when all checks pass, 1 otherwise (the failures are printed);
2 when no Chromium is found. ``tests/test_docs_browser.py`` runs the same
checks in the test suite when Chromium is installed.
"""

import argparse
import html.parser
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

# page name -> (path in the site, screenshot height in pixels)
PAGES = {
    "index": ("index.html", 2000),
    "duality": ("guide/duality.html", 6000),
    "benchmarks": ("benchmarks.html", 4000),
}
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser():
    """The path of a Chromium executable, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium(browser, url, *args, timeout=120):
    # --no-sandbox: the sandbox cannot start as root (containers, CI);
    # the virtual time budget lets the page's scripts (MathJax) finish.
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu",
               "--hide-scrollbars", "--no-first-run", f"--user-data-dir={profile}",
               "--virtual-time-budget=10000", *args, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def screenshot(browser, page, out, width=1280, height=2000):
    """Save a PNG of `page` (a path to an HTML file) to `out`."""
    proc = _chromium(browser, Path(page).resolve().as_uri(),
                     f"--screenshot={Path(out).resolve()}",
                     f"--window-size={width},{height}")
    if not Path(out).exists():
        raise RuntimeError(f"no screenshot of {page}: {proc.stderr[-2000:]}")
    return Path(out)


def rendered_dom(browser, page):
    """The page's DOM after its scripts ran, as HTML text."""
    proc = _chromium(browser, Path(page).resolve().as_uri(), "--dump-dom")
    if proc.returncode != 0 or "<html" not in proc.stdout:
        raise RuntimeError(f"could not render {page}: {proc.stderr[-2000:]}")
    return proc.stdout


class _Collector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = {}
        self.images = []
        self.links = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


def _local_target(page, ref):
    """The file a relative URL in `page` points to, or None if external."""
    parts = urlsplit(ref)
    if parts.scheme in ("http", "https", "mailto", "data", "javascript"):
        return None
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if not parts.path:
        return None  # an anchor in the same page
    return (Path(page).parent / unquote(parts.path)).resolve()


def check_page(browser, page):
    """Problems found in the rendered `page`: a list of messages."""
    dom = rendered_dom(browser, page)
    found = _Collector()
    found.feed(dom)
    problems = []
    source = Path(page).read_text(encoding="utf-8")
    if 'class="math' in source:
        if not found.tags.get("mjx-container"):
            problems.append("formulas were not typeset (MathJax did not run)")
        if found.tags.get("merror"):
            problems.append(f"{found.tags['merror']} MathJax error(s)")
        if "\\(" in dom.replace("\\\\(", ""):
            problems.append("untypeset \\( ... \\) left in the page")
    for src in found.images:
        target = _local_target(page, src)
        if target is not None and not target.is_file():
            problems.append(f"missing image {src}")
    for href in found.links:
        target = _local_target(page, href)
        if target is not None and not target.exists():
            problems.append(f"broken link {href}")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the built site (sphinx -b html output)")
    parser.add_argument("--out", type=Path, default=Path("docs-screenshots"),
                        help="folder for the PNGs (default ./docs-screenshots)")
    args = parser.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print("no Chromium found (Debian: apt-get install chromium chromium-driver)",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    failed = False
    for name, (rel, height) in PAGES.items():
        page = args.html / rel
        if not page.exists():
            print(f"{rel}: not built", file=sys.stderr)
            failed = True
            continue
        png = screenshot(browser, page, args.out / f"{name}.png", height=height)
        problems = check_page(browser, page)
        status = "ok" if not problems else "; ".join(problems)
        print(f"{rel}: {png} -- {status}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
