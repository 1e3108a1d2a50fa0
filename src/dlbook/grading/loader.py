"""Load an exercise set's tests and the instructor's hidden ones (used by :mod:`dlbook.grading.batch` and
:mod:`dlbook.grading.worker`, so that neither imports the other)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from dlbook.grading.core import TestSpec, collect_tests
from dlbook.grading.sets import load_set

__all__ = ["load_tests", "load_extra_tests"]


@contextlib.contextmanager
def _no_bytecode():
    """Import without writing ``__pycache__/*.pyc`` next to the module: a hidden test's bytecode is a copy of it
    that the sandbox's mask of the ``.py`` file would not cover."""
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = before


def _module_from_file(path: Path, index: int):
    name = f"dlbook_hidden_tests_{index}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import hidden tests from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_extra_tests(sources: list[str]) -> list:
    """Import hidden-test modules: each source is a ``.py`` file, a folder of them, or a module name."""
    with _no_bytecode():
        return _load_extra_tests(sources)


def _load_extra_tests(sources: list[str]) -> list:
    modules = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.glob("*.py") if p.name != "__init__.py")
            if not files:
                raise ValueError(f"--extra-tests {source}: the folder holds no .py files")
        elif path.suffix == ".py":
            if not path.is_file():
                raise ValueError(f"--extra-tests {source}: no such file")
            files = [path]
        else:
            try:
                modules.append(importlib.import_module(source))
            except ImportError as err:
                raise ValueError(f"--extra-tests {source!r} is neither a .py file, a folder nor an importable "
                                 f"module ({err})") from None
            continue
        modules += [_module_from_file(p.resolve(), len(modules) + i) for i, p in enumerate(files)]
    for module in modules:
        if not collect_tests(module):
            raise ValueError(f"--extra-tests: {getattr(module, '__file__', module.__name__)} defines no "
                             f"@question tests")
    return modules


def load_tests(set_id: str, extra: list[str] = ()) -> tuple[list[tuple[TestSpec, Callable]], frozenset]:
    """The set's tests followed by the hidden ones, and the names of the hidden ones."""
    public = collect_tests(load_set(set_id))
    hidden = collect_tests(*load_extra_tests(list(extra))) if extra else []
    names = [spec.name for spec, _ in public + hidden]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(f"test names must be unique across the set and --extra-tests: {', '.join(clashes)}")
    return public + hidden, frozenset(spec.name for spec, _ in hidden)
