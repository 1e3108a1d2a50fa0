"""Generate the student version of an exercise set from its source with solutions.

The rules, applied to every code cell of ``exercises/_source/NN_slug.ipynb``:

* the lines from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (markers included)
  become ``# YOUR CODE HERE`` and ``raise NotImplementedError``, indented like the
  ``BEGIN`` marker;
* a line ending in ``# SOLUTION`` keeps its left-hand side and gets ``...``
  (``steps = 100 // 32  # SOLUTION`` -> ``steps = ...``);
* a cell tagged ``solution-only`` is dropped.

Outputs and execution counts are removed. The result is written as
``exercises/NN_slug.ipynb``; ``python -m dlbook.grading generate`` does it for
every source, and a test fails when a committed student version differs.
Notebooks are read and written as plain JSON in nbformat's layout (no
Jupyter package needed), so the same source always gives the same bytes.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

__all__ = ["student_source", "student_notebook", "read_notebook", "dumps_notebook", "generate_all"]

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
SOLUTION_ONLY = "solution-only"
_SOLUTION_LINE = re.compile(r"^(?P<lhs>\s*[^=#]*?[^=!<>\s])\s*=(?!=).*#\s*SOLUTION\s*$")


def _source_text(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def student_source(source: str, where: str = "a cell") -> str:
    """Apply the solution rules to one code cell's text.

    Raises:
        ValueError: on an unbalanced marker, or a ``# SOLUTION`` line that is not an assignment.
    """
    out: list[str] = []
    inside = False
    for number, line in enumerate(source.split("\n"), start=1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"{where}, line {number}: {BEGIN} inside another solution block")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out += [f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError"]
        elif stripped == END:
            if not inside:
                raise ValueError(f"{where}, line {number}: {END} without a {BEGIN} before it")
            inside = False
        elif inside:
            continue
        elif re.search(r"#\s*SOLUTION\s*$", line):
            match = _SOLUTION_LINE.match(line)
            if not match:
                raise ValueError(f"{where}, line {number}: a line ending in '# SOLUTION' must be an assignment "
                                 f"`name = value  # SOLUTION`, got {line.strip()!r}")
            out.append(f"{match['lhs']} = ...")
        else:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN} is never closed by {END}")
    return "\n".join(out)


def _split_lines(text: str) -> list[str]:
    """nbformat's on-disk layout: a list of lines that keep their newline."""
    return text.splitlines(keepends=True)


def student_notebook(source_nb: dict, name: str = "notebook") -> dict:
    """The student version of a source notebook (a new dict; the source is unchanged)."""
    nb = copy.deepcopy(source_nb)
    cells = []
    for index, cell in enumerate(nb.get("cells", [])):
        if SOLUTION_ONLY in cell.get("metadata", {}).get("tags", []):
            continue
        if cell.get("cell_type") == "code":
            cell["source"] = _split_lines(student_source(_source_text(cell), where=f"{name}, cell {index}"))
            cell["outputs"] = []
            cell["execution_count"] = None
        else:
            cell["source"] = _split_lines(_source_text(cell))
        cells.append(cell)
    nb["cells"] = cells
    return nb


def read_notebook(path: str | Path) -> dict:
    """Load a notebook as a dict (plain JSON)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def dumps_notebook(nb: dict) -> str:
    """Serialize as nbformat does: indent 1, sorted keys, UTF-8, final newline."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False, separators=(",", ": ")) + "\n"


def generate_all(root: str | Path, check: bool = False) -> list[Path]:
    """Write ``exercises/NN_slug.ipynb`` for every ``exercises/_source/NN_slug.ipynb`` under ``root``.

    Args:
        root: the repository root.
        check: write nothing; return the student versions that are missing or differ.

    Returns:
        The student notebooks written (or, with ``check``, out of date).
    """
    root = Path(root)
    sources = sorted((root / "exercises" / "_source").glob("*.ipynb"))
    changed = []
    for src in sources:
        target = root / "exercises" / src.name
        text = dumps_notebook(student_notebook(read_notebook(src), name=str(src.relative_to(root))))
        if target.exists() and target.read_text(encoding="utf-8") == text:
            continue
        changed.append(target)
        if not check:
            target.write_text(text, encoding="utf-8")
    return changed
