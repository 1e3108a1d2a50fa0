"""The exercise checks, tested by mutation: wrong answers never earn full points, right ones always do.

For every question of every set, ``tests/grading_mutants/sNN_slug.py`` holds the usual wrong answers (each must
lose points and get the hint written for it), right answers written differently from the reference (each must earn
every point, with no warning), and one input-rewriting cheat per set (it must earn what a stub earns: 0). The stub,
the constant and the no-op of every question are made from its names. Everything is graded in this process through
the same layer the notebook's ``check()`` uses; ``test_e_*`` in test_grading.py grade the same way through
``dlbook-grade``, and the last test here sends the cheat of one set through it too.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest

from dlbook.grading.core import collect_tests, run_question
from dlbook.grading.sets import load_set, question_ids
from grading_mutants import GENERIC, SETS, generic, module, namespace


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One BLAS thread: these tests run small tensors many times, and the unit stage runs two workers on 2 cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _grade(set_id: str, qid: str, ns: dict):
    """(earned, points, failing messages, warnings raised) of question ``qid`` on the namespace ``ns``."""
    # What is tested here is what each answer earns, not how fast a shared machine runs it: the tests' own time
    # limits (10 s) are raised, so that a busy machine cannot turn a right answer into a timeout.
    tests = [(dataclasses.replace(spec, timeout=300.0), fn) for spec, fn in collect_tests(load_set(set_id))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_question(qid, tests, ns)
    messages = " | ".join(f"{t.status}: {t.message}" for t in result.tests if t.status != "pass")
    return result.earned, result.points, messages, caught


def _cases(kind: str):
    for set_id in SETS:
        table = getattr(module(set_id), kind)
        for qid, variants in table.items():
            for label in variants:
                yield pytest.param(set_id, qid, label, id=f"{set_id}-{qid}-{label}")


@pytest.mark.parametrize("set_id", SETS)
def test_every_question_has_three_mutants_and_a_right_variant(set_id):
    """A question cannot land without its mutants: each has names, >= 1 right variant and >= 3 wrong answers (the
    generic stub, constant and no-op count; at least one mutant must be written for the question itself)."""
    data = module(set_id)
    ids = question_ids(collect_tests(load_set(set_id)))
    assert sorted(data.NAMES) == sorted(ids), f"grading_mutants/s{set_id}.py must list the names of {ids}"
    for qid in ids:
        assert len(data.RIGHT.get(qid, {})) >= 1, f"{set_id} {qid}: no right variant"
        assert len(data.WRONG.get(qid, {})) >= 1, f"{set_id} {qid}: no mutant written for this question"
        assert len(data.WRONG[qid]) + len(GENERIC) >= 3
    assert data.CHEAT.strip(), f"{set_id}: no input-rewriting cheat"


@pytest.mark.parametrize("set_id, qid, label", list(_cases("RIGHT")))
def test_a_right_answer_written_differently_earns_every_point_without_a_warning(set_id, qid, label):
    earned, points, messages, caught = _grade(set_id, qid, namespace(set_id, module(set_id).RIGHT[qid][label]))
    assert earned == points, messages
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("set_id, qid, label", list(_cases("WRONG")))
def test_a_usual_mistake_loses_points_and_gets_its_hint(set_id, qid, label):
    source, phrase, *absent = module(set_id).WRONG[qid][label]
    earned, points, messages, caught = _grade(set_id, qid, namespace(set_id, source))
    assert earned < points, f"{label} earned {earned}/{points}"
    assert phrase in messages, messages
    assert not any(words in messages for words in absent), messages  # feedback that would mislead
    assert [w for w in caught if "dlbook" in w.filename] == [], caught  # the mutant may warn; the grader never


@pytest.mark.parametrize("set_id", SETS)
@pytest.mark.parametrize("kind", sorted(GENERIC))
def test_a_stub_and_a_constant_earn_nothing_and_a_no_op_less_than_full(set_id, kind):
    for qid in module(set_id).NAMES:
        earned, points, messages, _ = _grade(set_id, qid, generic(set_id, qid, kind))
        # the no-op is right where the answer is the input itself (dropout in eval mode): it must only lose points
        assert earned < points if kind == "no-op" else earned == 0, f"{kind} earned {earned}/{points} on {qid}: " \
                                                                     f"{messages}"
        if kind == "stub":
            assert all(m.startswith("not attempted") for m in messages.split(" | ")), messages


@pytest.mark.parametrize("set_id", SETS)
def test_rewriting_the_tests_inputs_earns_what_a_stub_earns(set_id):
    ns = namespace(set_id, module(set_id).CHEAT)
    for qid in module(set_id).NAMES:
        earned, points, messages, _ = _grade(set_id, qid, ns)
        assert earned == 0, f"the input-rewriting cheat earned {earned}/{points} on {qid}: {messages}"


# ---------------------------------------------------------------------------------------------- through dlbook-grade
# The same answers as notebooks, graded by the instructor's grader (a sandboxed process per submission, the tests in
# the grader's own process): the sets whose tests the cheat fooled most before, and two found mistakes whose in-place
# change used to be copied back into the test.

_END_TO_END = {
    "00_preliminaries": {"cheat": None},
    "04_pretraining": {"cheat": None, "found": ("q1", "ids corrupted in place, labels from them", 2)},
    "07_interpretability": {"cheat": None, "found": ("q3", "occlude in place, used first", 0)},
}


def _notebook(path, set_id: str, source: str) -> None:
    from dlbook.grading.student import dumps_notebook
    from grading_mutants import _reference_cells

    setup = "from dlbook.grading import checker\n" + "import math\nimport torch\nimport torch.nn.functional as F\n" \
        "from torch import nn\n"
    cells = [setup, *_reference_cells(set_id), source]
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                     "source": text.splitlines(keepends=True)} for text in cells],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(dumps_notebook(nb), encoding="utf-8")


@pytest.fixture(scope="module")
def graded_end_to_end(tmp_path_factory):
    from dlbook.grading.batch import grade_submissions, load_tests

    folder = tmp_path_factory.mktemp("mutants-end-to-end")
    out = {}
    for set_id, cases in _END_TO_END.items():
        paths = []
        for name, case in cases.items():
            source = module(set_id).CHEAT if case is None else module(set_id).WRONG[case[0]][case[1]][0]
            paths.append(folder / f"{set_id}-{name}.ipynb")
            _notebook(paths[-1], set_id, source)
        tests, hidden = load_tests(set_id)
        for name, grade in zip(cases, grade_submissions(set_id, paths, tests, hidden, timeout=300, jobs=2)):
            out[set_id, name] = grade
    return out


@pytest.mark.parametrize("set_id, name", [(s, n) for s, cases in _END_TO_END.items() for n in cases])
def test_through_dlbook_grade_the_cheat_earns_nothing_and_a_found_mistake_what_it_earns_in_check(
        graded_end_to_end, set_id, name):
    grade = graded_end_to_end[set_id, name]
    assert grade.status == "ok" and grade.cell_errors == [], (grade.status, grade.cell_errors)
    case = _END_TO_END[set_id][name]
    for q in grade.questions:
        expected = case[2] if case is not None and q["question"] == case[0] else 0 if case is None else q["points"]
        assert q["earned"] == expected, q
        if case is not None and q["question"] == case[0]:
            phrase = module(set_id).WRONG[case[0]][case[1]][1]
            assert any(phrase in t["message"] for t in q["tests"]), q
