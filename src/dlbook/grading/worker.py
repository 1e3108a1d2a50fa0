"""The child process that runs one submission and grades it (started by :mod:`dlbook.grading.batch`).

    python -m dlbook.grading.worker SET_ID NOTEBOOK RESULTS [--extra-tests X ...] [--cpu S] [--memory-mb MB]

In order, it:

1. limits its own CPU time and address space (``resource.setrlimit``);
2. imports dlbook.grading, which binds the reference functions of torch and
   numpy, and the set's tests (and the instructor's hidden ones), all before any
   submitted code runs;
3. runs the notebook's code cells in order in an IPython shell (so ``%`` magics
   work); a cell that raises is recorded and the next cell still runs;
4. grades question ``qN`` right after the cell that calls ``check("qN")``, and
   every question left at the end, and appends each result to RESULTS as one
   JSON line, flushed at once, so a later hang or crash keeps what was graded.

The submission's own ``check()`` calls print a note and run nothing: the
worker grades every question itself, whatever the notebook does with ``check``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys

_CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([A-Za-z][A-Za-z0-9_.-]*)["']\s*\)""")
_ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")


def _limit(kind: int, value: int | None) -> None:
    if value is None or value <= 0:
        return
    soft, hard = resource.getrlimit(kind)
    new_hard = value if hard == resource.RLIM_INFINITY else min(hard, value)
    resource.setrlimit(kind, (min(value, new_hard), new_hard))


def set_limits(cpu_seconds: float | None, memory_mb: int | None) -> None:
    """CPU seconds (SIGXCPU, then SIGKILL one second later) and address space in MiB."""
    if cpu_seconds:
        soft = max(1, int(cpu_seconds))
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        new_hard = soft + 1 if hard == resource.RLIM_INFINITY else min(hard, soft + 1)
        resource.setrlimit(resource.RLIMIT_CPU, (min(soft, new_hard), new_hard))
    if memory_mb:
        _limit(resource.RLIMIT_AS, int(memory_mb) * 1024 * 1024)


def check_calls(source: str) -> list[str]:
    """The question ids a cell asks about with ``check("qN")``, in order."""
    return _CHECK_CALL.findall(source)


def _shell():
    """A quiet IPython shell with no history database (so nothing is written to the profile)."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False
    return InteractiveShell.instance(config=config)


class _Results:
    """RESULTS: one JSON object per line, flushed after each (a killed process loses nothing written)."""

    def __init__(self, path: str):
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlbook.grading.worker")
    parser.add_argument("set_id")
    parser.add_argument("notebook")
    parser.add_argument("results")
    parser.add_argument("--extra-tests", action="append", default=[])
    parser.add_argument("--cpu", type=float, default=None)
    parser.add_argument("--memory-mb", type=int, default=None)
    args = parser.parse_args(argv)

    set_limits(args.cpu, args.memory_mb)
    results = _Results(args.results)

    # Before any submitted code: bind the references, load every test.
    from dlbook.grading import sets
    from dlbook.grading.batch import load_tests
    from dlbook.grading.core import run_question

    tests, hidden = load_tests(args.set_id, args.extra_tests)
    sets._GRADER_ACTIVE = True
    questions = list(dict.fromkeys(spec.question for spec, _ in tests))

    with open(args.notebook, encoding="utf-8") as f:
        nb = json.load(f)
    shell = _shell()
    namespace = shell.user_ns
    graded: set[str] = set()

    def grade(qid: str) -> None:
        result = run_question(qid, tests, namespace, hidden=hidden)
        results.write({"question": result.to_dict()})
        graded.add(qid)

    results.write({"ready": True})
    code_cells = [c for c in nb["cells"] if c.get("cell_type") == "code"]
    for number, cell in enumerate(code_cells, start=1):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        outcome = shell.run_cell(source, store_history=False)
        error = outcome.error_before_exec or outcome.error_in_exec
        if error is not None:
            message = _ADDRESS.sub("", str(error).strip().splitlines()[0] if str(error).strip() else "")
            results.write({"cell_error": f"code cell {number}: {type(error).__name__}" + (f": {message}" if message else "")})
        for qid in check_calls(source):
            if qid in questions and qid not in graded:
                grade(qid)
    for qid in questions:
        if qid not in graded:
            grade(qid)
    results.write({"done": True})
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
