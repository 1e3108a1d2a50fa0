"""Tests of dlbook.grading: the learner's check(), the student-version generator and the grade command.

On every run they prove that (a) every source notebook earns full points, (b) every
shipped student notebook earns 0 with "not attempted" everywhere and is what its
source generates, (c) the fixture class in tests/fixtures/grading gets exactly the
expected grades, and (d) grading twice is byte-identical. The grading runs are
module-scoped fixtures, so each class is graded once per run (twice for (d)).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dlbook.grading import assert_close, checker, question
from dlbook.grading import _references
from dlbook.grading.__main__ import main as cli_main
from dlbook.grading.batch import grade_class, grade_submissions, load_extra_tests, load_tests, validate_notebook
from dlbook.grading.core import TestSpec, collect_tests, run_test
from dlbook.grading.sets import load_set, set_module_name
from dlbook.grading.student import dumps_notebook, generate_all, read_notebook, student_notebook, student_source
from dlbook.grading.worker import check_calls

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "grading"
SETS = sorted(p.stem for p in (ROOT / "exercises" / "_source").glob("*.ipynb"))
HANG_TIMEOUT = 8  # seconds: the infinite_loop fixture is stopped after this

EXPECTED_CSV = """\
student,q1,q2,q3,q4,q5,total,status
(maximum),3,5,4,3,4,19,
blank,0,0,0,0,0,0,ok
correct,3,5,4,3,0,15,ok
corrupt,0,0,0,0,0,0,unreadable notebook
infinite_loop,3,0,0,0,0,3,timeout after 8 s
monkeypatch,0,0,0,0,0,0,ok
os_exit,3,5,0,0,0,8,crashed (exit 3)
partly_wrong,1,2,1,0,0,4,ok
"""


# ---------------------------------------------------------------------------------------------- generator


def test_solution_block_becomes_an_indented_stub():
    source = "def f(x):\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n    ### END SOLUTION\n"
    assert student_source(source) == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError\n"


def test_solution_line_keeps_its_left_hand_side():
    assert student_source("steps = 100 // 32  # SOLUTION") == "steps = ..."
    assert student_source("    model.lr = 0.1 # SOLUTION\nprint(1)") == "    model.lr = ...\nprint(1)"


@pytest.mark.parametrize("bad, why", [
    ("### BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("x = 1\n### END SOLUTION\n", "without a"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "inside another"),
    ("print(1)  # SOLUTION", "must be an assignment"),
])
def test_malformed_markers_raise_a_value_error_naming_the_problem(bad, why):
    with pytest.raises(ValueError, match=why):
        student_source(bad)


def test_student_notebook_drops_solution_only_cells_and_outputs():
    nb = {"cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Title"]},
        {"cell_type": "code", "metadata": {"tags": ["solution-only"]}, "outputs": [], "execution_count": None,
         "source": ["assert True"]},
        {"cell_type": "code", "metadata": {}, "execution_count": 3, "source": ["n = 3  # SOLUTION\n", "n"],
         "outputs": [{"output_type": "execute_result", "data": {"text/plain": ["3"]}, "metadata": {},
                      "execution_count": 3}]},
    ], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    out = student_notebook(nb)
    assert [c["cell_type"] for c in out["cells"]] == ["markdown", "code"]
    assert out["cells"][1] == {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                               "source": ["n = ...\n", "n"]}
    assert nb["cells"][2]["outputs"], "the source notebook must not be modified"


@pytest.mark.parametrize("set_id", SETS)
def test_committed_student_notebook_is_what_its_source_generates(set_id):
    """Regeneration check: `python -m dlbook.grading generate` would change nothing."""
    source = read_notebook(ROOT / "exercises" / "_source" / f"{set_id}.ipynb")
    expected = dumps_notebook(student_notebook(source))
    committed = (ROOT / "exercises" / f"{set_id}.ipynb").read_text(encoding="utf-8")
    assert committed == expected, f"run `python -m dlbook.grading generate` and commit exercises/{set_id}.ipynb"


def test_generate_check_reports_nothing_out_of_date(capsys):
    assert generate_all(ROOT, check=True) == []
    assert cli_main(["generate", "--check", "--root", str(ROOT)]) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize("set_id", SETS)
def test_every_set_has_a_test_module_with_at_least_three_questions(set_id):
    tests = collect_tests(load_set(set_id))
    assert len({spec.question for spec, _ in tests}) >= 3
    nb = read_notebook(ROOT / "exercises" / "_source" / f"{set_id}.ipynb")
    calls = [q for c in nb["cells"] if c["cell_type"] == "code" for q in check_calls("".join(c["source"]))]
    assert sorted(set(calls)) == sorted({spec.question for spec, _ in tests}), "one check cell per question"


# ---------------------------------------------------------------------------------------------- declaring tests


@pytest.mark.parametrize("kwargs, match", [
    (dict(qid="", points=1), "question id"),
    (dict(qid="q1", points=0), "points"),
    (dict(qid="q1", points=True), "points"),
    (dict(qid="q1", points=1, timeout=-1), "timeout"),
])
def test_question_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        question(**kwargs)


def test_set_ids_are_validated():
    assert set_module_name("00_preliminaries") == "dlbook.exercises.ex00_preliminaries"
    with pytest.raises(ValueError, match="two digits"):
        set_module_name("preliminaries")
    with pytest.raises(ValueError, match="no tests for exercise set"):
        load_set("99_nothing")


# ---------------------------------------------------------------------------------------------- assert_close


def test_assert_close_passes_within_tolerance_and_reports_max_error_and_hint():
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert_close(x + 1e-9, x, atol=1e-8)
    with pytest.raises(AssertionError, match=r"max abs error 0\.5 at index \(1,\).*unbiased variance"):
        assert_close(x + torch.tensor([0.0, 0.5, 0.1]), x, atol=1e-3, hint="did you use the unbiased variance?")


@pytest.mark.parametrize("actual, match", [
    (None, "forget to `return`"),
    (torch.ones(2), r"shape \(2,\), expected \(3,\)"),
    (torch.tensor([1.0, float("inf"), 1.0]), "inf or nan"),
    ("text", "tensor or a number"),
])
def test_assert_close_explains_what_is_wrong(actual, match):
    with pytest.raises(AssertionError, match=match):
        assert_close(actual, torch.ones(3))


def test_assert_close_says_when_the_result_lost_precision():
    x = torch.full((3,), 1 / 3, dtype=torch.float64)
    with pytest.raises(AssertionError, match="your result is float32, the expected one float64"):
        assert_close(x.float(), x, atol=1e-12)


def test_assert_close_ignores_a_monkeypatched_torch_allclose(monkeypatch):
    monkeypatch.setattr(torch, "allclose", lambda *a, **k: True)
    monkeypatch.setattr(torch.testing, "assert_close", lambda *a, **k: None)
    with pytest.raises(AssertionError, match="max abs error 1"):
        assert_close(torch.zeros(3), torch.ones(3))


def test_clean_references_restores_torch_and_numpy_during_a_test_and_the_learners_versions_after(monkeypatch):
    fake = lambda *a, **k: True  # noqa: E731
    monkeypatch.setattr(torch, "allclose", fake)
    monkeypatch.setattr(np, "allclose", fake)
    monkeypatch.setattr(torch.Tensor, "allclose", fake, raising=False)
    with _references.clean_references() as restored:
        assert not torch.allclose(torch.zeros(1), torch.ones(1))
        assert not np.allclose(0.0, 1.0)
        assert not torch.zeros(1).allclose(torch.ones(1))
        assert {"torch.allclose", "numpy.allclose", "Tensor.allclose"} <= set(restored)
    assert torch.allclose is fake and np.allclose is fake


# ---------------------------------------------------------------------------------------------- check()


def _ns_solved():
    """A learner's namespace that solves every question of 00_preliminaries."""
    def mlp_forward(x, weights, biases):
        for i, (w, b) in enumerate(zip(weights, biases)):
            x = x @ w.T + b
            x = torch.relu(x) if i < len(weights) - 1 else x
        return x
    return {"sigmoid": torch.sigmoid, "sigmoid_grad": lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x)),
            "bce_with_logits": torch.nn.functional.binary_cross_entropy_with_logits,
            "log_softmax": lambda z: torch.log_softmax(z, dim=-1), "cross_entropy": torch.nn.functional.cross_entropy,
            "mlp_forward": mlp_forward, "n_params": 64 * 32 + 32 + 32 * 10 + 10}


