"""Build the book's website into _build/html, failing on any warning or notebook error.

    python tools/build_site.py

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
    # No MPLBACKEND here: with Agg forced, the kernel's inline backend is bypassed and
    # executed notebooks lose every figure.
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(ROOT), "--path-output", str(ROOT), "--builder", "html", "-W", "-n", "--keep-going"]
    result = subprocess.run(cmd, cwd=ROOT, env=env)
    elapsed = time.time() - start
    index = ROOT / "_build" / "html" / "index.html"
    if result.returncode != 0 or not index.exists():
        print(f"site build FAILED after {elapsed:.0f} s (see the warnings above)", file=sys.stderr)
        return result.returncode or 1
    print(f"site built in {elapsed:.0f} s: open file://{index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
