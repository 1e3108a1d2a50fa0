"""The exceptions of a graded test run, shared by :mod:`dlbook.grading.core` and :mod:`dlbook.grading.proxy`."""

from __future__ import annotations

__all__ = ["NotAttempted", "SubmissionGone", "TestTimeout"]


class NotAttempted(Exception):
    """The learner has not written this part yet (a name is missing, ``...`` or raises NotImplementedError)."""


class SubmissionGone(BaseException):
    """The submission's process stopped or broke the protocol mid-test: the grader stops grading it."""


class TestTimeout(BaseException):
    """Raised inside a test that ran past its timeout (a BaseException, so ``except Exception`` cannot swallow it)."""
