"""Exercise sets: where their tests live and the learner's ``check`` / ``check_all``.

Set ``NN_slug`` (e.g. ``00_preliminaries``) has its tests in the module
``dlbook.exercises.exNN_slug``, shipped with the package, so a Colab learner
needs nothing but ``pip install dlbook``.
"""

from __future__ import annotations

import importlib
import re
import sys
import types
from typing import Callable

from dlbook.grading.core import QuestionResult, collect_tests, format_question, format_summary, run_question

__all__ = ["set_module_name", "load_set", "question_ids", "checker"]

SET_ID = re.compile(r"^(\d\d)_([a-z0-9_]+)$")

# Set by the instructor's grader (dlbook.grading.worker): it grades every question itself,
# so the submission's own check() calls must not run the tests a second time.
_GRADER_ACTIVE = False


def set_module_name(set_id: str) -> str:
    """``"00_preliminaries"`` -> ``"dlbook.exercises.ex00_preliminaries"``."""
    if not isinstance(set_id, str) or not SET_ID.match(set_id):
        raise ValueError(f"an exercise set id looks like '00_preliminaries' (two digits, '_', a lowercase slug), "
                         f"got {set_id!r}")
    return f"dlbook.exercises.ex{set_id}"


def load_set(set_id: str) -> types.ModuleType:
    """Import the test module of ``set_id``; a clear error if there is none."""
    name = set_module_name(set_id)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        raise ValueError(f"no tests for exercise set {set_id!r}: expected a module {name} "
                         f"(src/dlbook/exercises/ex{set_id}.py)") from None


def question_ids(tests) -> list[str]:
    """Question ids in the order the tests define them, each once."""
    return list(dict.fromkeys(spec.question for spec, _ in tests))


def checker(set_id: str, namespace: dict | None = None) -> tuple[Callable, Callable]:
    """Return ``check, check_all`` for exercise set ``set_id``.

    Call it in a notebook, right after the setup cell::

        check, check_all = checker("00_preliminaries")
        ...
        check("q1")      # one row per test: PASS/FAIL, points, a message; then the score
        check_all()      # every question and the total

    Args:
        set_id: the set's id, ``NN_slug``.
        namespace: the globals the tests read; by default those of the caller
            (the notebook), read live, so later cells are seen.

    Neither function ever raises: a question whose code is still the stub
    shows "not attempted" and 0 points.
    """
    if _GRADER_ACTIVE:  # in a submission's sandbox: the grader runs the tests, in its own process
        def graded_elsewhere(*args, **kwargs) -> None:
            print("check(): graded by the instructor's grader")

        return graded_elsewhere, graded_elsewhere
    tests = collect_tests(load_set(set_id))
    ids = question_ids(tests)
    if namespace is None:
        namespace = sys._getframe(1).f_globals

    def check(qid: str) -> None:
        """Run the tests of question ``qid`` and print one row per test, then the score."""
        if _GRADER_ACTIVE:
            print(f"check({qid!r}): graded by the instructor's grader")
            return
        if qid not in ids:
            print(f"There is no question {qid!r} in set {set_id}: its questions are {', '.join(ids)}.")
            return
        try:
            print(format_question(run_question(qid, tests, namespace)))
        except Exception as err:  # never raise in the learner's notebook
            print(f"check({qid!r}) could not run: {type(err).__name__}: {err}")

    def check_all() -> None:
        """Run every question and print one line per question, then the total."""
        if _GRADER_ACTIVE:
            print("check_all(): graded by the instructor's grader")
            return
        try:
            results: list[QuestionResult] = [run_question(q, tests, namespace) for q in ids]
            print(f"Exercise set {set_id}")
            print(format_summary(results))
        except Exception as err:
            print(f"check_all() could not run: {type(err).__name__}: {err}")

    return check, check_all
