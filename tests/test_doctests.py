"""The ``>>>`` examples in the docstrings of :mod:`colddiff.degradations` run as tests (one test per docstring).

Collected with :class:`doctest.DocTestFinder` rather than ``--doctest-modules``, so they run in the normal
``python -m pytest`` call without a pytest option and only for this package.  Each example runs in a copy of its
module's namespace with torch's global RNG seeded, so examples that draw random tensors are reproducible.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch

import colddiff.degradations

#: the functional twins whose docstrings must carry an example (the twins of every operator)
FUNCTIONAL_TWINS = ("gaussian_blur", "gaussian_mask", "pixelate", "snow", "desaturate", "mix", "gaussian_noise",
                    "blur_noise", "heat_blur", "motion_blur", "defocus_blur", "jpeg", "rotate", "zoom", "posterize",
                    "contrast", "elastic")


def _modules() -> list:
    package = colddiff.degradations
    names = [package.__name__] + [f"{package.__name__}.{info.name}" for info in pkgutil.iter_modules(package.__path__)]
    return [importlib.import_module(name) for name in sorted(names)]


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests: dict[str, doctest.DocTest] = {}
    for module in _modules():
        for test in finder.find(module):
            if test.examples and test.filename and test.name not in tests:
                tests[test.name] = test  # re-exported objects are found again from the package: keep the first
    return [tests[name] for name in sorted(tests)]


DOCTESTS = _doctests()


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_examples(test: doctest.DocTest) -> None:
    torch.manual_seed(0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    report: list[str] = []
    result = runner.run(test, out=report.append, clear_globs=False)
    assert result.failed == 0, "".join(report)


def test_every_functional_twin_has_an_example() -> None:
    import colddiff.degradations.functional as F

    with_examples = {t.name.rsplit(".", 1)[-1] for t in DOCTESTS}
    missing = [name for name in FUNCTIONAL_TWINS if name not in with_examples]
    assert not missing, f"functional twins without a >>> example: {missing}"
    assert set(FUNCTIONAL_TWINS) <= set(F.__all__)
