"""Tests of an exercise set: how they are declared, run and reported.

A test is a plain function of the learner's namespace, declared with
:func:`question`::

    @question("q1", points=2, timeout=10)
    def mean_matches_torch(ns):
        \"\"\"my_mean equals torch's mean over dim 0.\"\"\"
        x = torch.randn(5, 3, dtype=torch.float64)
        assert_close(ns.my_mean(x), x.mean(0), atol=1e-6, hint="did you average over dim 0?")

Running a test never raises: it gives a :class:`TestResult` whose status is
``pass``, ``fail``, ``not attempted``, ``error`` or ``timeout``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import re
import signal
import threading
import types
from typing import Callable

import numpy as np
import torch

from dlbook.grading import _references as ref
from dlbook.grading.errors import NotAttempted, SubmissionGone, TestTimeout
from dlbook.grading.inputs import guard

__all__ = ["question", "assert_close", "NotAttempted", "Namespace", "TestSpec", "TestResult", "QuestionResult",
           "collect_tests", "run_test", "run_question", "format_question", "format_summary"]

_QUESTION_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class TestSpec:
    """What :func:`question` attaches to a test function."""

    __test__ = False  # not a pytest class

    question: str
    points: float
    timeout: float
    name: str
    doc: str


def question(qid: str, points: float = 1, timeout: float = 10) -> Callable:
    """Declare a function ``f(ns)`` as a test of question ``qid`` worth ``points``.

    Args:
        qid: the question id the learner passes to ``check`` (``"q1"``).
        points: what a pass earns (positive).
        timeout: seconds the test may run before it counts as failed.

    The test receives ``ns``, the learner's notebook globals as attributes. It
    passes when it returns, fails on ``AssertionError`` (its message is shown),
    and is "not attempted" when the learner's code is still the stub.
    """
    if not isinstance(qid, str) or not _QUESTION_ID.match(qid):
        raise ValueError(f"question id must be a string such as 'q1', got {qid!r}")
    if isinstance(points, bool) or not isinstance(points, (int, float)) or not points > 0:
        raise ValueError(f"points must be a positive number, got {points!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")

    def mark(fn):
        if not callable(fn):
            raise TypeError(f"@question(...) decorates a function f(ns), got {type(fn).__name__}")
        doc = (fn.__doc__ or "").strip().splitlines()
        fn.__dlbook_test__ = TestSpec(qid, points, float(timeout), fn.__name__, doc[0] if doc else "")
        return fn

    return mark


def collect_tests(*modules: types.ModuleType) -> list[tuple[TestSpec, Callable]]:
    """The tests defined in ``modules``, in the order they are written."""
    found = []
    for module in modules:
        for value in vars(module).values():
            spec = getattr(value, "__dlbook_test__", None)
            if isinstance(spec, TestSpec) and getattr(value, "__module__", None) == module.__name__:
                found.append((spec, value))
    return found


class Namespace:
    """The learner's globals, read as attributes by a test.

    A missing name, or one still bound to ``...``, raises :class:`NotAttempted`.
    """

    def __init__(self, mapping: dict):
        self._mapping = mapping
        self._changes: list[str] = []  # what learner calls changed in place (dlbook.grading.inputs)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            value = self._mapping[name]
        except KeyError:
            raise NotAttempted(f"`{name}` is not defined (did you run its cell?)") from None
        if value is Ellipsis:
            raise NotAttempted(f"`{name}` is still `...`")
        return guard(value, name, self._changes)  # calls into it get fresh copies of their inputs

    def __contains__(self, name: str) -> bool:
        return name in self._mapping


# ----------------------------------------------------------------------------------------------
# Comparing numbers


def _to_tensor(value, what: str):
    if value is None or value is Ellipsis:
        raise AssertionError(f"{what} is {value!r}: did the function forget to `return`?")
    if ref.is_tensor(value):
        return value.detach().to("cpu", ref.float64)
    try:
        return ref.as_tensor(np.asarray(value, dtype=np.float64), dtype=ref.float64)
    except (TypeError, ValueError) as err:
        raise AssertionError(f"{what} should be a tensor or a number, got {type(value).__name__}") from err


def _numel_and_shape(value):
    """(number of elements, shape) of a tensor or array without converting it; None for anything else."""
    if ref.is_tensor(value) or isinstance(value, np.ndarray):
        return int(np.prod(tuple(value.shape), dtype=np.int64)), tuple(value.shape)
    if isinstance(value, (bool, int, float, np.number)):
        return 1, ()
    return None


def _check_size(actual, expected, tail: str) -> None:
    """Refuse an answer whose size or shape cannot match the expected one, from its shape alone: a huge answer
    then costs the grading process nothing (no float64 copy, no broadcast)."""
    mine, theirs = _numel_and_shape(actual), _numel_and_shape(expected)
    if theirs is None:
        return
    if mine is None:
        if isinstance(actual, (list, tuple)) and len(actual) > max(theirs[0], 1):
            raise AssertionError(f"a sequence of {len(actual)} items, expected shape {theirs[1]}{tail}")
        return
    if mine[1] != theirs[1] and not mine[0] == theirs[0] == 1:
        raise AssertionError(f"shape {mine[1]}, expected {theirs[1]}{tail}")


def assert_close(actual, expected, atol: float = 1e-6, rtol: float = 0.0, hint: str | None = None) -> None:
    """Fail with a helpful message unless ``|actual - expected| <= atol + rtol * |expected|`` everywhere.

    Args:
        actual: the learner's result (tensor, array or number; any shape).
        expected: the reference result, same shape.
        atol, rtol: absolute and relative tolerance.
        hint: what to tell the learner when the numbers differ
            ("did you use the unbiased variance?").

    Compares in float64 with functions captured before any learner code ran,
    so replacing ``torch.allclose`` in a notebook changes nothing here.
    Where ``expected`` is not finite, ``actual`` must be the same value: the
    same infinity, or NaN where NaN is expected.
    The message names the max abs error and where it occurs.
    """
    if atol < 0 or rtol < 0:
        raise ValueError(f"atol and rtol must be >= 0, got atol={atol}, rtol={rtol}")
    tail = f": {hint}" if hint else ""
    expected_size = expected.element_size() if ref.is_tensor(expected) and expected.is_floating_point() else \
        8 if isinstance(expected, float) else 0
    if ref.is_tensor(actual) and actual.is_floating_point() and actual.element_size() < expected_size:
        wanted = str(expected.dtype).replace("torch.", "") if ref.is_tensor(expected) else "float64"
        tail += f" (your result is {str(actual.dtype).replace('torch.', '')}, the expected one {wanted}: keep the " \
                f"inputs' dtype, or return a Python float)"
    _check_size(actual, expected, tail)  # before any conversion or arithmetic on the learner's answer
    a = _to_tensor(actual, "your result")
    e = _to_tensor(expected, "the expected result")
    if tuple(a.shape) != tuple(e.shape):
        if a.numel() == e.numel() == 1:
            a = a.reshape(e.shape)
        else:
            raise AssertionError(f"shape {tuple(a.shape)}, expected {tuple(e.shape)}{tail}")
    finite_a, finite_e = ref.isfinite(a), ref.isfinite(e)
    bad = finite_e & ~finite_a
    if bool(bad.any()):
        raise AssertionError(f"{int(bad.sum())} value(s) are inf or nan where finite values were expected{tail}")
    # Where the expected value is not finite, only the same value matches: the same infinity, NaN for NaN.
    nan_e, nan_a = e != e, a != a
    wrong = ~finite_e & ~((nan_e & nan_a) | (~nan_e & (a == e)))
    if bool(wrong.any()):
        worst = int(ref.torch_argmax(wrong.reshape(-1).to(ref.float64)))
        where = "" if e.dim() == 0 else f" at index {tuple(int(i) for i in np.unravel_index(worst, tuple(e.shape)))}"
        raise AssertionError(f"{float(a.reshape(-1)[worst])} where {float(e.reshape(-1)[worst])} was expected"
                             f"{where}{tail}")
    error = ref.torch_where(finite_e, ref.torch_abs(a - e), ref.as_tensor(0.0, dtype=ref.float64))
    allowed = atol + rtol * ref.torch_where(finite_e, ref.torch_abs(e), ref.as_tensor(0.0, dtype=ref.float64))
    over = error - allowed
    if bool((over > 0).any()):
        worst = int(ref.torch_argmax(over.reshape(-1)))
        where = "" if e.dim() == 0 else f" at index {tuple(int(i) for i in np.unravel_index(worst, tuple(e.shape)))}"
        raise AssertionError(f"max abs error {float(error.max()):.3g}{where} (allowed {atol:g}"
                             f"{f' + {rtol:g}*|expected|' if rtol else ''}){tail}")


# ----------------------------------------------------------------------------------------------
# Running tests


@dataclasses.dataclass
class TestResult:
    """One row of the report: a test's outcome."""

    __test__ = False

    question: str
    name: str
    points: float
    earned: float
    status: str  # "pass", "fail", "not attempted", "error", "timeout"
    message: str = ""
    hidden: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class QuestionResult:
    """All rows of one question and its score."""

    question: str
    tests: list[TestResult]

    @property
    def earned(self) -> float:
        return sum(t.earned for t in self.tests)

    @property
    def points(self) -> float:
        return sum(t.points for t in self.tests)

    @property
    def attempted(self) -> bool:
        return any(t.status != "not attempted" for t in self.tests)

    def to_dict(self) -> dict:
        return {"question": self.question, "earned": self.earned, "points": self.points,
                "attempted": self.attempted, "tests": [t.to_dict() for t in self.tests]}


_ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")


def _describe(err: BaseException) -> str:
    """A one-line message with no memory addresses (so grading is reproducible)."""
    text = str(err).strip().splitlines()
    text = _ADDRESS.sub("", text[0] if text else "")
    return text


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise :class:`TestTimeout` in the block after ``seconds`` (main thread on Unix; else no limit)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise TestTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _fixed_random_state(seed: int = 0):
    """Seed python, numpy and torch for the test, then give the learner their random state back."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def run_test(spec: TestSpec, fn: Callable, namespace, hidden: bool = False) -> TestResult:
    """Run one test against the learner's globals; never raises (but for KeyboardInterrupt and SubmissionGone).

    ``namespace`` is the learner's globals (a dict, in the learner's own process) or, for the instructor's
    grader, a :class:`dlbook.grading.proxy.Channel` to the submission's process.
    """
    row = TestResult(spec.question, spec.name, spec.points, 0.0, "fail", hidden=hidden)
    if isinstance(namespace, dict):
        ns, limit = Namespace(namespace), spec.timeout
    else:
        from dlbook.grading.proxy import GRACE_S, RemoteNamespace

        ns, limit = RemoteNamespace(namespace, spec.timeout), spec.timeout + GRACE_S
    try:
        with ref.clean_references(), _fixed_random_state(), _time_limit(limit):
            try:
                fn(ns)
            finally:
                if not isinstance(ns, Namespace):
                    ns._end()
    except TestTimeout:
        row.status, row.message = "timeout", f"took longer than {spec.timeout:g} s (an endless loop?)"
    except (NotAttempted, NotImplementedError) as err:
        row.status = "not attempted"
        row.message = _describe(err) if isinstance(err, NotAttempted) else "still raises NotImplementedError"
    except AssertionError as err:
        row.status, row.message = "fail", _describe(err) or "wrong result"
        changes = getattr(ns, "_changes", ())
        if changes and " in place" not in row.message:
            row.message += f" (note: {changes[0]} in place; the grader passes copies, so only what it returned counts)"
    except (KeyboardInterrupt, SubmissionGone):
        raise
    except BaseException as err:  # the learner's code may raise anything, SystemExit included
        row.status, row.message = "error", f"raised {type(err).__name__}: {_describe(err)}".rstrip(": ")
    else:
        row.status, row.earned = "pass", float(spec.points)
        row.message = spec.doc
    return row


def run_question(qid: str, tests: list[tuple[TestSpec, Callable]], namespace,
                 hidden: frozenset = frozenset()) -> QuestionResult:
    """Run every test of question ``qid``; ``hidden`` holds the names of the instructor's hidden tests."""
    rows = [run_test(spec, fn, namespace, hidden=spec.name in hidden) for spec, fn in tests if spec.question == qid]
    return QuestionResult(qid, rows)


