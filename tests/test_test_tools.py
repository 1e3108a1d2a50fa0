"""The harness of `make test` itself: its reports stay readable and its summary always prints."""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools import execute_notebooks, portability, reports, run_tests  # noqa: E402

# What a failing kernel's traceback looks like when the execute stage stores it: ANSI colours, and
# here also a NUL byte and a lone surrogate, all three of which XML 1.0 cannot carry.
COLOURED = ("\x1b[0;31m---------------------------------------------------------------------------\x1b[0m\n"
            "\x1b[0;31mAssertionError\x1b[0m: renorm 0.656 \x00 \ud800 batch 0.608\n")


def test_junit_report_of_a_coloured_traceback_parses_and_counts(tmp_path, monkeypatch):
    """A coloured traceback no longer makes execute.xml unparseable (it crashed run_tests.py's summary)."""
    xml = tmp_path / "execute.xml"
    reports.write_junit(xml, "execute", [("a.ipynb", 1.0, COLOURED), ("b.ipynb", 2.0, None)])
    case = ET.parse(xml).getroot().find(".//failure")
    assert "\x1b" not in case.text and "AssertionError: renorm 0.656 ? ? batch 0.608" in case.text
    monkeypatch.setattr(run_tests, "REPORTS", tmp_path)
    assert run_tests.counts("execute") == (1, 1, 0)


def test_an_unreadable_report_counts_as_a_failure_not_a_crash(tmp_path, monkeypatch):
    (tmp_path / "execute.xml").write_text("<testsuites><testsuite tests='1'>\x1b[31m")
    monkeypatch.setattr(run_tests, "REPORTS", tmp_path)
    monkeypatch.setattr(run_tests, "ROOT", tmp_path)
    assert run_tests.counts("execute") == (0, 1, 0)


@pytest.mark.parametrize("wall, cpu, over", [(50, 40, False), (121, 40, True), (90, 61, True), (119, None, False)])
def test_a_notebook_is_over_budget_on_wall_or_on_cpu_time(wall, cpu, over):
    assert (reports.over_budget(wall, cpu) is not None) is over


def test_the_colab_stage_runs_another_kernel_path_than_the_native_one(monkeypatch):
    monkeypatch.delenv("DLBOOK_SECOND_KERNEL_PATH", raising=False)
    assert portability.second_path("AVX512") == "avx2"
    assert portability.second_path("AVX2") == "default"
    assert portability.second_path("DEFAULT") == "avx2"
    monkeypatch.setenv("DLBOOK_SECOND_KERNEL_PATH", "default")
    assert portability.second_path("AVX512") == "default"
    with pytest.raises(ValueError, match="unknown kernel path"):
        portability.kernel_env("avx9000")


def test_portability_reports_the_first_line_that_differs_per_cell():
    runs = {"native": [["loss 0.5"], ["acc 0.656", "same"]], "avx2": [["loss 0.5"], ["acc 0.625", "same"]]}
    assert portability.differences(runs) == [(1, {"native": "acc 0.656", "avx2": "acc 0.625"})]


def test_a_kernel_that_never_started_is_retried(monkeypatch, tmp_path):
    """A kernel that dies before its first reply is restarted; the notebook then runs and passes."""
    import nbformat

    nb_path = tmp_path / "x.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), nb_path)
    calls = []

    class Result:
        def __init__(self, nb, err):
            self.nb, self.err, self.exc_string = nb, err, (str(err) if err else None)

    def fake_execution(nb, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the first kernel dies at start-up: no cell ran
            return Result(nb, RuntimeError("Kernel died before replying to kernel_info"))
        nb.cells[0].execution_count = 1
        return Result(nb, None)

    import jupyter_cache.executors.utils as utils
    monkeypatch.setattr(utils, "single_nb_execution", fake_execution)
    r = execute_notebooks._execute(str(nb_path))
    assert r["error"] is None and len(calls) == 2 and len(r["retries"]) == 1


def test_a_notebook_that_ran_and_failed_is_not_retried(monkeypatch, tmp_path):
    import nbformat

    nb_path = tmp_path / "x.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("assert False")]), nb_path)
    calls = []

    class Result:
        def __init__(self, nb):
            nb.cells[0].execution_count = 1
            self.nb, self.err, self.exc_string = nb, AssertionError(), "AssertionError"

    def fake_execution(nb, **kwargs):
        calls.append(1)
        return Result(nb)

    import jupyter_cache.executors.utils as utils
    monkeypatch.setattr(utils, "single_nb_execution", fake_execution)
    r = execute_notebooks._execute(str(nb_path))
    assert r["error"] == "AssertionError" and len(calls) == 1 and r["retries"] == []


# ---------------------------------------------------------------- prose numbers against outputs
from tools import check_prose_numbers as prose  # noqa: E402


def _nb(markdown: str, output: str, code: str = "x = 1") -> dict:
    return {"cells": [{"cell_type": "markdown", "source": markdown},
                      {"cell_type": "code", "source": code,
                       "outputs": [{"output_type": "stream", "name": "stdout", "text": output}]}]}


@pytest.mark.parametrize("written, printed, ok", [
    ("accuracy 0.45", "0.4499", True), ("accuracy 0.45", "0.456", False), ("gain 1.55x", "1.548", True),
    ("gain 1.5x", "1.55", True), ("reached 45%", "0.452", True), ("reached 45%", "0.47", False),
    ("reached 4.5%", "0.0449", True), ("loss 1.728", "1.7284", True), ("loss 1.728", "1.73", False),
    ("1,337 s and 22.3 min", "22.31", True), ("ratio 0.02", "std=2e-2", True)])
def test_a_prose_number_must_be_printed_at_its_stated_precision(written, printed, ok):
    assert (prose.check(_nb(f"We measured {written} here.", printed)) == []) is ok


def test_math_code_citations_bounds_and_marked_numbers_are_not_checked():
    markdown = ("The scale is $0.125 = 1/8$ and `lr=0.7`. Their error is 10.6 points lower {cite}`wu2018group`. "
                "Accuracy stays above 0.9 and below 1.5x. Versions: torch 2.13.0.\n"
                "The other paths gave 0.61. <!-- prose-numbers: 0.61 is the avx2 path's value -->")
    assert prose.check(_nb(markdown, "nothing")) == []


def test_a_drifted_number_is_reported_with_its_sentence():
    problems = prose.check(_nb("Training. Every clipped seed ends at about 0.45 on average.", "0.544 0.456 0.458"))
    assert [(n, s[:20]) for _, n, s in problems] == [("0.45", "Every clipped seed e")]
