"""Every notebook follows the book's conventions (CONTRIBUTING.md), checked without running it.

Running them is nbval's job (`make notebooks`); this file checks what a reader,
a Colab learner and a reviewer rely on: stripped outputs, the generated setup
cell, hidden checks, and a table of contents that matches the files.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml

from tools.nbtools import ROOT, all_notebooks, first_code_cell, install_block, repository_url

NOTEBOOKS = all_notebooks()
CHAPTER_NOTEBOOKS = [p for p in NOTEBOOKS if p.parts[len(ROOT.parts)] == "chapters"]
ids = [str(p.relative_to(ROOT)) for p in NOTEBOOKS]


def read(path: Path):
    return nbformat.read(path, as_version=4)


def test_there_are_notebooks():
    assert len(CHAPTER_NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_is_valid_and_stored_stripped(path):
    nb = read(path)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"cells {dirty} have stored outputs; strip them (tools/nbtools.py strip)"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_first_code_cell_is_the_generated_setup_cell(path):
    cell = first_code_cell(read(path))
    assert cell is not None, "a notebook needs a setup cell"
    assert cell.source.startswith(install_block()), (
        "the first code cell must start with the install block generated from _config.yml; "
        "run `python tools/nbtools.py sync`")
    assert "seed_everything(" in cell.source and "info(" in cell.source, "the setup cell seeds and shows the device"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_no_cell_installs_torch_numpy_or_ipywidgets(path):
    """On Colab these are preinstalled; reinstalling them breaks the runtime."""
    for cell in read(path).cells:
        for line in cell.source.splitlines():
            if re.search(r"pip install", line):
                assert not re.search(r"\b(torch|numpy|ipywidgets)\b", line), line


@pytest.mark.parametrize("path", CHAPTER_NOTEBOOKS, ids=[str(p.relative_to(ROOT)) for p in CHAPTER_NOTEBOOKS])
def test_chapter_notebook_checks_its_claims_in_hidden_cells(path):
    nb = read(path)
    hidden = [c for c in nb.cells if c.cell_type == "code" and "remove-cell" in c.metadata.get("tags", [])]
    assert hidden, "a chapter notebook asserts its results in cells tagged remove-cell"
    assert all("assert" in c.source for c in hidden), "every hidden check cell asserts something"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "the notebook starts with its title"


def test_setup_cell_points_at_the_configured_repository():
    assert repository_url() in install_block()
    assert repository_url().startswith("https://")


# ----------------------------------------------------------------------------- table of contents

def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc["parts"]:
        walk(part["chapters"])
    return files


def _exists(entry: str) -> bool:
    return any((ROOT / f"{entry}{ext}").exists() for ext in (".md", ".ipynb"))


def test_every_toc_entry_exists():
    missing = [f for f in _toc_files() if not _exists(f)]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"


def test_every_chapter_notebook_is_in_the_toc():
    listed = set(_toc_files())
    absent = [str(p.relative_to(ROOT).with_suffix("")) for p in CHAPTER_NOTEBOOKS
              if str(p.relative_to(ROOT).with_suffix("")) not in listed]
    assert not absent, f"notebooks missing from _toc.yml: {absent}"


EXPECTED_CHAPTERS = ["00_preliminaries", "01_sgd", "02_normalization", "03_transformers", "04_pretraining",
                     "05_regularization", "06_compression", "07_interpretability", "08_privacy"]


def test_toc_holds_every_chapter_in_order():
    chapters = [f.split("/")[1] for f in _toc_files() if f.startswith("chapters/") and f.endswith("/index")]
    assert chapters == EXPECTED_CHAPTERS


@pytest.mark.parametrize("chapter", EXPECTED_CHAPTERS)
def test_a_chapter_without_notebooks_says_it_is_not_written(chapter):
    """Honesty: an unfinished chapter says so on its page, and has no placeholder notebooks."""
    folder = ROOT / "chapters" / chapter
    index = (folder / "index.md").read_text()
    if not list(folder.glob("*.ipynb")):
        assert "Not written yet" in index, f"{chapter} has no notebooks, so its page must say it is not written yet"
    else:
        assert "Not written yet" not in index
