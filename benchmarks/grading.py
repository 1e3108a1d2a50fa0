"""How many submissions per minute does ``dlbook-grade`` grade?

For every exercise set, the benchmark makes ``--copies`` copies of two submissions and grades them together
with :func:`dlbook.grading.batch.grade_submissions`, at ``--jobs 1`` and at ``--jobs 2``:

* the correct one: the set's source notebook (every answer right);
* a partly wrong one: the source notebook with its first solution cells replaced by the student version's stubs
  (for ``00_preliminaries``, the hand-written ``tests/fixtures/grading/partly_wrong.ipynb``).

Each grading run starts the grading process once (importing torch and the tests), so the figure includes that
start-up cost spread over the run's ``2 * copies`` submissions, as a real class would. Printed per set and
jobs: submissions per minute (wall clock) and CPU seconds per submission (user + sys of the grading
processes, from ``RUSAGE_CHILDREN``). Printed, not asserted: the machine is shared, so compare figures taken
in one sitting.

    python benchmarks/grading.py [--copies 4] [--sets 00_preliminaries ...] [--jobs 1 2]
    python benchmarks/grading.py --quick        # one set, 1 copy each, jobs 1: a few seconds (CI smoke run)
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from dlbook.grading.batch import grade_submissions, load_tests  # noqa: E402
from dlbook.grading.student import read_notebook, student_notebook  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "grading"


def partly_wrong(set_id: str) -> dict:
    """The source notebook with the first half of its solution cells replaced by the student's stubs."""
    if set_id == "00_preliminaries":
        return read_notebook(FIXTURES / "partly_wrong.ipynb")
    source = read_notebook(ROOT / "exercises" / "_source" / f"{set_id}.ipynb")
    student = student_notebook(source)
    solved = [i for i, cell in enumerate(source["cells"])
              if cell["cell_type"] == "code" and "### BEGIN SOLUTION" in "".join(cell["source"])]
    by_index = {i: cell for i, cell in enumerate(source["cells"])}
    stubbed = {i for i in solved[: max(1, len(solved) // 2)]}
    cells, k = [], 0
    for i, cell in by_index.items():
        if "solution-only" in cell.get("metadata", {}).get("tags", []):
            continue
        cells.append(student["cells"][k] if i in stubbed else cell)
        k += 1
    return dict(source, cells=cells)


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def grade_once(set_id: str, folder: Path, copies: int, jobs: int, tests, hidden) -> tuple[float, float, list]:
    paths = []
    wrong = partly_wrong(set_id)
    for k in range(copies):
        correct = folder / f"correct_{k}.ipynb"
        shutil.copy(ROOT / "exercises" / "_source" / f"{set_id}.ipynb", correct)
        other = folder / f"wrong_{k}.ipynb"
        other.write_text(json.dumps(wrong))
        paths += [correct, other]
    cpu0, t0 = cpu_of_children(), time.perf_counter()
    grades = grade_submissions(set_id, paths, tests, hidden, timeout=120, jobs=jobs)
    wall, cpu = time.perf_counter() - t0, cpu_of_children() - cpu0
    return wall, cpu, grades


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="copies of each of the two submissions per set")
    parser.add_argument("--sets", nargs="*", default=None, help="set ids (default: every set)")
    parser.add_argument("--jobs", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="one set, one copy each, --jobs 1 (a smoke run)")
    args = parser.parse_args(argv)
    sets = args.sets or sorted(p.stem for p in (ROOT / "exercises" / "_source").glob("*.ipynb"))
    copies, jobs_list = args.copies, args.jobs
    if args.quick:
        sets, copies, jobs_list = sets[:1], 1, [1]
    print(f"{'set':<20} {'jobs':>4} {'subs':>5} {'wall s':>8} {'subs/min':>9} {'cpu s/sub':>10}  grades")
    totals: dict[int, list[float]] = {}
    for set_id in sets:
        tests, hidden = load_tests(set_id)
        for jobs in jobs_list:
            with tempfile.TemporaryDirectory(prefix="dlbook-bench-") as tmp:
                wall, cpu, grades = grade_once(set_id, Path(tmp), copies, jobs, tests, hidden)
            n = len(grades)
            totals.setdefault(jobs, [0.0, 0.0, 0])
            totals[jobs][0] += wall
            totals[jobs][1] += cpu
            totals[jobs][2] += n
            scores = sorted({f"{g.total:g}/{g.max_total:g} {g.status}" for g in grades})
            print(f"{set_id:<20} {jobs:>4} {n:>5} {wall:>8.2f} {60 * n / wall:>9.1f} {cpu / n:>10.2f}  "
                  + "; ".join(scores))
    for jobs, (wall, cpu, n) in sorted(totals.items()):
        print(f"{'all sets':<20} {jobs:>4} {n:>5} {wall:>8.2f} {60 * n / wall:>9.1f} {cpu / n:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