# ----------------------------------------------------------------------------------------------
# Reports


def fmt_points(x: float) -> str:
    """2 -> '2', 1.5 -> '1.5' (points print the same on every machine)."""
    return f"{round(float(x), 4):g}"


_LABEL = {"pass": "PASS", "fail": "FAIL", "error": "FAIL", "timeout": "FAIL", "not attempted": "----"}


def format_question(result: QuestionResult) -> str:
    """The rows ``check("q1")`` prints, then the question's score."""
    scores = [f"{fmt_points(row.earned)}/{fmt_points(row.points)}" for row in result.tests]
    width = max(map(len, scores), default=0)
    lines = []
    for row, score in zip(result.tests, scores):
        message = row.message if row.status in ("pass", "fail") else f"{row.status}: {row.message}".rstrip(": ")
        lines.append(f"  {_LABEL[row.status]}  {score:>{width}}  {row.name}" + (f": {message}" if message else ""))
    state = "" if result.attempted else " (not attempted)"
    lines.append(f"{result.question}: {fmt_points(result.earned)}/{fmt_points(result.points)} points{state}")
    return "\n".join(lines)


def format_summary(results: list[QuestionResult]) -> str:
    """The table ``check_all()`` prints: one line per question, then the total."""
    width = max([len(r.question) for r in results] + [5])
    lines = []
    for r in results:
        state = "" if r.attempted else "  not attempted"
        if r.attempted and r.earned < r.points:
            failing = [t.name for t in r.tests if t.status != "pass"]
            state = "  failing: " + ", ".join(failing)
        lines.append(f"{r.question:<{width}}  {fmt_points(r.earned):>5} / {fmt_points(r.points):<5}{state}".rstrip())
    earned, points = sum(r.earned for r in results), sum(r.points for r in results)
    lines.append(f"{'Total':<{width}}  {fmt_points(earned):>5} / {fmt_points(points)}")
    return "\n".join(lines)
