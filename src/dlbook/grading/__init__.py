"""Graded exercises: instant feedback for learners, batch grading for instructors.

In a notebook (locally or in Colab; nothing is downloaded)::

    from dlbook.grading import checker
    check, check_all = checker("00_preliminaries")
    check("q1")        # PASS/FAIL per test, points, a helpful message, the score
    check_all()        # every question and the total

For authors of an exercise set (tests in ``dlbook.exercises.exNN_slug``)::

    from dlbook.grading import question, assert_close

    @question("q1", points=2, timeout=10)
    def sigmoid_matches_torch(ns):
        \"\"\"sigmoid(x) equals torch.sigmoid.\"\"\"
        assert_close(ns.sigmoid(x), torch.sigmoid(x), atol=1e-9, hint="...")

For instructors (see book/instructors.md)::

    python -m dlbook.grading generate                     # every student version from its source
    python -m dlbook.grading grade exercises/00_preliminaries.ipynb submissions/*.ipynb --out grades/

Importing this package binds the reference functions of torch and numpy
(before any learner code runs), and imports nothing from Jupyter. Under the
instructor's grader the tests run in the grading process and ``ns`` is a proxy
to the submission's sandboxed process (dlbook.grading.proxy, .sandbox, .wire);
tests that need autograd through learner code use dlbook.grading.probes.
"""

from dlbook.grading import _references  # noqa: F401  (first: capture torch/numpy before anything else)
from dlbook.grading.core import NotAttempted, assert_close, question
from dlbook.grading.inputs import assert_inputs_unchanged
from dlbook.grading.sets import checker

__all__ = ["question", "assert_close", "assert_inputs_unchanged", "checker", "NotAttempted"]
