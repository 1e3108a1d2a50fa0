"""Everything `make test` runs, in order, with the time of each stage.

1. unit tests of dlbook (pytest, tests/ without the browser check);
2. every notebook under chapters/ and exercises/ with nbval, two at a time;
3. the full site build (warnings are errors);
4. the browser check of the built site (Debian's Chromium driven by Playwright).

All stages run even when one fails, so one run shows every problem. The run
ends with each notebook's execution time, slowest first, and one closing line
``total: N passed, N failed`` (the exit status is non-zero if anything failed).
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
BUILD = ROOT / "_build"
REPORTS = BUILD / "test-reports"
PY = sys.executable


def pytest(name: str, args: list[str], env: dict | None = None) -> list[str]:
    xml = REPORTS / f"{name}.xml"
    return [PY, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={xml}", *args]


def counts(name: str) -> tuple[int, int, int]:
    """(passed, failed, skipped) from a stage's JUnit report."""
    xml = REPORTS / f"{name}.xml"
    if not xml.exists():
        return 0, 0, 0
    suites = ET.parse(xml).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return total - failed - skipped, failed, skipped


def run(cmd: list[str], env: dict) -> int:
    print("\n$ " + " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def main() -> int:
    REPORTS.mkdir(parents=True, exist_ok=True)
    # MPLBACKEND must stay unset: forcing Agg would strip the figures from executed notebooks.
    base_env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    base_env.update(PYDEVD_DISABLE_FILE_VALIDATION="1", PYTHONHASHSEED="0")
    # Two notebooks run at once on two cores: one BLAS/torch thread each avoids oversubscription.
    nb_env = dict(base_env, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    stages = [
        ("unit", pytest("unit", ["-q", "-n", "2", "tests", "--ignore=tests/browser"]), base_env),
        ("notebooks", pytest("notebooks", ["-q", "--nbval-lax", "--nbval-current-env", "-n", "2", "--dist", "loadfile",
                                           "chapters", "exercises"]), nb_env),
        ("site", [PY, "tools/build_site.py"], base_env),
        ("browser", [PY, "tools/ensure_chromium.py"], base_env),
        ("browser", pytest("browser", ["-q", "tests/browser"]), base_env),
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
        code = run(cmd, env)
        took = time.time() - start
        previous = results.get(name, (0, 0.0))
        results[name] = (previous[0] or code, previous[1] + took)

    times_file = BUILD / "notebook_times.json"
    if times_file.exists():
        times = json.loads(times_file.read_text())
        print("\nNotebook execution times under nbval (slowest first):")
        for path, seconds in times.items():
            flag = "  OVER BUDGET (120 s)" if seconds > 120 else ""
            print(f"  {seconds:7.1f} s  {path}{flag}")

    print("\nStages:")
    passed = failed = skipped = 0
    for name, (code, took) in results.items():
        p, f, s = counts(name) if name != "site" else (int(code == 0), int(code != 0), 0)
        passed, failed, skipped = passed + p, failed + f, skipped + s
        print(f"  {name:10s} {'ok' if code == 0 else 'FAILED':7s} {took:7.1f} s   {p} passed, {f} failed, {s} skipped")
    worst = max((code for code, _ in results.values()), default=1)
    if worst and not failed:
        failed = 1  # a stage failed without a test report (for example the site build)
    print(f"\ntotal: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 1 if worst or failed else 0


if __name__ == "__main__":
    sys.exit(main())
