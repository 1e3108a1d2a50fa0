"""Execute every notebook once, two at a time, and hand the outputs to the site build.

    python tools/execute_notebooks.py [--jobs 2] [paths ...]

Each notebook under chapters/ and exercises/ (exercise sources included) runs top to bottom in a
fresh kernel of this environment, in its own folder, one BLAS/torch thread per kernel, exactly as
myst-nb would run it (``jupyter_cache``'s ``single_nb_execution``: nbclient, widget state stored). A
notebook that executes without an error is stored in the site's jupyter-cache
(``_build/.jupyter_cache``), which ``_config.yml`` builds from (``execute_notebooks: cache``), so the
site build shows these outputs without executing anything again. The cache is emptied first: a
notebook that failed here is not in it, so the site build executes it and fails on it too, and no
output from an earlier run can reach the site.

Also writes a copy of each executed notebook under ``_build/executed/`` (what
``tools/check_prose_numbers.py`` reads), ``_build/notebook_times.json`` (per notebook: wall seconds, kernel CPU seconds, ok, error) and a
JUnit report ``_build/test-reports/execute.xml`` (one test per notebook; a notebook over its budget,
120 s of wall time or 60 s of CPU, fails). A kernel that dies before its first reply is restarted, up to
twice, before the notebook counts as failed. Exit status 1 if any notebook failed or ran over budget.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.nbtools import all_notebooks  # noqa: E402
from tools.reports import error_line, over_budget, write_junit  # noqa: E402

CACHE = ROOT / "_build" / ".jupyter_cache"
TIMES = ROOT / "_build" / "notebook_times.json"
EXECUTED = ROOT / "_build" / "executed"  # a copy of each executed notebook, for tools/check_prose_numbers.py
REPORT = ROOT / "_build" / "test-reports" / "execute.xml"
TIMEOUT_S = 300  # the cell timeout of _config.yml; the budget guard (tools.reports) is separate


def _no_echo_to_kernel(self) -> None:
    """Replaces nbclient's ``OutputWidget.sync_state`` (see ``_execute``)."""


# nbclient's messages when a kernel dies or hangs before it answers its first request: the notebook never
# ran, so on a busy machine the harness starts a fresh kernel instead of failing it (``_execute``).
_STARTUP_FAILURES = ("Kernel died before replying to kernel_info", "Kernel didn't respond in",
                     "kernel_info")
STARTUP_RETRIES = 2


