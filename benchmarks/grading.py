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

Before and after: with ``--baseline REF`` (default ``b8f05e9``, the grader before issue 25's hardening: no
control groups, seccomp filter or keyring) the same runs are repeated, interleaved with this checkout's, by the
grading code of commit REF (its ``src/``, from ``git archive``), and a last table gives after / before per
submission. ``--baseline none`` skips it; so does ``--quick`` unless a baseline is named.

    python benchmarks/grading.py [--copies 4] [--sets 00_preliminaries ...] [--jobs 1 2] [--baseline REF]
    python benchmarks/grading.py --quick        # one set, 1 copy each, jobs 1: a few seconds (CI smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# --src DIR (used for the baseline): grade with the dlbook package in DIR instead of this checkout's
SRC = Path(sys.argv[sys.argv.index("--src") + 1]) if "--src" in sys.argv else ROOT / "src"
sys.path.insert(0, str(SRC))

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


def measure(sets: list[str], copies: int, jobs_list: list[int]) -> dict:
    """{"set jobs": [wall s, cpu s, submissions, grades summary]} for each set and jobs."""
    rows = {}
    for set_id in sets:
        tests, hidden = load_tests(set_id)
        for jobs in jobs_list:
            with tempfile.TemporaryDirectory(prefix="dlbook-bench-") as tmp:
                wall, cpu, grades = grade_once(set_id, Path(tmp), copies, jobs, tests, hidden)
            scores = sorted({f"{g.total:g}/{g.max_total:g} {g.status}" for g in grades})
            rows[f"{set_id} {jobs}"] = [wall, cpu, len(grades), "; ".join(scores)]
    return rows


def print_table(title: str, rows: dict) -> None:
    print(title)
    print(f"{'set':<20} {'jobs':>4} {'subs':>5} {'wall s':>8} {'subs/min':>9} {'cpu s/sub':>10}  grades")
    totals: dict[str, list[float]] = {}
    for key, (wall, cpu, n, scores) in rows.items():
        set_id, jobs = key.split()
        print(f"{set_id:<20} {jobs:>4} {n:>5} {wall:>8.2f} {60 * n / wall:>9.1f} {cpu / n:>10.2f}  {scores}")
        total = totals.setdefault(jobs, [0.0, 0.0, 0])
        total[0], total[1], total[2] = total[0] + wall, total[1] + cpu, total[2] + n
    for jobs, (wall, cpu, n) in sorted(totals.items()):
        print(f"{'all sets':<20} {jobs:>4} {n:>5} {wall:>8.2f} {60 * n / wall:>9.1f} {cpu / n:>10.2f}")


def baseline_rows(ref: str, sets: list[str], copies: int, jobs_list: list[int]) -> dict | None:
    """The same measurement by the grading code of commit ``ref`` (None, said on stdout, where git cannot give it)."""
    with tempfile.TemporaryDirectory(prefix="dlbook-bench-base-") as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True)
        if archive.returncode != 0:
            print(f"baseline {ref}: not available ({archive.stderr.decode(errors='replace').strip()[:200]})")
            return None
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        out = Path(tmp) / "rows.json"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(tmp) / "src"),
                                                           *filter(None, [os.environ.get("PYTHONPATH")])]))
        cmd = [sys.executable, __file__, "--src", str(Path(tmp) / "src"), "--rows-to", str(out), "--baseline", "none",
               "--copies", str(copies), "--sets", *sets, "--jobs", *map(str, jobs_list)]
        subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="copies of each of the two submissions per set")
    parser.add_argument("--sets", nargs="*", default=None, help="set ids (default: every set)")
    parser.add_argument("--jobs", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="one set, one copy each, --jobs 1 (a smoke run)")
    parser.add_argument("--baseline", default=None,
                        help="a commit whose grader to compare with (default b8f05e9; 'none' for no comparison)")
    parser.add_argument("--src", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rows-to", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sets = args.sets or sorted(p.stem for p in (ROOT / "exercises" / "_source").glob("*.ipynb"))
    copies, jobs_list = args.copies, args.jobs
    if args.quick:
        sets, copies, jobs_list = sets[:1], 1, [1]
    baseline = args.baseline or ("none" if args.quick else "b8f05e9")
    if args.rows_to:  # the baseline's half of a comparison
        Path(args.rows_to).write_text(json.dumps(measure(sets, copies, jobs_list)))
        return 0
    before = None
    if baseline != "none":  # interleaved: the baseline set by set, then this checkout, so load drifts hit both
        before, after = {}, {}
        for set_id in sets:
            rows = baseline_rows(baseline, [set_id], copies, jobs_list)
            if rows is None:
                before = None
                break
            before.update(rows)
            after.update(measure([set_id], copies, jobs_list))
        if before is None:
            after = measure(sets, copies, jobs_list)
    else:
        after = measure(sets, copies, jobs_list)
    print_table("this checkout", after)
    if before:
        print()
        print_table(f"baseline {baseline}", before)
        print()
        print(f"{'set':<20} {'jobs':>4} {'wall/sub after/before':>22} {'cpu/sub after/before':>21}")
        for key in after:
            set_id, jobs = key.split()
            (wa, ca, na, _), (wb, cb, nb, _) = after[key], before[key]
            print(f"{set_id:<20} {jobs:>4} {(wa / na) / (wb / nb):>22.2f} {(ca / na) / (cb / nb):>21.2f}")
        total = [sum(r[i] for r in after.values()) / sum(r[i] for r in before.values()) for i in (0, 1)]
        print(f"{'all sets':<20} {'':>4} {total[0]:>22.2f} {total[1]:>21.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
