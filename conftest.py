"""Repository-wide pytest hooks.

When pytest runs notebooks (nbval), add up the time of every cell of each
notebook, kernel start included, and write ``_build/nbval_times.json`` (`make notebooks`; `make
test` times notebooks itself, in tools/execute_notebooks.py and tools/colab.py).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

_ROOT = Path(__file__).resolve().parent
_times: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _times[path] += report.duration


def pytest_sessionfinish(session, exitstatus):
    # Under xdist the workers' reports reach the controller too; write only there.
    if not _times or hasattr(session.config, "workerinput"):
        return
    out = _ROOT / "_build" / "nbval_times.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(dict(sorted(_times.items(), key=lambda kv: -kv[1])), indent=1))
