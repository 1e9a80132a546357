"""Sphinx configuration for the zilla-muf documentation."""

import importlib.util
from pathlib import Path

import zilla_muf

project = "zilla-muf"
author = "The zilla-muf developers"
copyright = "2026, The zilla-muf developers"
version = release = zilla_muf.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "matplotlib.sphinxext.plot_directive",
]

# Formulas render with MathJax. The docs extra installs the package
# sphinx-mathjax-offline, which ships MathJax 3; it is copied into the site
# so that the pages render without network access. Without it, MathJax
# loads from its default CDN.
_mathjax = importlib.util.find_spec("sphinx-mathjax-offline")
_mathjax_static = []
if _mathjax is not None and _mathjax.origin is not None:
    _mathjax_static = [str(Path(_mathjax.origin).parent / "static")]
    mathjax_path = "mathjax/tex-chtml.js"

# Figures drawn at build time from the code in `.. plot::` blocks.
plot_formats = [("png", 120)]
plot_html_show_source_link = False
plot_html_show_formats = False
plot_include_source = False
plot_rcparams = {"figure.dpi": 120, "savefig.bbox": "tight"}

autosummary_generate = True
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(array_like|ndarray|optional|dict|int|float|bool|str|callable)"),
    (r"py:.*", r"numpy\..*|scipy\..*"),
]

intersphinx_mapping = {}
templates_path = ["_templates"]
exclude_patterns = ["_build"]
html_theme = "pydata_sphinx_theme"
html_title = "zilla-muf"
html_static_path = ["_static"] + _mathjax_static
html_css_files = ["custom.css"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    # a search icon rather than a search field: the top bar keeps every
    # section link on one line
    "navbar_persistent": ["search-button"],
    # the wide call-mapping tables get the whole page width
    "secondary_sidebar_items": {"**": ["page-toc", "sourcelink"], "migration": []},
}
html_sidebars = {"migration": []}