def test_check_prints_pass_rows_points_and_the_score(capsys):
    check, _ = checker("00_preliminaries", namespace=_ns_solved())
    check("q1")
    out = capsys.readouterr().out
    assert "PASS  1/1  sigmoid_matches_torch" in out and "PASS  2/2  sigmoid_grad_matches_autograd" in out
    assert out.rstrip().endswith("q1: 3/3 points")


def test_check_names_the_likely_mistake_when_a_test_fails(capsys):
    ns = dict(_ns_solved(), sigmoid_grad=lambda x: 1 - torch.sigmoid(x) ** 2)
    check, _ = checker("00_preliminaries", namespace=ns)
    check("q1")
    out = capsys.readouterr().out
    assert "FAIL  0/2  sigmoid_grad_matches_autograd: max abs error" in out and "tanh's derivative" in out
    assert out.rstrip().endswith("q1: 1/3 points")


def test_check_shows_not_attempted_for_stubs_and_dots(capsys):
    def stub(*args):
        raise NotImplementedError

    check, _ = checker("00_preliminaries", namespace={"mlp_forward": stub, "n_params": ...})
    check("q4")
    out = capsys.readouterr().out
    assert "not attempted: still raises NotImplementedError" in out and "`n_params` is still `...`" in out
    assert out.rstrip().endswith("q4: 0/3 points (not attempted)")


def test_check_reports_an_exception_in_the_learners_code_without_raising(capsys):
    def broken(logits, targets):
        raise ValueError("shapes do not match")

    check, _ = checker("00_preliminaries", namespace={"bce_with_logits": broken})
    check("q2")
    out = capsys.readouterr().out
    assert "FAIL  0/2  bce_matches_torch: error: raised ValueError: shapes do not match" in out
    check("q9")
    assert "no question 'q9'" in capsys.readouterr().out


