"""Grade a class: one process per submission, one JSON per student and ``grades.csv``.

:func:`grade_class` is what ``python -m dlbook.grading grade`` runs. It

* checks that each file is a notebook (else status ``invalid notebook``);
* starts one grading process (:mod:`dlbook.grading.worker`, run with
  ``sys.executable``) that imports torch and the tests once, then forks a child
  per submission, ``--jobs`` at a time: each child runs in an empty temporary
  folder with CPU and memory limits (``resource.setrlimit``) and a wall-clock
  timeout counted from its start;
* reads what each child streamed, one question at a time, so a hang (status
  ``timeout after N s``) or a crash (``crashed (exit N)``, or
  ``crashed (killed by SIGNAL)`` when a limit or signal ended it) keeps the
  questions graded before it.

Points come from the instructor's copy of the tests, never from the child:
a row counts only if the child reports a known test as passed.
Everything written is sorted and free of timestamps and absolute paths, so
grading the same files twice gives byte-identical output.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from dlbook.grading.core import fmt_points
from dlbook.grading.loader import load_extra_tests, load_tests
from dlbook.grading.process_group import kill_group
from dlbook.grading.reports import class_summary, feedback_markdown
from dlbook.grading.sandbox import scrubbed_environment
from dlbook.grading.sets import question_ids

__all__ = ["load_tests", "load_extra_tests", "validate_notebook", "grade_submissions", "grade_class", "grades_csv",
           "StudentGrade"]

STARTUP_LIMIT_S = 300  # the grading process must import torch and the tests within this


# ----------------------------------------------------------------------------------------------
# One submission


MAX_NOTEBOOK_BYTES = 64 * 1024 * 1024  # a notebook with its outputs; a submission above it is not read
_UNREADABLE = ("not a text file", "not JSON", "cannot be read", "larger than", "nested too deeply")


def validate_notebook(path: Path) -> str | None:
    """None if ``path`` is a readable v4 notebook, else why not (one line).

    Reading is bounded: a file over :data:`MAX_NOTEBOOK_BYTES`, one that is not UTF-8, not JSON, or JSON nested
    deeper than the decoder's recursion limit is refused with a reason, never with an exception.
    """
    try:
        size = os.stat(path).st_size
        if size > MAX_NOTEBOOK_BYTES:
            return f"larger than {MAX_NOTEBOOK_BYTES >> 20} MiB ({size >> 20} MiB)"
        with open(path, "rb") as f:
            data = f.read(MAX_NOTEBOOK_BYTES + 1)
        nb = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return "not a text file"
    except json.JSONDecodeError as err:
        return f"not JSON ({err.msg}, line {err.lineno})"
    except RecursionError:
        return "nested too deeply to be a notebook"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return "JSON but not a notebook (no list of cells)"
    if nb.get("nbformat") != 4:
        return f"nbformat {nb.get('nbformat')!r}, expected 4"
    for i, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict) or not isinstance(cell.get("cell_type"), str):
            return f"cell {i} is malformed"
        source = cell.get("source", "")
        if not (isinstance(source, str) or (isinstance(source, list) and all(isinstance(s, str) for s in source))):
            return f"cell {i} has a malformed source"
    return None


_SURROGATES = re.compile("[\ud800-\udfff]")
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


def safe_text(text, limit: int = 2000) -> str:
    """``text`` as it may reach a file: lone surrogates (from a learner's message or a file name that is not
    UTF-8) and control characters become U+FFFD, and at most ``limit`` characters are kept."""
    try:
        text = str(text)
    except BaseException:  # noqa: BLE001
        text = "<unprintable>"
    return _CONTROLS.sub("\ufffd", _SURROGATES.sub("\ufffd", text[:limit]))


def student_name(path: Path) -> str:
    """The student of a submission: its file stem, read as UTF-8, else as Latin-1 (the name an old system wrote
    as ``Jos\xe9.ipynb`` is José), made safe for every file it reaches."""
    raw = os.fsencode(Path(path).stem)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        name = raw.decode("latin-1")
    return safe_text(name, 200)


@dataclasses.dataclass
class StudentGrade:
    """The grade of one submission, as written to ``<student>.json``."""

    student: str
    set_id: str
    status: str
    questions: list[dict]
    cell_errors: list[str]
    detail: str = ""
    isolation: str = ""
    # the hidden tests' messages, for the instructor's summary only (never in the student's files)
    instructor_messages: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def total(self) -> float:
        return sum(q["earned"] for q in self.questions)

    @property
    def max_total(self) -> float:
        return sum(q["points"] for q in self.questions)

    def to_json(self) -> str:
        data = {"student": self.student, "set": self.set_id, "status": self.status, "detail": self.detail,
                "total": self.total, "max_total": self.max_total, "questions": self.questions,
                "cell_errors": self.cell_errors, "isolation": self.isolation}
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _ungraded_rows(tests, qid: str, why: str) -> dict:
    rows = [{"question": qid, "name": spec.name, "points": float(spec.points), "earned": 0.0,
             "status": "not graded", "message": why, "hidden": False} for spec, _ in tests if spec.question == qid]
    return {"question": qid, "earned": 0.0, "points": sum(r["points"] for r in rows), "attempted": False,
            "tests": rows}


_HIDDEN_MESSAGE = {"fail": "failed", "error": "raised an exception", "timeout": "ran past its timeout",
                   "not attempted": "not attempted", "not graded": "not graded"}


def _trusted_question(tests, hidden: frozenset, qid: str, reported: dict, scrub: Callable[[str], str],
                      instructor_messages: dict | None = None) -> dict:
    """Rebuild a question's result from the child's report, with points from the parent's own tests.

    A hidden test's row carries no text the submission could have shaped (its exception's message or class
    name, a value it returned): a learner could otherwise write the hidden test's inputs into the feedback that
    goes back to students. The full message goes into ``instructor_messages``."""
    by_name = {row.get("name"): row for row in reported.get("tests", []) if isinstance(row, dict)}
    rows = []
    for spec, _ in tests:
        if spec.question != qid:
            continue
        row = by_name.get(spec.name, {})
        status = row.get("status") if row.get("status") in ("pass", "fail", "not attempted", "error", "timeout") \
            else "not graded"
        message = scrub(str(row.get("message", "")))
        if spec.name in hidden:
            if instructor_messages is not None:
                instructor_messages[spec.name] = message
            message = spec.doc if status == "pass" else _HIDDEN_MESSAGE.get(status, status)
        rows.append({"question": qid, "name": spec.name, "points": float(spec.points),
                     "earned": float(spec.points) if status == "pass" else 0.0, "status": status,
                     "message": message, "hidden": spec.name in hidden})
    return {"question": qid, "earned": sum(r["earned"] for r in rows), "points": sum(r["points"] for r in rows),
            "attempted": any(r["status"] not in ("not attempted", "not graded") for r in rows), "tests": rows}


def _status(code: int | None, timed_out: bool, done: bool, timeout: float, refused: bool = False,
            out_of_memory: bool = False) -> str:
    if timed_out:
        return f"timeout after {fmt_points(timeout)} s"
    if code == 0 and done:
        return "ok"
    if out_of_memory:  # the control group's memory limit: the kernel killed a process of the submission's
        return "crashed (out of memory: over --memory-mb)"
    if refused:  # the sandbox said so before running anything (an exit code alone, 71 included, proves nothing)
        return "not run (no sandbox: --isolation require)"
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"crashed (killed by {name})"
    return f"crashed (exit {code})"


def _run_grader(set_id: str, paths: list[Path], work: Path, extra: list[str], timeout: float,
                cpu_seconds: float | None, memory_mb: int | None, jobs: int, hide: list[str],
                isolation: str) -> tuple[dict[int, dict], str]:
    """Run the grading process (dlbook.grading.worker) on ``paths``: ({index: its report}, its stderr)."""
    cmd = [sys.executable, "-m", "dlbook.grading.worker", set_id, str(work), *(str(p.resolve()) for p in paths),
           "--jobs", str(jobs), "--timeout", str(timeout), "--isolation", isolation,
           "--cpu", str(cpu_seconds if cpu_seconds else timeout + 10), "--memory-mb", str(memory_mb or 0)]
    for source in extra:
        cmd += ["--extra-tests", source]
    for path in hide:
        cmd += ["--hide", str(path)]
    # An allowlist, not the instructor's environment: no token or agent socket reaches the grading process, so
    # none can reach a sandbox forked from it (os.environ cleared there would still leave its memory).
    env = dict(scrubbed_environment(os.environ), MPLBACKEND="Agg", PYTHONHASHSEED="0", HOME=str(work),
               PYTHONPATH=os.pathsep.join([os.getcwd(), *filter(None, [os.environ.get("PYTHONPATH")])]),
               PYDEVD_DISABLE_FILE_VALIDATION="1")
    for name in ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH"):  # where the interpreter's own libraries may be
        if name in os.environ:
            env[name] = os.environ[name]
    env.setdefault("OMP_NUM_THREADS", "1")
    rounds = -(-len(paths) // jobs)
    limit = STARTUP_LIMIT_S + rounds * (timeout + 30)
    with open(work / "grader.stderr", "w+b") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=log, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            out, _ = proc.communicate()
        kill_group(proc.pid)  # the sandbox process, should the grading process have stopped early
        log.seek(0)
        reports = {}
        for line in out.decode("utf-8", errors="replace").splitlines():
            try:
                report = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(report, dict) and isinstance(report.get("index"), int):
                reports[report["index"]] = report
        return reports, log.read().decode("utf-8", errors="replace")


def _collect(student: str, set_id: str, tests, hidden: frozenset, report: dict | None, timeout: float,
             grader_log: str, folder: str = "") -> StudentGrade:
    """A submission's grade from the grading process's report on it."""
    qids = question_ids(tests)
    records = [r for r in (report or {}).get("records", []) if isinstance(r, dict)]
    exit_info = (report or {}).get("exit")
    refused = False
    if not isinstance(exit_info, dict):
        status = "crashed (the grading process stopped)"
        tail = grader_log.strip().splitlines()[-3:]
        print(f"dlbook-grade: {student}: the grading process stopped before this submission finished:\n  "
              + "\n  ".join(tail), file=sys.stderr)
    else:
        done = any(r.get("done") for r in records)
        refused = any(str(r.get("isolation", "")).startswith("not run: a sandbox was required") for r in records)
        status = _status(exit_info.get("code"), bool(exit_info.get("timed_out")), done, timeout, refused,
                         bool(exit_info.get("out_of_memory")))
        if exit_info.get("code") == 70 and not done:
            tail = grader_log.strip().splitlines()[-3:]
            print(f"dlbook-grade: {student}: the grader failed on this submission:\n  " + "\n  ".join(tail),
                  file=sys.stderr)

    def scrub(text: str) -> str:  # the rlimits-only working folder is a temporary one: keep reports reproducible
        text = safe_text(text)
        return text.replace(os.path.realpath(folder), "<tmp>").replace(folder, "<tmp>") if folder else text

    reported = {r["question"].get("question"): r["question"] for r in records if isinstance(r.get("question"), dict)}
    why = f"not graded: the submission stopped first ({status})"
    instructor_messages: dict = {}
    questions = [_trusted_question(tests, hidden, q, reported[q], scrub, instructor_messages) if q in reported
                 else _ungraded_rows(tests, q, why) for q in qids]
    cell_errors = [scrub(str(r["cell_error"])) for r in records if "cell_error" in r]
    isolation = safe_text(next((str(r["isolation"]) for r in records if "isolation" in r), "not started"), 600)
    detail = next((scrub(str(r["failure"])) for r in records if "failure" in r), "")
    if refused:  # nothing ran: no point may stand
        questions = [_ungraded_rows(tests, q, "not run: no sandbox") for q in qids]
    return StudentGrade(student, set_id, status, questions, cell_errors, detail=detail, isolation=isolation,
                        instructor_messages=instructor_messages)


def grade_submissions(set_id: str, paths: list[Path], tests, hidden: frozenset, extra: list[str] = (),
                      timeout: float = 120, cpu_seconds: float | None = None, memory_mb: int | None = 8192,
                      jobs: int = 1, hide: list[str] = (), isolation: str = "auto") -> list[StudentGrade]:
    """Grade notebooks, each in a process of its own; never raises for anything a submission does.

    Returns one :class:`StudentGrade` per path, in order (the student is the file stem, see :func:`student_name`).
    """
    paths = [Path(p) for p in paths]
    grades: dict[int, StudentGrade] = {}
    runnable: list[int] = []
    for i, path in enumerate(paths):
        problem = validate_notebook(path)
        if problem is None:
            runnable.append(i)
        else:
            status = "unreadable notebook" if problem.startswith(_UNREADABLE) else "invalid notebook"
            grades[i] = StudentGrade(student_name(path), set_id, status,
                                     [_ungraded_rows(tests, q, f"the file is an {status}")
                                      for q in question_ids(tests)], [], detail=safe_text(problem),
                                     isolation="not run")
    if runnable:
        with tempfile.TemporaryDirectory(prefix="dlbook-grade-") as work:
            reports, log = _run_grader(set_id, [paths[i] for i in runnable], Path(work), list(extra), timeout,
                                       cpu_seconds, memory_mb, jobs, [*map(str, paths), *hide], isolation)
            for k, i in enumerate(runnable):
                grades[i] = _collect(student_name(paths[i]), set_id, tests, hidden, reports.get(k), timeout, log,
                                     str(Path(work) / str(k)))
    weaker = sorted({g.isolation for g in grades.values() if g.isolation.startswith(("rlimits", "not run: a sandbox"))})
    if weaker:
        what = "submissions were not run" if weaker[0].startswith("not run") else \
            "graded with resource limits alone, without a sandbox"
        print(f"dlbook-grade: {what}: {weaker[0]} (see 'isolation' in each student's JSON and "
              f"book/instructors.md)", file=sys.stderr)
    return [grades[i] for i in range(len(paths))]


# ----------------------------------------------------------------------------------------------
# A class


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: one that starts like a formula (``=``, ``+``, ``-``, ``@``, tab,
    carriage return) gets a leading apostrophe, as spreadsheet-export libraries do."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def grades_csv(grades: list[StudentGrade], qids: list[str], maxima: dict[str, float] | None = None) -> str:
    """``student, <one column per question>, total, status``; a ``(maximum)`` row of each question's points (when
    ``maxima`` is given, else taken from the grades), then one row per student, sorted."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["student", *qids, "total", "status"])
    if maxima is None and grades:
        maxima = {q["question"]: q["points"] for q in grades[0].questions}
    if maxima is not None:
        writer.writerow(["(maximum)", *(fmt_points(maxima.get(q, 0)) for q in qids),
                         fmt_points(sum(maxima.get(q, 0) for q in qids)), ""])
    for grade in sorted(grades, key=lambda g: g.student):
        earned = {q["question"]: q["earned"] for q in grade.questions}
        writer.writerow([spreadsheet_safe(safe_text(grade.student, 200)), *(fmt_points(earned.get(q, 0)) for q in qids),
                         fmt_points(grade.total), spreadsheet_safe(safe_text(grade.status, 200))])
    return buffer.getvalue()


