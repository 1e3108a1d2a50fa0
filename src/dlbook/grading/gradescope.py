"""A Gradescope autograder for one exercise set: ``dlbook-grade gradescope SET --out autograder.zip``.

Gradescope builds an image from the zip (it runs ``setup.sh`` once), then for each submission puts the student's
files in ``/autograder/submission``, runs ``/autograder/run_autograder`` and reads
``/autograder/results/results.json``. The zip holds:

* ``setup.sh``: installs the pinned versions of dlbook's dependencies (torch from its CPU index) and the bundled
  dlbook source;
* ``run_autograder``: runs :func:`run` (``python3 -m dlbook.grading.gradescope run``) on the submitted notebook;
* ``dlbook/``: a copy of the installed ``dlbook`` package with a minimal ``pyproject.toml``;
* ``hidden/``: the ``--extra-tests`` files, if any;
* ``autograder.json``: the set and the options (timeout, memory, isolation).

``results.json`` has one test per question for the public tests (``visibility: visible``, with the messages the
notebook's ``check`` would print) and, for a question with hidden tests, one more test for them
(``visibility: after_published``: students see it once the instructor publishes the grades). The grading itself
is :func:`dlbook.grading.batch.grade_submissions`, with its sandbox where the image allows one (else the
resource limits alone, said in the output).

The autograder's root is ``/autograder`` unless ``DLBOOK_AUTOGRADER_ROOT`` names another folder laid out the same
way (the tests use one), and ``run_autograder`` runs ``python3`` unless ``DLBOOK_PYTHON`` names another.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import zipfile
from pathlib import Path

__all__ = ["build_autograder", "results_for", "run"]

# dlbook's runtime dependencies and what the grader itself imports, pinned to the versions installed here
_PINNED = ("torch", "numpy", "matplotlib", "scikit-learn", "tqdm", "ipywidgets", "ipython", "traitlets")

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image.
set -euo pipefail
cd /autograder/source
apt-get update && apt-get install -y --no-install-recommends python3 python3-pip
python3 -m pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt
python3 -m pip install --no-deps ./dlbook
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for each submission; it writes $ROOT/results/results.json.
set -euo pipefail
ROOT="${DLBOOK_AUTOGRADER_ROOT:-/autograder}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
exec "${DLBOOK_PYTHON:-python3}" -m dlbook.grading.gradescope run --root "$ROOT" --source "$HERE"
"""


def _mode(info: zipfile.ZipInfo, executable: bool) -> zipfile.ZipInfo:
    info.external_attr = (0o755 if executable else 0o644) << 16
    info.date_time = (1980, 1, 1, 0, 0, 0)  # reproducible zips
    return info


