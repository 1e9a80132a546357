"""Every docstring example in the public modules runs and prints what it shows."""

import doctest
import importlib
import inspect
from pathlib import Path

import numpy as np
import pytest

import zilla_muf

MODULES = ["zilla_muf"] + [
    f"zilla_muf.{name}" for name in zilla_muf.__all__
    if inspect.ismodule(getattr(zilla_muf, name))
]


def _examples(modname):
    mod = importlib.import_module(modname)
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = finder.find(mod, modname, globs={"np": np})
    # only objects defined in this module (re-exports are tested where defined)
    return [t for t in tests if t.examples]


CASES = [t for m in MODULES for t in _examples(m)]


@pytest.mark.parametrize("test", CASES, ids=[t.name for t in CASES])
def test_docstring_examples(test):
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    with np.printoptions(legacy=False):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{test.name}: {result.failed} example(s) failed"


DOCS = Path(__file__).resolve().parent.parent / "docs"
RST = sorted(DOCS.rglob("*.rst")) if DOCS.exists() else []
RST = [p for p in RST if "generated" not in p.parts and ">>>" in p.read_text()]


def _page(path):
    """A page as a test case, marked with the optional dependency its
    examples import (the kernel builds of CI run without them)."""
    text = path.read_text()
    marks = [getattr(pytest.mark, dep) for dep in ("torch", "dask")
             if f">>> import {dep}" in text or f">>> import zilla_muf.{dep}" in text
             or f">>> from zilla_muf.{dep}" in text]
    return pytest.param(path, marks=marks, id=str(path.relative_to(DOCS)))


@pytest.mark.parametrize("path", [_page(p) for p in RST])
def test_documentation_examples(path):
    with np.printoptions(legacy=False):
        result = doctest.testfile(
            str(path), module_relative=False, globs={"np": np},
            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
            verbose=False, report=True,
        )
    assert result.attempted > 0
    assert result.failed == 0, f"{path.name}: {result.failed} example(s) failed"


def test_every_public_function_has_an_example():
    missing = [name for name in zilla_muf.__all__
               if callable(getattr(zilla_muf, name))
               and ">>>" not in (getattr(zilla_muf, name).__doc__ or "")]
    assert missing == []