def test_check_all_prints_every_question_and_the_total(capsys):
    _, check_all = checker("00_preliminaries", namespace=dict(_ns_solved(), n_params=2368))
    check_all()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "Exercise set 00_preliminaries"
    assert [line.split()[0] for line in lines[1:]] == ["q1", "q2", "q3", "q4", "q5", "Total"]
    assert "failing: n_params_counts_weights_and_biases" in lines[4]
    assert "not attempted" in lines[5]                     # q5 (backprop by hand) is not in _ns_solved
    assert lines[-1].split() == ["Total", "13", "/", "18"]


def test_check_reads_the_callers_globals_live(capsys):
    namespace = {}
    exec("from dlbook.grading import checker\ncheck, check_all = checker('00_preliminaries')", namespace)
    namespace["sigmoid"] = torch.sigmoid
    namespace["check"]("q1")
    assert "PASS  1/1  sigmoid_matches_torch" in capsys.readouterr().out


def test_a_test_that_runs_past_its_timeout_fails_with_timeout():
    def endless(ns):
        while True:
            pass

    row = run_test(TestSpec("q1", 1, 0.2, "endless", ""), endless, {})
    assert (row.status, row.earned) == ("timeout", 0.0) and "0.2 s" in row.message


# ---------------------------------------------------------------------------------------------- grade: inputs


def test_validate_notebook_names_what_is_wrong(tmp_path):
    cases = {"ok.ipynb": '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}',
             "json.ipynb": '{"cells": "nope", "nbformat": 4}', "broken.ipynb": '{"cells": [',
             "v3.ipynb": '{"cells": [], "nbformat": 3}'}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    assert validate_notebook(tmp_path / "ok.ipynb") is None
    assert "no list of cells" in validate_notebook(tmp_path / "json.ipynb")
    assert "not JSON" in validate_notebook(tmp_path / "broken.ipynb")
    assert "nbformat 3" in validate_notebook(tmp_path / "v3.ipynb")
    assert validate_notebook(FIXTURES / "corrupt.ipynb") == "not a text file"


def test_extra_tests_load_from_a_file_a_folder_or_a_module_and_must_define_tests(tmp_path):
    tests, hidden = load_tests("00_preliminaries", [str(FIXTURES / "hidden_tests.py")])
    assert hidden == {"bce_is_stable_in_float32"} and tests[-1][0].question == "q2"
    folder = tmp_path / "hidden"
    folder.mkdir()
    (folder / "more.py").write_text((FIXTURES / "hidden_tests.py").read_text())
    assert len(load_extra_tests([str(folder)])) == 1
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no @question tests"):
        load_extra_tests([str(tmp_path / "empty.py")])
    with pytest.raises(ValueError, match="neither a .py file"):
        load_extra_tests(["no_such_module_anywhere"])
    (tmp_path / "clash.py").write_text("from dlbook.grading import question\n"
                                       "@question('q1')\ndef sigmoid_matches_torch(ns):\n    pass\n")
    with pytest.raises(ValueError, match="unique"):
        load_tests("00_preliminaries", [str(tmp_path / "clash.py")])


def test_grade_rejects_duplicate_students_and_a_wrong_first_argument(tmp_path):
    with pytest.raises(ValueError, match="share a name"):
        grade_class(ROOT / "exercises" / "00_preliminaries.ipynb", [FIXTURES / "blank.ipynb", tmp_path / "blank.ipynb"],
                    tmp_path / "out")
    with pytest.raises(ValueError, match="names the set by its notebook"):
        grade_class(ROOT / "exercises", [FIXTURES / "blank.ipynb"], tmp_path / "out")


# ---------------------------------------------------------------------------------------------- (a) and (b)


