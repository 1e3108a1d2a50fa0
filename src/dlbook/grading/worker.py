"""The grading process: runs submissions, one forked child each (started by :mod:`dlbook.grading.batch`).

    python -m dlbook.grading.worker SET_ID WORKDIR NOTEBOOK... [--extra-tests X] [--jobs N]
                                    [--timeout S] [--cpu S] [--memory-mb MB]

The process imports torch, dlbook.grading (which binds the reference
functions of torch and numpy) and the set's tests, plus the instructor's
hidden ones, once. Then, for submission ``i``, it forks a child that

1. starts a process group of its own and limits its CPU time and address
   space (``resource.setrlimit``);
2. runs the notebook's code cells in order in a fresh IPython shell (so ``%``
   magics work), in the empty folder ``WORKDIR/i``; a cell that raises is
   recorded and the next cell still runs;
3. grades question ``qN`` right after the cell that calls ``check("qN")``, and
   every question left at the end, appending each result to
   ``WORKDIR/i/results.jsonl`` as one JSON line, flushed at once, so a later
   hang or crash keeps what was graded.

This process kills a child that runs past its wall-clock timeout (counted from
the fork, so importing torch is not the student's time) and writes
``WORKDIR/i/exit.json``. Forking after the imports makes each submission cost
a fraction of a second instead of a fresh interpreter's few seconds, while every
submission still runs in a process of its own: its monkeypatches, crashes and
``os._exit`` end with it.

The submission's own ``check()`` calls print a note and run nothing: the
child grades every question itself, whatever the notebook does with ``check``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import sys
import time
import traceback

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



def grade_notebook(notebook: str, results_path: str, tests, hidden: frozenset) -> None:
    """Run a submission's code cells and stream each question's result (in the child)."""
    from dlbook.grading import sets
    from dlbook.grading.core import run_question
    from dlbook.grading.sets import question_ids

    sets._GRADER_ACTIVE = True
    results = _Results(results_path)
    questions = question_ids(tests)
    with open(notebook, encoding="utf-8") as f:
        nb = json.load(f)
    shell = _shell()
    namespace = shell.user_ns
    graded: set[str] = set()

    def grade(qid: str) -> None:
        result = run_question(qid, tests, namespace, hidden=hidden)
        results.write({"question": result.to_dict()})
        graded.add(qid)

    code_cells = [c for c in nb["cells"] if c.get("cell_type") == "code"]
    for number, cell in enumerate(code_cells, start=1):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        outcome = shell.run_cell(source, store_history=False)
        error = outcome.error_before_exec or outcome.error_in_exec
        if error is not None:
            text = str(error).strip()
            message = _ADDRESS.sub("", text.splitlines()[0] if text else "")
            results.write({"cell_error": f"code cell {number}: {type(error).__name__}"
                                         + (f": {message}" if message else "")})
        for qid in check_calls(source):
            if qid in questions and qid not in graded:
                grade(qid)
    for qid in questions:
        if qid not in graded:
            grade(qid)
    results.write({"done": True})


def _child(notebook: str, folder: str, tests, hidden, cpu: float | None, memory_mb: int | None):
    """In the forked child: isolate, limit, grade, and leave without returning to the parent's code."""
    code = 0
    try:
        os.setpgid(0, 0)
        os.chdir(folder)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        log = os.open(os.path.join(folder, "stderr"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(log, 2)
        set_limits(cpu, memory_mb)
        grade_notebook(notebook, os.path.join(folder, "results.jsonl"), tests, hidden)
    except BaseException:  # noqa: BLE001  (anything at all: report and leave)
        code = 70
        with_traceback = traceback.format_exc()
        try:
            sys.stderr.write(with_traceback)
            sys.stderr.flush()
        except Exception:
            pass
    finally:
        os._exit(code)


def kill_group(pid: int) -> None:
    """SIGKILL every process of the group ``pid`` leads (gone already is fine)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _write_exit(folder: str, code: int | None, timed_out: bool) -> None:
    with open(os.path.join(folder, "exit.json"), "w", encoding="utf-8") as f:
        json.dump({"code": code, "timed_out": timed_out}, f, sort_keys=True)


def serve(set_id: str, workdir: str, notebooks: list[str], extra: list[str], jobs: int, timeout: float,
          cpu: float | None, memory_mb: int | None) -> None:
    """Grade ``notebooks`` with at most ``jobs`` children at a time."""
    from dlbook.grading.batch import load_tests

    tests, hidden = load_tests(set_id, extra)  # before any submitted code exists in any process
    from IPython.core.interactiveshell import InteractiveShell  # noqa: F401  (import once, before the forks)

    pending = list(enumerate(notebooks))
    running: dict[int, tuple[str, float]] = {}
    while pending or running:
        while pending and len(running) < jobs:
            index, notebook = pending.pop(0)
            folder = os.path.join(workdir, str(index))
            os.makedirs(folder, exist_ok=True)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(notebook, folder, tests, hidden, cpu, memory_mb)
            try:
                os.setpgid(pid, pid)  # also here, so a kill can never miss the group (the child does it too)
            except OSError:
                pass
            with open(os.path.join(folder, "pid"), "w") as f:
                f.write(str(pid))
            running[pid] = (folder, time.monotonic() + timeout)
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            folder, _ = running.pop(pid)
            kill_group(pid)  # whatever the submission started and left running
            _write_exit(folder, os.waitstatus_to_exitcode(status), False)
            continue
        now = time.monotonic()
        for pid, (folder, deadline) in list(running.items()):
            if now > deadline:
                kill_group(pid)
                os.waitpid(pid, 0)
                running.pop(pid)
                _write_exit(folder, None, True)
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlbook.grading.worker")
    parser.add_argument("set_id")
    parser.add_argument("workdir")
    parser.add_argument("notebooks", nargs="+")
    parser.add_argument("--extra-tests", action="append", default=[])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--cpu", type=float, default=None)
    parser.add_argument("--memory-mb", type=int, default=None)
    args = parser.parse_args(argv)
    serve(args.set_id, args.workdir, args.notebooks, args.extra_tests, args.jobs, args.timeout, args.cpu,
          args.memory_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
