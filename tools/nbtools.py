"""Write and check the book's notebooks.

The Colab setup cell is generated here from the one repository URL in
``_config.yml`` (``repository.url``), which also drives the site's Colab
buttons, so the two can never disagree. ``tests/test_notebooks.py`` checks
every notebook against it.

Authors build a notebook from a list of cells::

    from tools.nbtools import write_notebook, md, code, hidden, setup
    write_notebook("chapters/01_sgd/01_minibatch.ipynb", [
        md("# Title"), setup("from dlbook.data import load_digits"), code("x = 1"), hidden("assert x == 1"),
    ])

Run ``python tools/nbtools.py sync`` to rewrite every setup cell after the URL or the install block
changes (it recognises the old and the new form of the block).

The setup cell installs dlbook from the environment variable ``DLBOOK_SOURCE`` when it is set (a
local path or wheel; CI's Colab-shaped stage uses it), and from the repository otherwise.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIRS = ("chapters", "exercises")


def repository_url() -> str:
    """The repository URL: the single place it is set is ``_config.yml``."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    return config["repository"]["url"].rstrip("/")


# The one override of the setup cell: an environment variable naming a local path or wheel that the
# cell installs dlbook from instead of the repository. CI's Colab-shaped stage (tools/colab.py) sets it to
# a wheel built from the checkout; a reader never sets it, and the cell's text is the same for everyone.
SOURCE_ENV = "DLBOOK_SOURCE"


def install_block() -> str:
    """The lines every setup cell starts with (install dlbook only when missing)."""
    return (
        "# Setup: installs dlbook only if it is missing (as on Colab); never reinstalls torch or numpy.\n"
        "try:\n"
        "    import dlbook\n"
        "except ImportError:\n"
        "    import os\n"
        f'    dlbook_source = os.environ.get("{SOURCE_ENV}", "dlbook @ git+{repository_url()}")\n'
        '    %pip install -q "$dlbook_source"\n'
    )


def setup_source(imports: str = "", extras: tuple[str, ...] = ()) -> str:
    """The whole first code cell: install when missing, imports, seed, show the device.

    ``extras`` names reference libraries the notebook needs (``"captum"``, ``"opacus"``,
    ``"peft"``, ``"torchao"``): ``dlbook.extras.ensure`` installs each only when missing,
    never touching torch or numpy.
    """
    lines = [install_block().rstrip("\n"), "from dlbook.device import info, seed_everything"]
    if extras:
        names = ", ".join(f'"{e}"' for e in extras)
        lines += ["from dlbook.extras import ensure", f"ensure({names})  # reference libraries, only if missing"]
    if imports.strip():
        lines.append(imports.strip("\n"))
    lines += ["", "seed_everything(0)", "device = info()"]
    return "\n".join(lines)


def md(text: str):
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(text: str, tags: tuple[str, ...] = ()):
    cell = nbformat.v4.new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def hidden(text: str):
    """A check cell: hidden on the site, run by nbval and the build."""
    return code(text, tags=("remove-cell",))


def setup(imports: str = "", extras: tuple[str, ...] = ()):
    return code(setup_source(imports, extras))


def new_notebook(cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove outputs and execution counts (notebooks are stored stripped)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def write_notebook(path, cells) -> Path:
    path = ROOT / path if not Path(path).is_absolute() else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nb = strip(new_notebook(cells))
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids keep diffs of regenerated notebooks small
    nbformat.write(nb, path)
    return path


def all_notebooks() -> list[Path]:
    found = []
    for folder in NOTEBOOK_DIRS:
        found += [p for p in sorted((ROOT / folder).rglob("*.ipynb")) if ".ipynb_checkpoints" not in p.parts]
    return found


def first_code_cell(nb):
    return next((c for c in nb.cells if c.cell_type == "code"), None)


def sync(path: Path) -> bool:
    """Rewrite the install block of a notebook's setup cell; True if it changed."""
    nb = nbformat.read(path, as_version=4)
    cell = first_code_cell(nb)
    if cell is None:
        return False
    # Matches every form the block has had (the older one had no override line): from the first line
    # up to and including the `%pip install` line.
    new = re.sub(r"\A# Setup:.*?\n(?:.*\n)*?    %pip install[^\n]*\n", install_block(), cell.source + "\n", count=1).rstrip("\n")
    if new == cell.source:
        return False
    cell.source = new
    nbformat.write(nb, path)
    return True


if __name__ == "__main__":
    if sys.argv[1:] == ["sync"]:
        for nb_path in all_notebooks():
            if sync(nb_path):
                print("updated", nb_path.relative_to(ROOT))
    else:
        print(__doc__)