def _once(tmp_path_factory, name: str, produce) -> Path:
    """Run ``produce(folder)`` once per test run, even when pytest-xdist spreads this file over workers.

    The grading runs are the slow part of this file; the workers share one result through a folder next
    to their base temp folders, guarded by a file lock.
    """
    import fcntl

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if base.name.startswith("popen-gw") else base
    folder = shared / f"dlbook-grading-{name}"
    with open(shared / f"dlbook-grading-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".complete").exists():
            folder.mkdir(exist_ok=True)
            produce(folder)
            (folder / ".complete").write_text("")
    return folder



def _produce_set_grades(folder: Path) -> None:
    for set_id in SETS:
        tests, hidden = load_tests(set_id)
        paths = [ROOT / "exercises" / "_source" / f"{set_id}.ipynb", ROOT / "exercises" / f"{set_id}.ipynb"]
        source, student = grade_submissions(set_id, paths, tests, hidden, timeout=120, jobs=2)
        (folder / f"{set_id}.source.json").write_text(source.to_json())
        (folder / f"{set_id}.student.json").write_text(student.to_json())


@pytest.fixture(scope="session")
def set_grades(tmp_path_factory):
    """Every set's source and student notebook, graded once per run: {set_id: (source, student)} as dicts."""
    folder = _once(tmp_path_factory, "set-grades", _produce_set_grades)
    return {s: (_student(folder, f"{s}.source"), _student(folder, f"{s}.student")) for s in SETS}


@pytest.mark.parametrize("set_id", SETS)
def test_a_every_source_notebook_earns_full_points_on_every_question(set_grades, set_id):
    source, _ = set_grades[set_id]
    assert source["status"] == "ok", source["cell_errors"]
    for q in source["questions"]:
        failing = [(t["name"], t["message"]) for t in q["tests"] if t["status"] != "pass"]
        assert q["earned"] == q["points"] > 0, f"{set_id} {q['question']}: {failing}"
    assert source["cell_errors"] == []


@pytest.mark.parametrize("set_id", SETS)
def test_b_every_student_notebook_earns_zero_with_not_attempted_everywhere(set_grades, set_id):
    _, student = set_grades[set_id]
    assert student["status"] == "ok" and student["cell_errors"] == [], "the student version must run top to bottom"
    for q in student["questions"]:
        assert q["earned"] == 0 and not q["attempted"]
        assert {t["status"] for t in q["tests"]} == {"not attempted"}, q


# ---------------------------------------------------------------------------------------------- questions of issue 19
# Every question's right answers and usual mistakes are in tests/test_grading_mutants.py; here, that the formula
# set 02's q5 builds its mistakes from is the library's layer.


def test_02_q5_the_formula_written_in_the_test_is_batchrenorm1d():
    """The mistakes are variations of _renorm_by_formula, so that formula must be the library's layer."""
    from dlbook.exercises import ex02_normalization as ex02

    x, gamma, beta, rm, rv = ex02._renorm_inputs(0, (5, 3, 4), [0.2, -2.0, 1.0], [3.0, 0.4, 1.0])
    expected, _ = ex02._ref_renorm(x, gamma, beta, rm, rv, 2.0, 0.5)
    assert torch.allclose(ex02._renorm_by_formula(x, gamma, beta, rm, rv, 2.0, 0.5), expected, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------- (c) and (d)


def _grade_args(out: Path) -> list[str]:
    return ["grade", str(ROOT / "exercises" / "00_preliminaries.ipynb"),
            *(str(p) for p in sorted(FIXTURES.glob("*.ipynb"))), "--out", str(out),
            "--extra-tests", str(FIXTURES / "hidden_tests.py"), "--timeout", str(HANG_TIMEOUT), "--jobs", "2"]


def _produce_fixture_class(folder: Path) -> None:
    """Grade the class twice at the same time: with the command line, and through main() in this process."""
    proc = subprocess.Popen([sys.executable, "-m", "dlbook.grading", *_grade_args(folder / "first")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert cli_main(_grade_args(folder / "second")) == 0
    finally:
        stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert stdout.strip() == EXPECTED_CSV.strip()


@pytest.fixture(scope="session")
def fixture_class(tmp_path_factory):
    """The fixture class graded twice (see _produce_fixture_class): the two output folders."""
    folder = _once(tmp_path_factory, "fixture-class", _produce_fixture_class)
    return folder / "first", folder / "second"


def _student(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def test_c_the_fixture_class_gets_exactly_the_expected_grades(fixture_class):
    out, _ = fixture_class
    assert (out / "grades.csv").read_text() == EXPECTED_CSV
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["grades.csv", "summary.md"] + [f"{p.stem}.{ext}" for p in FIXTURES.glob("*.ipynb") for ext in ("json", "md")])


def test_f_the_class_summary_and_each_students_feedback_are_written(fixture_class):
    """summary.md: per question the mean, median, attempted and the most frequent failures with their hints
    (the hidden test's own message included: the summary is the instructor's); <student>.md: the rows the
    notebook's check() would print, the hidden test marked as such and without its message."""
    out, _ = fixture_class
    summary = (out / "summary.md").read_text()
    assert "| q1 | 3 | 1.43 | 1 | 5 |" in summary  # (3+0+0+3+0+3+1)/7: correct, infinite_loop, os_exit, partly_wrong
    assert "## q1: most frequent failures" in summary and "tanh's derivative" in summary
    feedback = (out / "partly_wrong.md").read_text()
    assert feedback.startswith("# 00\\_preliminaries: partly\\_wrong\n\n**Total: 4 / 19** (ok)")
    assert "`FAIL` 0/2 sigmoid\\_grad\\_matches\\_autograd: max abs error" in feedback
    assert "bce\\_is\\_stable\\_in\\_float32 (hidden test): failed" in feedback


def test_c_partial_results_survive_a_hang_and_a_crash(fixture_class):
    out, _ = fixture_class
    hang, crash = _student(out, "infinite_loop"), _student(out, "os_exit")
    assert [q["earned"] for q in hang["questions"]] == [3, 0, 0, 0, 0]
    assert hang["questions"][1]["tests"][0]["message"] == f"not graded: the submission stopped first " \
                                                          f"(timeout after {HANG_TIMEOUT} s)"
    assert [q["earned"] for q in crash["questions"]] == [3, 5, 0, 0, 0]


def test_c_monkeypatching_the_comparisons_gains_nothing(fixture_class):
    out, _ = fixture_class
    cheat = _student(out, "monkeypatch")
    assert cheat["status"] == "ok" and cheat["total"] == 0
    # q1-q4 fail; q5 (backprop by hand) came after this fixture was written and is not attempted
    assert {t["status"] for q in cheat["questions"] for t in q["tests"] if q["question"] != "q5"} == {"fail"}


def test_c_blank_is_not_attempted_and_corrupt_is_unreadable(fixture_class):
    out, _ = fixture_class
    blank, corrupt = _student(out, "blank"), _student(out, "corrupt")
    assert {t["status"] for q in blank["questions"] for t in q["tests"]} == {"not attempted"}
    assert (corrupt["status"], corrupt["detail"]) == ("unreadable notebook", "not a text file")


def test_c_wrong_answers_get_hints_and_hidden_tests_count(fixture_class):
    out, _ = fixture_class
    rows = {t["name"]: t for q in _student(out, "partly_wrong")["questions"] for t in q["tests"]}
    assert "tanh's derivative" in rows["sigmoid_grad_matches_autograd"]["message"]
    assert "rounds to exactly 0 or 1" in rows["bce_is_stable_for_large_logits"]["message"]
    assert "summed over the batch" in rows["cross_entropy_matches_torch"]["message"]
    assert "counted the weights" in rows["n_params_counts_weights_and_biases"]["message"]
    assert rows["bce_is_stable_in_float32"]["hidden"] and rows["bce_is_stable_in_float32"]["status"] == "fail"
    assert _student(out, "correct")["max_total"] == 19  # 18 public points + 1 hidden


def test_d_grading_twice_gives_byte_identical_files(fixture_class):
    first, second = fixture_class
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert str(ROOT) not in (first / "correct.json").read_text()


# ---------------------------------------------------------------------------------------------- limits


def test_cpu_and_memory_limits_apply_to_each_submission(tmp_path):
    """A CPU hog is killed by RLIMIT_CPU; an oversized allocation fails inside the submission (RLIMIT_AS)."""
    student = read_notebook(ROOT / "exercises" / "00_preliminaries.ipynb")

    def with_cell(code: str) -> dict:
        nb = json.loads(json.dumps(student))
        nb["cells"].insert(3, {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                               "source": [code]})
        return nb

    (tmp_path / "hog.ipynb").write_text(json.dumps(with_cell("while True:\n    pass\n")))
    (tmp_path / "greedy.ipynb").write_text(json.dumps(with_cell("import torch\nbig = torch.ones(2**31)\n")))
    tests, hidden = load_tests("00_preliminaries")
    hog, greedy = grade_submissions("00_preliminaries", [tmp_path / "hog.ipynb", tmp_path / "greedy.ipynb"], tests,
                                    hidden, timeout=60, cpu_seconds=2, memory_mb=2048, jobs=2)
    assert hog.status == "crashed (killed by SIGXCPU)"
    assert greedy.status == "ok" and greedy.total == 0
    assert len(greedy.cell_errors) == 1 and greedy.cell_errors[0].startswith("code cell 3: RuntimeError")


# ---------------------------------------------------------------------------------------------- the site's page


def colab_url(set_id: str) -> str:
    """The Colab link of a set, derived from the one repository URL in _config.yml."""
    import yaml

    sys.path.insert(0, str(ROOT))
    try:
        from tools.nbtools import repository_url
    finally:
        sys.path.remove(str(ROOT))
    branch = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"].get("branch", "main")
    repo = repository_url().removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/exercises/{set_id}.ipynb"


@pytest.mark.parametrize("set_id", SETS)
def test_exercises_page_has_a_section_with_the_colab_link_of_every_set(set_id):
    page = (ROOT / "exercises" / "index.md").read_text()
    number, slug = set_id.split("_", 1)
    assert f"\n### {number} · " in page, f"exercises/index.md needs a section '### {number} · Title' for {set_id}"
    assert f"({colab_url(set_id)})" in page


_COUNTS = {"Three": 3, "Four": 4, "Five": 5, "Six": 6, "Seven": 7}


@pytest.mark.parametrize("set_id", SETS)
def test_exercises_page_gives_each_sets_number_of_questions_and_points_as_its_tests_define_them(set_id):
    """The "N questions, M points" of each section are the set's own: a question or a point added to the tests
    and not to the page fails here."""
    import re

    page = (ROOT / "exercises" / "index.md").read_text()
    section = next(s for s in page.split("\n### ") if f"({colab_url(set_id)})" in s)
    said = re.search(r"\b(\w+) questions, (\d+(?:\.\d+)?) points", section)
    assert said, f"the section of {set_id} should say 'N questions, M points'"
    tests = collect_tests(load_set(set_id))
    questions = len(dict.fromkeys(spec.question for spec, _ in tests))
    points = sum(spec.points for spec, _ in tests)
    assert (_COUNTS.get(said[1]), float(said[2])) == (questions, points), (
        f"exercises/index.md says {said[0]!r} for {set_id}; its tests define {questions} questions, {points:g} points")


# ---------------------------------------------------------------------------------------------- the wire format


def _roundtrip(value):
    from dlbook.grading import wire

    blobs: list = []
    return wire.decode(wire.encode(value, blobs), blobs)


def test_wire_round_trips_data_exactly():
    """Tensors (any dtype, requires_grad, 0-d, empty), arrays, numbers, strings, ..., containers and
    generators come back equal, and as the plain types (never a subclass of the sender's)."""
    g = torch.Generator().manual_seed(3)
    value = {"x": torch.randn(3, 4, dtype=torch.float64), "b": torch.tensor([True, False]), "s": torch.tensor(2.5),
             "e": torch.empty(0, 3), "h": torch.ones(2, dtype=torch.bfloat16), (1, "k"): [1, 2.5, float("nan"), None],
             "a": np.arange(6).reshape(2, 3), "dots": ..., "big": 2**70, "t": (torch.float32, torch.device("cpu")),
             "g": g, "p": torch.nn.Parameter(torch.ones(2))}
    back = _roundtrip(value)
    for key in ("x", "b", "s", "e", "h"):
        assert type(back[key]) is torch.Tensor and torch.equal(back[key], value[key]), key
    assert back[(1, "k")][:2] == [1, 2.5] and math.isnan(back[(1, "k")][2]) and back[(1, "k")][3] is None
    assert np.array_equal(back["a"], value["a"]) and back["dots"] is Ellipsis and back["big"] == 2**70
    assert back["t"] == (torch.float32, torch.device("cpu"))
    assert torch.equal(back["g"].get_state(), g.get_state()) and type(back["p"]) is torch.Tensor


@pytest.mark.parametrize("header, match", [
    ('{"value": ' + "[" * 40 + "]" * 40 + "}", "deeper"),
    ('{"value": [' + ",".join(["1"] * 200_001) + "]}", "more than"),
    ('{"value": {"t": "pickle", "v": "..."}}', "unknown value tag"),
    ('{"value": {"t": "tensor", "dtype": "float64", "shape": [3], "blob": 0}}', "missing blob"),
    ('{"value": {"t": "tensor", "dtype": "object", "shape": [1], "blob": 0}}', "unknown dtype"),
    ('{"value": {"t": "function", "v": "os:system"}}', "unknown value tag"),
])
def test_wire_rejects_what_breaks_its_rules(header, match):
    """Deep nesting, too many values, unknown tags (pickle, functions sent to the grader) and broken tensors
    raise WireError, never anything else."""
    from dlbook.grading import wire

    obj = json.loads(header)
    with pytest.raises(wire.WireError, match=match):
        wire.decode(obj["value"], [])


def test_wire_drops_an_oversized_answer_and_stays_in_step():
    """An answer over the frame limit is read and thrown away (WireError); the next frame still reads."""
    import socket
    import threading

    from dlbook.grading import wire

    a, b = socket.socketpair()
    sender = threading.Thread(target=lambda: (wire.send_frame(a, {"n": 1}, [b"x" * 3_000_000]),
                                              wire.send_frame(a, {"n": 2})))
    sender.start()
    with pytest.raises(wire.WireError, match="over the limit"):
        wire.read_frame(b, limit=1_000_000)
    assert wire.read_frame(b)[0]["n"] == 2
    sender.join()
    a.sendall(b"NOPE" + b"\0" * 4)
    with pytest.raises(wire.WireError, match="magic"):
        wire.read_frame(b)


# ---------------------------------------------------------------------------------------------- the proxy


PROXY_NOTEBOOK = '''
import torch
from torch import nn

def cube(x):
    return x ** 3

def bump_in_place(t):
    t.add_(1)
    return None

def draw(n, generator):
    return torch.randperm(n, generator=generator)

def fails():
    raise KeyError("no such key")

class Scale(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.full((n,), 2.0, dtype=torch.float64))
    def forward(self, x):
        return x * self.weight
    def describe(self):
        return {"n": self.weight.numel(), "kind": "scale"}

stub = ...
'''

PROXY_TESTS = '''
import torch
from dlbook.grading import NotAttempted, assert_close, probes, question
from dlbook.grading.inputs import changed_inputs

@question("q1", points=1)
def proxy_calls_classes_methods_and_attributes(ns):
    """A learner's class is built, called, asked for a method's result and an attribute."""
    m = ns.Scale(3)
    x = torch.arange(3, dtype=torch.float64)
    assert_close(m(x), 2 * x)
    assert m.describe() == {"n": 3, "kind": "scale"}
    assert_close(m.weight, torch.full((3,), 2.0, dtype=torch.float64))
    assert "Scale" in ns and "nothing" not in ns

@question("q1", points=1)
def proxy_probes_run_autograd_and_training(ns):
    """probes.grad, module_grads, state_dict, load_state_dict and train return data computed on the other side."""
    x = torch.linspace(-1, 1, 5, dtype=torch.float64)
    out, (dx,) = probes.grad(ns.cube, x)
    assert_close(out, x ** 3) and assert_close(dx, 3 * x ** 2)
    m = ns.Scale(5)
    out, grads = probes.module_grads(m, x)
    assert_close(grads["weight"], x)
    probes.load_state_dict(m, {"weight": torch.ones(5, dtype=torch.float64)})
    assert_close(probes.state_dict(m)["weight"], torch.ones(5, dtype=torch.float64))
    losses, state = probes.train(m, x, torch.zeros(5, dtype=torch.float64), loss="mse", lr=0.1, steps=3)
    assert len(losses) == 3 and losses[0] > losses[-1] and state["weight"].shape == (5,)

@question("q1", points=1)
def proxy_reports_in_place_changes_and_mirrors_generator_draws(ns):
    """An argument changed in place stays intact in the test and is reported; a generator drawn from advances."""
    t = torch.zeros(3)
    ns.bump_in_place(t)
    assert torch.equal(t, torch.zeros(3)), t
    assert changed_inputs(ns) == ["`bump_in_place` changed its argument 1"], changed_inputs(ns)
    g, h = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    first, second = ns.draw(10, g), ns.draw(10, g)
    assert torch.equal(first, torch.randperm(10, generator=h)) and torch.equal(second, torch.randperm(10, generator=h))

@question("q1", points=1)
def proxy_reports_the_learners_exception_by_name(ns):
    """A learner's exception arrives with its class name and message."""
    try:
        ns.fails()
    except Exception as err:
        assert type(err).__name__ == "KeyError" and "no such key" in str(err)
    else:
        raise AssertionError("no exception")

@question("q2", points=1)
def proxy_stub_is_not_attempted(ns):
    """A name still bound to ... is not attempted."""
    raise AssertionError(f"stub should be ..., got {ns.stub!r}")
'''


def test_e_the_proxy_serves_calls_handles_probes_mutations_and_errors(adversarial_class):
    """A submission's functions, classes, objects and probes, graded through the proxy (the hidden tests in
    PROXY_TESTS, graded with the adversarial class to save a start-up)."""
    out, _ = adversarial_class
    grade = _student(out, "proxy_learner")
    rows = {t["name"]: t for q in grade["questions"] for t in q["tests"]}
    for name in ("proxy_calls_classes_methods_and_attributes", "proxy_probes_run_autograd_and_training",
                 "proxy_reports_in_place_changes_and_mirrors_generator_draws", "proxy_reports_the_learners_exception_by_name"):
        assert rows[name]["status"] == "pass", rows[name]
    assert rows["proxy_stub_is_not_attempted"]["status"] == "not attempted"
    assert grade["status"] == "ok" and grade["cell_errors"] == []


def test_probes_run_in_process_for_the_learners_check():
    """The same probes work on local objects (the learner's own check()), with the same results."""
    from dlbook.grading import probes

    x = torch.linspace(-1, 1, 5, dtype=torch.float64)
    out, (dx,) = probes.grad(lambda t: t ** 3, x)
    assert torch.allclose(dx, 3 * x ** 2)
    lin = torch.nn.Linear(5, 1, dtype=torch.float64)
    _, grads = probes.module_grads(lin, x[None])
    assert torch.allclose(grads["weight"], x[None]) and torch.allclose(grads["bias"], torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="loss must be one of"):
        probes.train(lin, x[None], torch.zeros(1, 1), loss="hinge")


# ---------------------------------------------------------------------------------------------- adversarial class

ADVERSARIAL = FIXTURES / "adversarial"
LISTEN_PORT = 47311  # adv_network connects here

EXPECTED_ADVERSARIAL_CSV = """\
student,q1,q2,q3,q4,q5,total,status
(maximum),7,6,4,3,4,24,
adv_escape_sandbox,0,0,0,0,0,0,ok
adv_forge_files,0,0,0,0,0,0,ok
adv_gc_inspect,0,0,0,0,0,0,ok
adv_huge_answer,0,0,0,3,0,3,ok
adv_kill_grader,0,0,0,0,0,0,ok
adv_leave_process,0,0,0,0,0,0,ok
adv_lying_answers,0,0,0,0,0,0,ok
adv_network,0,0,0,0,0,0,ok
adv_overwrite_others,0,0,0,0,0,0,ok
adv_print_results,0,0,0,0,0,0,ok
adv_read_hidden,0,0,0,0,0,0,ok
adv_replace_functions,0,0,0,0,0,0,ok
correct,3,5,4,3,0,15,ok
partly_wrong,1,2,1,0,0,4,ok
proxy_learner,4,0,0,0,0,4,ok
"""


def _leftover_sleeps() -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args[:1] == [b"sleep"] and args[1:2] in ([b"307.25"], [b"307.5"]):
            found.append(int(cmdline.parent.name))
    return found


def _produce_adversarial_class(folder: Path) -> None:
    """Grade copies of the adversarial fixtures with correct and partly_wrong, --jobs 2, sandbox required."""
    import hashlib
    import socket
    import threading

    subs = folder / "submissions"
    subs.mkdir()
    for path in [*ADVERSARIAL.glob("*.ipynb"), FIXTURES / "correct.ipynb", FIXTURES / "partly_wrong.ipynb"]:
        (subs / path.name).write_bytes(path.read_bytes())
    (folder / "hidden_tests.py").write_bytes((FIXTURES / "hidden_tests.py").read_bytes())
    (folder / "proxy_tests.py").write_text(PROXY_TESTS)
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                     "source": PROXY_NOTEBOOK}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (subs / "proxy_learner.ipynb").write_text(json.dumps(nb))
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in subs.iterdir()}
    accepted: list = []
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", LISTEN_PORT))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def listen():
        while not stop.is_set():
            try:
                accepted.append(listener.accept())
            except OSError:
                continue

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        args = ["grade", str(ROOT / "exercises" / "00_preliminaries.ipynb"), *map(str, sorted(subs.iterdir())),
                "--out", str(folder / "out"), "--extra-tests", str(folder / "hidden_tests.py"),
                "--extra-tests", str(folder / "proxy_tests.py"), "--timeout", "60",
                "--jobs", "2", "--isolation", "require"]
        proc = subprocess.run([sys.executable, "-m", "dlbook.grading", *args], capture_output=True, text=True,
                              timeout=600)
    finally:
        stop.set()
        thread.join()
        listener.close()
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in subs.iterdir()}
    leftovers = _leftover_sleeps()
    for pid in leftovers:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    (folder / "facts.json").write_text(json.dumps({
        "returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr[-3000:],
        "connections": len(accepted), "unchanged": before == after, "leftovers": leftovers}))


@pytest.fixture(scope="session")
def adversarial_class(tmp_path_factory):
    """The adversarial class graded once (see _produce_adversarial_class): (output folder, facts)."""
    from dlbook.grading.sandbox import namespaces_available

    if not namespaces_available():
        pytest.skip("no namespaces on this machine: the adversarial class runs only inside the sandbox "
                    "(without it, some of these attacks would work; book/instructors.md says which)")
    folder = _once(tmp_path_factory, "adversarial-class", _produce_adversarial_class)
    return folder / "out", json.loads((folder / "facts.json").read_text())


def test_e_adversarial_submissions_earn_nothing_they_did_not_answer(adversarial_class):
    """Each attack earns 0 (adv_huge_answer earns q4, which it answers correctly); correct and partly_wrong,
    graded in the same run with --jobs 2, keep exactly their grades (the proxy tests add rows they do not
    answer); every submission ran in the sandbox."""
    out, facts = adversarial_class
    assert facts["returncode"] == 0, facts["stderr"]
    assert facts["stdout"].strip() == EXPECTED_ADVERSARIAL_CSV.strip()
    assert (out / "grades.csv").read_text() == EXPECTED_ADVERSARIAL_CSV
    for path in out.glob("*.json"):
        assert _student(out, path.stem)["isolation"].startswith("namespaces"), path.stem


def test_e_no_attack_reached_outside_its_sandbox(adversarial_class):
    """No forged or damaged file (the submissions are byte-identical afterwards), no leaked hidden test, no escape
    from the sandbox, no connection to the listener on 127.0.0.1, no process left behind."""
    out, facts = adversarial_class
    assert facts["unchanged"] and facts["connections"] == 0 and facts["leftovers"] == []
    errors = [e for path in out.glob("adv_*.json") for e in _student(out, path.stem)["cell_errors"]]
    assert not [e for e in errors if any(word in e for word in ("LEAKED", "WROTE", "CONNECTED", "ESCAPED"))], errors
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["grades.csv", "summary.md"] + [f"{stem}.{ext}" for stem in [p.stem for p in ADVERSARIAL.glob("*.ipynb")]
                                        + ["correct", "partly_wrong", "proxy_learner"] for ext in ("json", "md")])