def _never_ran(nb) -> bool:
    """True when no code cell of an executed notebook got an execution count (the kernel never ran one)."""
    return all(c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


def _execute(path: str, env: dict[str, str] | None = None) -> dict:
    """Run one notebook in this worker process; return its times, and its executed notebook if it passed.

    ``env`` updates this worker's environment first (the kernel inherits it): ``tools/portability.py``
    sets the CPU kernel path that way. A kernel that dies before its first reply is restarted up to
    ``STARTUP_RETRIES`` times, each retry logged in the result's ``retries``; only a notebook that ran
    and failed, or whose kernel never started after the retries, counts as failed.
    """
    import nbformat
    import nbclient.output_widget
    from jupyter_cache.executors.utils import single_nb_execution

    if env:
        os.environ.update(env)
    # Why a cell with an ipywidgets Output (chapter 1 notebook 1's `interact`) sometimes stalled for the
    # whole cell timeout and then went on without an error: nbclient plays the frontend of an Output
    # widget, and each time it routes an output (the figure) into one, it echoes the widget's new
    # state back to the kernel with an un-awaited send on the shell socket, from the task that reads
    # IOPub, while another task is awaiting that same socket's poll for the cell's execute_reply.
    # ZeroMQ's socket FD is edge-triggered: when the reply lands during that send, the send consumes
    # the edge, the poll is never woken, and only its timeout's final poll(0) finds the reply. The
    # kernel finished at once (its reply and idle messages are stamped seconds before the next cell
    # starts; measured gap = the cell timeout, 30 s with timeout 30 and about 300 s with 300). The echo
    # is of no use here: the kernel never reads the outputs back, and nbclient keeps the widget state
    # for the page separately (``widget_state``), so it is dropped and the socket is only polled.
    nbclient.output_widget.OutputWidget.sync_state = _no_echo_to_kernel

    retries: list[str] = []
    while True:
        nb = nbformat.read(path, as_version=4)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = single_nb_execution(nb, cwd=str(Path(path).parent), timeout=TIMEOUT_S, allow_errors=False)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel was a child of this process, now reaped
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        error = None
        if result.err is not None:
            error = (result.exc_string or repr(result.err))[-3000:]
        startup = error is not None and _never_ran(result.nb) and any(m in error for m in _STARTUP_FAILURES)
        if not startup or len(retries) >= STARTUP_RETRIES:
            break
        retries.append(error.strip().splitlines()[-1][:300])
        print(f"kernel failed to start for {path} (retry {len(retries)} of {STARTUP_RETRIES}): {retries[-1]}",
              flush=True)
    return {"path": path, "wall": wall, "cpu": cpu, "error": error, "retries": retries,
            "nb": nbformat.writes(result.nb) if error is None else None}


def order_by_previous_times(paths: list[Path]) -> list[Path]:
    """Slowest first (from the last run's times), so two workers finish together."""
    try:
        previous = {k: v["wall"] for k, v in json.loads(TIMES.read_text()).items()}
    except (OSError, ValueError, KeyError, TypeError):
        previous = {}
    return sorted(paths, key=lambda p: -previous.get(str(p.relative_to(ROOT)), 60.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", help="notebooks (default: every notebook under chapters/ and exercises/)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)

    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    paths = [Path(p).resolve() for p in args.paths] or all_notebooks()
    paths = order_by_previous_times(paths)
    if not args.paths:
        for stale in (CACHE, EXECUTED):  # a full run starts from nothing (see the module docstring)
            shutil.rmtree(stale, ignore_errors=True)
    cache = get_cache(str(CACHE))

    # One thread per kernel: two kernels share two cores (the kernel inherits these).
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYDEVD_DISABLE_FILE_VALIDATION="1")
    os.environ.pop("MPLBACKEND", None)  # Agg would strip every figure from the outputs

    start = time.time()
    results: dict[str, dict] = {}
    # A fresh worker per notebook (max_tasks_per_child): its RUSAGE_CHILDREN holds that kernel alone.
    with ProcessPoolExecutor(max_workers=args.jobs, max_tasks_per_child=1) as pool:
        futures = {pool.submit(_execute, str(p)): p for p in paths}
        for future in as_completed(futures):
            path = futures[future]
            rel = str(path.relative_to(ROOT))
            try:
                r = future.result()
            except Exception as exc:  # the worker itself died
                r = {"path": str(path), "wall": 0.0, "cpu": 0.0, "error": f"{type(exc).__name__}: {exc}", "nb": None}
            if r["nb"] is not None:
                copy = EXECUTED / path.relative_to(ROOT)
                copy.parent.mkdir(parents=True, exist_ok=True)
                copy.write_text(r["nb"])
                uri = str(path)
                cache.add_nb_to_project(uri)
                cache.cache_notebook_bundle(CacheBundleIn(nbformat.reads(r["nb"], as_version=4), uri,
                                                          data={"execution_seconds": r["wall"]}),
                                            check_validity=False, overwrite=True)
            over = over_budget(r["wall"], r["cpu"])
            status = "FAILED" if r["error"] else ("OVER BUDGET" if over else "ok")
            print(f"{status:11s} {r['wall']:6.1f} s wall {r['cpu']:6.1f} s cpu  {rel}", flush=True)
            if r["error"]:
                print("    " + error_line(r["error"]), flush=True)
            elif over:
                print(f"    {rel} {over}", flush=True)
            results[rel] = {"wall": round(r["wall"], 1), "cpu": round(r["cpu"], 1), "ok": r["error"] is None,
                            "error": r["error"], "retries": r.get("retries", [])}

    ordered = dict(sorted(results.items(), key=lambda kv: -kv[1]["wall"]))
    TIMES.parent.mkdir(parents=True, exist_ok=True)
    if not args.paths:
        TIMES.write_text(json.dumps(ordered, indent=1))
    cases = []
    for rel, r in ordered.items():
        failure = r["error"]
        if failure is None and over_budget(r["wall"], r["cpu"]):
            failure = f"{rel} {over_budget(r['wall'], r['cpu'])}"
        cases.append((rel, r["wall"], failure))
    write_junit(REPORT, "execute", cases)
    failed = sum(1 for _, _, f in cases if f)
    print(f"executed {len(cases)} notebooks in {time.time() - start:.0f} s with {args.jobs} at a time: "
          f"{len(cases) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