def build_autograder(set_id: str, out: Path, extra_tests: list[str] = (), timeout: float = 120,
                     memory_mb: int = 8192, isolation: str = "auto") -> Path:
    """Write the autograder zip for ``set_id`` (``NN_slug``, or the path of its notebook) to ``out``.

    Raises:
        ValueError: an unknown set, hidden tests that are not ``.py`` files or folders of them.
    """
    import dlbook
    from dlbook.grading.batch import load_tests

    set_id = Path(set_id).stem if str(set_id).endswith(".ipynb") else str(set_id)
    load_tests(set_id, list(extra_tests))  # fails now, with its message, for a bad set or bad hidden tests
    files: dict[str, tuple[bytes, bool]] = {"setup.sh": (SETUP_SH.encode(), True),
                                            "run_autograder": (RUN_AUTOGRADER.encode(), True)}
    hidden = []
    for source in extra_tests:
        path = Path(source)
        if path.is_dir():
            members = sorted(path.glob("*.py"))
        elif path.suffix == ".py" and path.is_file():
            members = [path]
        else:
            raise ValueError(f"--extra-tests {source}: an autograder bundles .py files or folders of them")
        for member in members:
            name = f"hidden/{len(hidden)}_{member.name}"
            files[name] = (member.read_bytes(), False)
            hidden.append(name)
    config = {"set": set_id, "extra_tests": hidden, "timeout": timeout, "memory_mb": memory_mb,
              "isolation": isolation}
    files["autograder.json"] = ((json.dumps(config, indent=2, sort_keys=True) + "\n").encode(), False)
    pins = []
    for name in _PINNED:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    files["requirements.txt"] = (("\n".join(pins) + "\n").encode(), False)
    package = Path(dlbook.__file__).resolve().parent
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            files["dlbook/src/dlbook/" + path.relative_to(package).as_posix()] = (path.read_bytes(), False)
    files["dlbook/pyproject.toml"] = (
        f'[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "dlbook"\nversion = "{dlbook.__version__}"\n\n'
        f'[tool.setuptools.packages.find]\nwhere = ["src"]\n'.encode(), False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            data, executable = files[name]
            archive.writestr(_mode(zipfile.ZipInfo(name), executable), data)
    return out


def _public_output(question: dict) -> str:
    from dlbook.grading.core import fmt_points

    label = {"pass": "PASS", "fail": "FAIL", "error": "FAIL", "timeout": "FAIL"}
    lines = []
    for row in question["tests"]:
        if row["hidden"]:
            continue
        message = row["message"] if row["status"] in ("pass", "fail") else f"{row['status']}: {row['message']}"
        lines.append(f"{label.get(row['status'], '----')}  {fmt_points(row['earned'])}/{fmt_points(row['points'])}"
                     f"  {row['name']}" + (f": {message.rstrip(': ')}" if message else ""))
    return "\n".join(lines)


def results_for(grade) -> dict:
    """Gradescope's results.json for one :class:`dlbook.grading.batch.StudentGrade`."""
    tests = []
    for question in grade.questions:
        public = [r for r in question["tests"] if not r["hidden"]]
        hidden = [r for r in question["tests"] if r["hidden"]]
        if public:
            tests.append({"name": question["question"], "score": sum(r["earned"] for r in public),
                          "max_score": sum(r["points"] for r in public), "output": _public_output(question),
                          "visibility": "visible"})
        if hidden:
            tests.append({"name": f"{question['question']} (hidden tests)",
                          "score": sum(r["earned"] for r in hidden), "max_score": sum(r["points"] for r in hidden),
                          "output": "\n".join(f"{r['name']}: {r['status']}" for r in hidden),
                          "visibility": "after_published"})
    output = f"status: {grade.status}" + (f" ({grade.detail})" if grade.detail else "")
    if grade.cell_errors:
        output += "\ncells that raised:\n" + "\n".join(grade.cell_errors)
    return {"score": grade.total, "output": output, "tests": tests, "visibility": "visible",
            "stdout_visibility": "hidden"}


def _submitted_notebook(folder: Path, set_id: str) -> Path | None:
    notebooks = sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    named = [p for p in notebooks if p.stem == set_id]
    return (named or notebooks or [None])[0]


def run(root: Path, source: Path) -> dict:
    """Grade ``root/submission`` with the autograder in ``source``; write and return ``root/results/results.json``."""
    from dlbook.grading.batch import grade_submissions, load_tests

    config = json.loads((source / "autograder.json").read_text())
    set_id = config["set"]
    extra = [str(source / name) for name in config.get("extra_tests", [])]
    results_dir = root / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    notebook = _submitted_notebook(root / "submission", set_id)
    if notebook is None:
        results = {"score": 0, "output": f"no notebook submitted: upload {set_id}.ipynb", "tests": []}
    else:
        tests, hidden = load_tests(set_id, extra)
        (grade,) = grade_submissions(set_id, [notebook], tests, hidden, extra, timeout=float(config["timeout"]),
                                     memory_mb=int(config["memory_mb"]), isolation=config["isolation"],
                                     hide=[str(source / "hidden"), str(results_dir)])
        results = results_for(grade)
    (results_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n",
                                              encoding="utf-8")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlbook.grading.gradescope")
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="grade the submission (what run_autograder does)")
    go.add_argument("--root", default=os.environ.get("DLBOOK_AUTOGRADER_ROOT", "/autograder"))
    go.add_argument("--source", default=None, help="the unpacked autograder (default: ROOT/source)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    run(root, Path(args.source) if args.source else root / "source")
    return 0


if __name__ == "__main__":
    sys.exit(main())