def test_e_lying_and_oversized_answers_fail_only_their_own_test(adversarial_class):
    """Lying objects never reach the grader as anything but data or an opaque handle; oversized and deeply
    nested answers fail their test with a WireError and the next test still runs."""
    out, _ = adversarial_class
    liar = {t["name"]: t for q in _student(out, "adv_lying_answers")["questions"] for t in q["tests"]
            if not t["name"].startswith("proxy_") and q["question"] != "q5"}  # q5 came after the fixture: not attempted
    assert {t["status"] for t in liar.values()} <= {"fail", "error"}
    huge = {t["name"]: t for q in _student(out, "adv_huge_answer")["questions"] for t in q["tests"]}
    assert "over the limit" in huge["sigmoid_matches_torch"]["message"]
    assert "nested deeper" in huge["sigmoid_grad_matches_autograd"]["message"]
    assert "not JSON" in huge["bce_matches_torch"]["message"]
    assert "more than" in huge["log_softmax_matches_torch"]["message"]
    assert huge["mlp_forward_matches_sequential"]["status"] == "pass"


def test_rlimits_only_grading_gives_the_same_grades_and_says_so(tmp_path, capfd):
    """Without a sandbox (--isolation rlimits, as on a machine without namespaces) the grades are the same,
    each JSON says so in `isolation`, and one line on stderr warns."""
    tests, hidden = load_tests("00_preliminaries")
    correct, blank = grade_submissions("00_preliminaries", [FIXTURES / "correct.ipynb", FIXTURES / "blank.ipynb"],
                                       tests, hidden, timeout=60, jobs=2, isolation="rlimits")
    assert (correct.total, blank.total, correct.status, blank.status) == (14, 0, "ok", "ok")  # q5 not in the fixture
    assert correct.isolation == blank.isolation and correct.isolation.startswith("rlimits only;")
    assert "seccomp filter" in correct.isolation  # the filter, keyring and control group hold without namespaces
    err = capfd.readouterr().err
    assert err.count("graded with resource limits alone") == 1
