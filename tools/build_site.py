"""Build the book's website into _build/html, failing on any warning or notebook error.

    python tools/build_site.py                # execute every notebook (two at a time), then build
    python tools/build_site.py --from-cache   # build from what tools/execute_notebooks.py cached

The notebooks are executed by tools/execute_notebooks.py, two at a time, into the site's
jupyter-cache; the build itself (``execute_notebooks: cache`` in _config.yml) takes their outputs from
there and executes only a notebook that is not in the cache (one that failed, or changed since), which
then fails the build if it fails again. `make test` runs the two steps as separate stages.

Jupyter Book only warns when a notebook fails to execute; with ``-W -n
--keep-going`` and ``nb_execution_raise_on_error`` (in _config.yml) a broken
notebook, a broken link or a missing reference fails the build instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    start = time.time()
    if "--from-cache" not in sys.argv[1:]:
        executed = subprocess.run([sys.executable, str(ROOT / "tools" / "execute_notebooks.py")], cwd=ROOT)
        if executed.returncode != 0:
            print("some notebooks failed to execute; the build will execute them again and fail on them",
                  file=sys.stderr)
    # No MPLBACKEND here: with Agg forced, the kernel's inline backend is bypassed and
    # executed notebooks lose every figure.
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(ROOT), "--path-output", str(ROOT), "--builder", "html", "-W", "-n", "--keep-going"]
    # Stream the build's output, and count the notebooks it had to execute itself (cache misses):
    # after a clean execute stage there should be none, and each one costs a serial execution.
    missed = []
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            if "Executing notebook using" in line:
                missed.append(line.split(":", 1)[0].strip())
    result = proc
    elapsed = time.time() - start
    if missed:
        print(f"the build executed {len(missed)} notebook(s) itself, not found in the cache: {', '.join(missed)}")
    else:
        print("the build executed no notebook: every output came from the cache")
    index = ROOT / "_build" / "html" / "index.html"
    if result.returncode != 0 or not index.exists():
        print(f"site build FAILED after {elapsed:.0f} s (see the warnings above)", file=sys.stderr)
        return result.returncode or 1
    print(f"site built in {elapsed:.0f} s: open file://{index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
