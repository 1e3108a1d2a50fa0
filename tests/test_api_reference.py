"""The dlbook API reference (book/api) covers every public name, and the chapters link to it.

The pages are written by ``tools/api_pages.py`` and filled from the docstrings by
Sphinx's autodoc when the site is built; the browser stage checks the built pages
(every public name has an entry, math renders). These tests fail first, before any
build: a new module or name without a page, a docstring or a toc entry.
"""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest
import yaml
from sphinx.pycode import ModuleAnalyzer

from tools.api_pages import API, MODULES, ROOT, is_split_package, public_modules, submodules

PUBLIC = public_modules()


def test_every_public_module_has_a_summary_and_a_chapter_page_that_exists():
    for short in PUBLIC:
        summary, chapter = MODULES[short]
        assert summary.strip(), short
        assert any((ROOT / f"{chapter}{ext}").exists() for ext in (".md", ".ipynb")), f"{short}: {chapter} is missing"


def test_pages_and_chapter_links_are_current():
    """`python tools/api_pages.py check` passes: no page or notebook link cell is missing or stale."""
    result = subprocess.run([sys.executable, "tools/api_pages.py", "check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _has_own_doc(obj) -> bool:
    doc = obj.__doc__ or ""
    if inspect.isclass(obj) and doc.startswith(obj.__name__ + "("):
        return False  # the signature a dataclass writes for itself is not documentation
    return bool(doc.strip())


def test_a_split_package_exports_exactly_its_modules_public_names():
    """dlbook.privacy (and every package split into modules) re-exports each public name of its public modules, and
    nothing else: `from dlbook.privacy import DPSGD` works, and every name has one entry, on its module's page."""
    packages = [short for short in PUBLIC if is_split_package(short)]
    assert {"privacy", "interpret", "pretrain", "regularization", "compression", "finetune"} <= set(packages)
    for short in packages:
        package = importlib.import_module(f"dlbook.{short}")
        inside = [n for m in submodules(short) for n in importlib.import_module(f"dlbook.{m}").__all__]
        assert sorted(inside) == sorted(set(inside)), f"dlbook.{short}: a name is public in two of its modules"
        assert set(package.__all__) == set(inside), f"dlbook.{short}: {set(package.__all__) ^ set(inside)}"
        for m in submodules(short):
            module = importlib.import_module(f"dlbook.{m}")
            assert all(getattr(package, n) is getattr(module, n) for n in module.__all__), m


# A split package's names are documented, and checked, in its modules.
@pytest.mark.parametrize("short", [short for short in PUBLIC if not is_split_package(short)])
def test_every_public_name_has_a_docstring(short):
    module = importlib.import_module(f"dlbook.{short}")
    attribute_docs = ModuleAnalyzer.for_module(module.__name__).find_attr_docs()
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismodule(obj):
            if not _has_own_doc(obj):
                missing.append(name)
        elif ("", name) not in attribute_docs:
            missing.append(f"{name} (a constant: document it with a `#:` comment above it)")
    assert not missing, f"dlbook.{short}: public names without a docstring: {missing}"


@pytest.mark.parametrize("short", PUBLIC)
def test_public_methods_of_public_classes_are_documented(short):
    module = importlib.import_module(f"dlbook.{short}")
    missing = []
    for name in module.__all__:
        cls = getattr(module, name)
        if not inspect.isclass(cls) or not cls.__module__.startswith("dlbook"):
            continue
        for attr, value in vars(cls).items():
            if attr.startswith("_") or attr in ("forward", "extra_repr", "reset_parameters"):
                continue  # forward is documented by the class (shapes), like torch's modules
            func = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
            if callable(func) and not (func.__doc__ or "").strip():
                missing.append(f"{name}.{attr}")
    assert not missing, f"dlbook.{short}: public methods without a docstring: {missing}"


def test_the_toc_lists_every_api_page_under_the_reference():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    reference = next(part for part in toc["parts"] if part["caption"] == "Reference")
    api = next(entry for entry in reference["chapters"] if entry["file"] == "book/api/index")
    listed = {s["file"] for s in api.get("sections", [])}
    pages = {f"book/api/{p.stem}" for p in API.glob("*.md") if p.stem != "index"}
    assert listed == pages, {"not in the toc": sorted(pages - listed), "no such page": sorted(listed - pages)}
