"""Sphinx configuration for the zilla-muf documentation."""

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
]

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
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