def _question_maxima(tests) -> dict[str, float]:
    maxima: dict[str, float] = {}
    for spec, _ in tests:
        maxima[spec.question] = maxima.get(spec.question, 0.0) + float(spec.points)
    return maxima


def hidden_module_files(sources: list[str]) -> list[str]:
    """The files behind hidden tests named as modules (already imported): each module's file, or its package's
    folder, so the sandbox can mask them like a file given by path."""
    found = []
    for source in sources:
        if Path(source).exists():
            continue
        module = sys.modules.get(source)
        file = getattr(module, "__file__", None)
        if file:
            file = os.path.realpath(file)
            found.append(os.path.dirname(file) if os.path.basename(file) == "__init__.py" else file)
    return found


def grade_class(exercise: Path, submissions: list[Path], out: Path, extra_tests: list[str] = (),
                timeout: float = 120, cpu_seconds: float | None = None, memory_mb: int | None = 8192,
                jobs: int = 1, isolation: str = "auto") -> str:
    """Grade every submission of the set named by ``exercise`` (``exercises/NN_slug.ipynb``) into ``out``.

    Writes ``out/<student>.json`` and ``out/<student>.md`` (readable feedback) per submission, ``out/grades.csv``
    (a row of each question's maximum, then one per student) and ``out/summary.md`` (the class per question);
    returns the CSV text. Students are the submissions' file stems, which must be unique.

    Raises:
        ValueError: unknown set, bad hidden tests, duplicate students, bad numbers.
    """
    exercise = Path(exercise)
    if exercise.suffix != ".ipynb":
        raise ValueError(f"the first argument names the set by its notebook, exercises/NN_slug.ipynb; got {exercise}")
    if not exercise.is_file():
        raise ValueError(f"no such exercise notebook: {exercise}")
    set_id = exercise.stem
    if not submissions:
        raise ValueError("no submissions given")
    if timeout <= 0 or (cpu_seconds is not None and cpu_seconds <= 0) or jobs < 1:
        raise ValueError("timeout and --cpu must be positive seconds, and --jobs at least 1")
    students = [student_name(Path(p)) for p in submissions]
    twice = sorted({s for s in students if students.count(s) > 1})
    if twice:
        raise ValueError(f"two submissions share a name (the file stem is the student): {', '.join(twice)}")
    extra = [str(Path(x).resolve()) if Path(x).exists() else x for x in extra_tests]
    tests, hidden = load_tests(set_id, extra)
    qids = question_ids(tests)

    if isolation not in ("auto", "rlimits", "require"):
        raise ValueError(f"isolation must be 'auto', 'rlimits' or 'require', got {isolation!r}")
    hide = [str(Path(out).resolve()), *map(str, extra_tests), *hidden_module_files(extra)]
    grades = grade_submissions(set_id, [Path(p) for p in submissions], tests, hidden, extra, timeout, cpu_seconds,
                               memory_mb, jobs, hide=hide, isolation=isolation)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = grades_csv(grades, qids, _question_maxima(tests))
    try:
        for grade in grades:  # one file that cannot be written costs that student's file, not the class's
            try:
                (out / f"{grade.student}.json").write_text(grade.to_json(), encoding="utf-8")
                (out / f"{grade.student}.md").write_text(feedback_markdown(grade), encoding="utf-8")
            except (OSError, UnicodeError, ValueError) as err:
                print(f"dlbook-grade: could not write {safe_text(grade.student, 200)!r}'s report: {err}",
                      file=sys.stderr)
    finally:
        (out / "grades.csv").write_text(text, encoding="utf-8")
        (out / "summary.md").write_text(class_summary(grades, qids), encoding="utf-8")
    return text
