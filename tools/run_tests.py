"""Everything `make test` runs, in order, with the time of each stage.

1. unit: the tests of dlbook (pytest, tests/ without the browser check and the Colab probe);
2. execute: every notebook under chapters/ and exercises/ once, in this environment, two at a time
   (tools/execute_notebooks.py); the executed notebooks go into the site's jupyter-cache;
   then prose: every measured-looking number in the notebooks' Markdown must appear in their outputs
   (tools/check_prose_numbers.py, on the executed copies in _build/executed/);
3. site: the site build from that cache (warnings are errors; a notebook missing from the cache, because
   it failed in stage 2, is executed by the build and fails it again);
4. browser: the built site in Debian's Chromium driven by Playwright;
5. colab: every notebook again, under nbval, in the Colab-shaped venv, each installing dlbook through
   its own setup cell (tools/colab.py); then the probe proving that stage can fail (tests/colab);
6. benchmarks: every benchmarks/*.py with --quick (figures printed, never asserted).

So each notebook executes twice in all: once here (its outputs are the site's), once Colab-shaped.
All stages run even when one fails, so one run shows every problem. The run ends with each notebook's
time in both environments (wall and CPU seconds, slowest first), the guard that fails any notebook over
its budget (120 s wall, 60 s CPU), the stages, and one closing line ``total: N passed, N failed``.
The Colab-shaped stage runs under another CPU kernel path than the main one (``avx2`` on an AVX-512
machine, see tools/portability.py), so every hidden assert is checked on two kernel paths per run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.reports import BUDGET_S, CPU_BUDGET_S, over_budget, write_junit  # noqa: E402

BUILD = ROOT / "_build"
REPORTS = BUILD / "test-reports"
PY = sys.executable


def pytest(name: str, args: list[str]) -> list[str]:
    xml = REPORTS / f"{name}.xml"
    return [PY, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={xml}", *args]


def counts(name: str) -> tuple[int, int, int]:
    """(passed, failed, skipped) from a stage's JUnit report; (0, 1, 0) for a report nobody can read.

    Whatever a report holds, the summary is printed: an unreadable report counts as one failure of its
    stage, never as a crash of this script.
    """
    xml = REPORTS / f"{name}.xml"
    if not xml.exists():
        return 0, 0, 0
    try:
        suites = ET.parse(xml).getroot()
    except (ET.ParseError, OSError, ValueError) as exc:
        print(f"\n{xml.relative_to(ROOT)} cannot be read ({exc}); its stage counts as one failure", flush=True)
        return 0, 1, 0
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return total - failed - skipped, failed, skipped


def run(cmd: list[str], env: dict) -> int:
    print("\n$ " + " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def benchmarks(env: dict) -> int:
    """Run every benchmarks/*.py with --quick: a benchmark that no longer runs fails; figures are only printed."""
    cases = []
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        cmd = [PY, str(script.relative_to(ROOT)), "--quick"]
        start = time.time()
        code = run(cmd, env)
        took = time.time() - start
        print(f"{script.name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {took:.1f} s", flush=True)
        cases.append((script.name, took, None if code == 0 else f"{script.name} --quick exited with {code}"))
    write_junit(REPORTS / "benchmarks.xml", "benchmarks", cases)
    return int(any(f for _, _, f in cases))


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def notebook_table() -> list[str]:
    """Each notebook's wall and CPU seconds in both environments, slowest first; names of those over budget."""
    main, colab = _load(BUILD / "notebook_times.json"), _load(BUILD / "colab_times.json")
    if not main and not colab:
        return []
    print(f"\nNotebook times, two at a time, one thread each (budget per notebook: {BUDGET_S} s wall, "
          f"{CPU_BUDGET_S} s CPU):")
    print(f"  {'main wall':>9s} {'cpu':>6s}   {'Colab wall':>10s} {'cpu':>6s}   notebook")
    over = []
    names = sorted(set(main) | set(colab),
                   key=lambda n: -max(main.get(n, {}).get("wall", 0), colab.get(n, {}).get("wall", 0)))

    def cell(d, key, width):
        return f"{d[key]:{width}.1f}" if d and key in d else f"{'-':>{width}s}"

    for name in names:
        m, c = main.get(name, {}), colab.get(name, {})
        flags = []
        if m and not m.get("ok", True):
            flags.append("FAILED here")
        if c and not c.get("ok", True):
            flags.append("FAILED Colab-shaped")
        why = over_budget(m.get("wall", 0), m.get("cpu")) or over_budget(
            c.get("wall", 0), c.get("cpu") if c.get("cpu_budget", True) else None)
        if why:
            flags.append(f"OVER BUDGET ({why})")
            over.append(name)
        print(f"  {cell(m, 'wall', 8)} s {cell(m, 'cpu', 6)}   {cell(c, 'wall', 9)} s {cell(c, 'cpu', 6)}   "
              f"{name}{'  ' + ', '.join(flags) if flags else ''}")
    tm = sum(v.get("wall", 0) for v in main.values())
    tc = sum(v.get("wall", 0) for v in colab.values())
    print(f"  {tm:8.1f} s {sum(v.get('cpu', 0) for v in main.values()):6.1f}   {tc:9.1f} s "
          f"{sum(v.get('cpu', 0) for v in colab.values()):6.1f}   sum over {len(names)} notebooks")
    return over


def main() -> int:
    REPORTS.mkdir(parents=True, exist_ok=True)
    for stale in (BUILD / "notebook_times.json", BUILD / "colab_times.json", *REPORTS.glob("*.xml")):
        stale.unlink(missing_ok=True)  # no figure from an earlier run can show up in this one's summary
    # MPLBACKEND must stay unset: forcing Agg would strip the figures from executed notebooks.
    base_env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    base_env.update(PYDEVD_DISABLE_FILE_VALIDATION="1", PYTHONHASHSEED="0")
    # Two notebooks run at once on two cores: one BLAS/torch thread each avoids oversubscription.
    nb_env = dict(base_env, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    stages = [
        ("unit", pytest("unit", ["-q", "-n", "2", "tests", "--ignore=tests/browser", "--ignore=tests/colab"]),
         base_env),
        ("execute", [PY, "tools/execute_notebooks.py"], nb_env),
        ("prose", [PY, "tools/check_prose_numbers.py", "--junit", str(REPORTS / "prose.xml")], base_env),
        ("site", [PY, "tools/build_site.py", "--from-cache"], base_env),
        ("browser", [PY, "tools/ensure_chromium.py"], base_env),
        ("browser", pytest("browser", ["-q", "tests/browser"]), base_env),
        ("colab", [PY, "tools/colab.py"], nb_env),
        ("colab-probe", pytest("colab-probe", ["-q", "tests/colab"]), nb_env),
        ("benchmarks", None, nb_env),
    ]
    results: dict[str, tuple[int, float]] = {}
    for name, cmd, env in stages:
        if name == "browser" and results.get("browser", (0, 0))[0] != 0:
            continue  # chromium could not be installed: the failure is already recorded
        if name == "browser" and results.get("site", (1, 0))[0] != 0 and "pytest" in cmd:
            print("\nskipping the browser check: the site did not build", flush=True)
            results["browser"] = (1, 0.0)
            continue
        start = time.time()
        code = benchmarks(env) if name == "benchmarks" else run(cmd, env)
        took = time.time() - start
        previous = results.get(name, (0, 0.0))
        results[name] = (previous[0] or code, previous[1] + took)

    try:
        over = notebook_table()
    except Exception as exc:  # the closing summary below is printed whatever the time files hold
        print(f"\nthe notebook time table could not be printed: {type(exc).__name__}: {exc}", flush=True)
        over = ["(notebook times unreadable)"]

    print("\nStages:")
    passed = failed = skipped = 0
    for name, (code, took) in results.items():
        p, f, s = counts(name) if name != "site" else (int(code == 0), int(code != 0), 0)
        if code and not f:
            f = 1  # the stage failed without a failing test in a report (a crash, or the site build)
        passed, failed, skipped = passed + p, failed + f, skipped + s
        print(f"  {name:11s} {'ok' if code == 0 else 'FAILED':7s} {took:7.1f} s   {p} passed, {f} failed, {s} skipped")
    print(f"  {'all':11s} {'':7s} {sum(t for _, t in results.values()):7.1f} s")
    if over:
        print(f"\nOver the budget ({BUDGET_S} s wall, {CPU_BUDGET_S} s CPU): {', '.join(over)}")
    worst = max((code for code, _ in results.values()), default=1)
    print(f"\ntotal: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 1 if worst or failed or over else 0


if __name__ == "__main__":
    sys.exit(main())
