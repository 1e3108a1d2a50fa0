"""Run every notebook under three CPU kernel paths and compare what they print.

    python tools/portability.py                      # every notebook, paths native, avx2, default
    python tools/portability.py --paths avx2 NB ...  # some notebooks, some paths

A reader's laptop, Colab and CI run other CPU kernels than the machine a notebook was written on.
PyTorch picks its vectorized kernels by instruction set at run time, and MKL and oneDNN pick theirs;
each can be forced down, which is how this tool imitates other machines on one:

- ``native``: what this CPU selects (AVX-512 on the project's machines);
- ``avx2``: ``ATEN_CPU_CAPABILITY=avx2`` with ``MKL_ENABLE_INSTRUCTIONS=AVX2`` and ``ONEDNN_MAX_CPU_ISA=AVX2``
  (a typical laptop or Colab VM);
- ``default``: no vector kernels in ATen (``ATEN_CPU_CAPABILITY=default``), MKL and oneDNN at SSE4.

Each notebook runs top to bottom under each path (one thread, as in ``make test``), its hidden asserts
included; the executed copies go to ``_build/portability/<path>/``. The report
(``_build/portability/report.md``, also printed) has one row per notebook: pass or fail and CPU seconds
per path, and how many cells print something different between paths, with the first differing line of
each such cell. Those lines are where an asserted value depends on the machine: a margin must cover
them. Exit status 1 when any notebook fails under any path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.execute_notebooks import _execute  # noqa: E402
from tools.nbtools import all_notebooks  # noqa: E402
from tools.reports import error_line  # noqa: E402

OUT = ROOT / "_build" / "portability"

# The environment of each kernel path; "native" clears any forcing inherited from the caller.
PATHS: dict[str, dict[str, str]] = {
    "native": {"ATEN_CPU_CAPABILITY": "", "MKL_ENABLE_INSTRUCTIONS": "", "ONEDNN_MAX_CPU_ISA": ""},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
           "PYTHONHASHSEED": "0"}


def native_capability() -> str:
    """The kernel path this CPU selects by itself, as torch names it ("AVX512", "AVX2", "DEFAULT", ...)."""
    import subprocess

    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    env = {k: v for k, v in os.environ.items() if k not in PATHS["native"]}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return out.stdout.strip() or "unknown"


def second_path(native: str | None = None) -> str:
    """The kernel path the Colab-shaped stage of ``make test`` runs under: another one than the native.

    ``avx2`` on a machine that would use AVX-512 (or anything else but AVX2), ``default`` on an AVX2 machine,
    so that every run of ``make test`` executes every notebook under two kernel paths. The environment
    variable ``DLBOOK_SECOND_KERNEL_PATH`` overrides the choice.
    """
    forced = os.environ.get("DLBOOK_SECOND_KERNEL_PATH")
    if forced:
        kernel_env(forced)
        return forced
    native = native if native is not None else native_capability()
    return "default" if native.upper() == "AVX2" else "avx2"


def kernel_env(path: str) -> dict[str, str]:
    """The variables a kernel on ``path`` is started with (an empty value means: unset)."""
    if path not in PATHS:
        raise ValueError(f"unknown kernel path {path!r}: expected one of {', '.join(PATHS)}")
    return {**THREADS, **PATHS[path]}


def _run_one(nb_path: str, path: str) -> dict:
    env = kernel_env(path)
    for key in [k for k, v in env.items() if v == ""]:
        os.environ.pop(key, None)
    return _execute(nb_path, {k: v for k, v in env.items() if v})


def text_outputs(nb: dict) -> list[list[str]]:
    """Per code cell, the lines it printed (streams and plain-text results), in order."""
    cells = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines: list[str] = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                text = out.get("text", "")
            elif out.get("output_type") in ("execute_result", "display_data"):
                text = out.get("data", {}).get("text/plain", "")
                if "image/png" in out.get("data", {}) or "application/vnd.jupyter.widget-view+json" in out.get(
                        "data", {}):
                    text = ""  # a figure's repr (<Figure ...>) and widget views say nothing about values
            else:
                continue
            lines.extend(("".join(text) if isinstance(text, list) else text).splitlines())
        cells.append(lines)
    return cells


def differences(runs: dict[str, list[list[str]]]) -> list[tuple[int, dict[str, str]]]:
    """[(code cell index, {path: first line that differs})] for each cell whose printed lines differ."""
    found = []
    names = list(runs)
    for i in range(min(len(r) for r in runs.values())):
        outs = {n: runs[n][i] for n in names}
        if all(outs[n] == outs[names[0]] for n in names):
            continue
        width = max(len(o) for o in outs.values())
        for j in range(width):
            row = {n: (outs[n][j] if j < len(outs[n]) else "") for n in names}
            if len(set(row.values())) > 1:
                found.append((i, row))
                break
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebooks (default: every one under chapters/ and exercises/)")
    parser.add_argument("--paths", default="native,avx2,default", help="comma-separated kernel paths")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    for p in paths:
        kernel_env(p)  # fails early on an unknown name
    notebooks = [Path(p).resolve() for p in args.notebooks] or all_notebooks()

    start = time.time()
    results: dict[tuple[str, str], dict] = {}
    with ProcessPoolExecutor(max_workers=args.jobs, max_tasks_per_child=1) as pool:
        futures = {pool.submit(_run_one, str(nb), p): (str(nb.relative_to(ROOT)), p)
                   for nb in notebooks for p in paths}
        for future in as_completed(futures):
            rel, p = futures[future]
            try:
                r = future.result()
            except Exception as exc:  # the worker itself died
                r = {"wall": 0.0, "cpu": 0.0, "error": f"{type(exc).__name__}: {exc}", "nb": None}
            results[rel, p] = r
            if r["nb"] is not None:
                target = OUT / p / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(r["nb"])
            status = "FAILED" if r["error"] else "ok"
            print(f"{status:7s} {p:8s} {r['wall']:6.1f} s wall {r['cpu']:6.1f} s cpu  {rel}", flush=True)
            if r["error"]:
                print("    " + error_line(r["error"]), flush=True)

    lines = [f"# Kernel paths: {', '.join(paths)}", "",
             "| notebook | " + " | ".join(f"{p} (cpu s)" for p in paths) + " | cells that differ |",
             "|---|" + "---|" * len(paths) + "---|"]
    details: list[str] = []
    failed = 0
    for nb in notebooks:
        rel = str(nb.relative_to(ROOT))
        row = []
        outputs = {}
        for p in paths:
            r = results.get((rel, p), {"error": "not run", "cpu": 0.0})
            row.append(f"{'FAIL' if r['error'] else 'ok'} {r['cpu']:.0f}")
            failed += bool(r["error"])
            if r.get("nb"):
                outputs[p] = text_outputs(json.loads(r["nb"]))
            elif r["error"]:
                details.append(f"- `{rel}` fails under {p}: {error_line(r['error'])}")
        diffs = differences(outputs) if len(outputs) > 1 else []
        lines.append(f"| {rel} | " + " | ".join(row) + f" | {len(diffs)} |")
        for cell, row_diff in diffs:
            details.append(f"- `{rel}` code cell {cell}: " + "; ".join(f"{p}: `{t.strip()[:120]}`"
                                                                   for p, t in row_diff.items()))
    report = "\n".join(lines + ["", "## Differences and failures", ""] + (details or ["none"])) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report.md").write_text(report)
    print("\n" + report)
    print(f"portability: {len(notebooks)} notebooks x {len(paths)} paths in {time.time() - start:.0f} s, "
          f"{failed} failed runs")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
