"""What the notebook stages of `make test` share: the per-notebook budget and a small JUnit writer."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

# A notebook's hard limit, top to bottom, in seconds of wall time (CONTRIBUTING.md: aim for 60 s).
BUDGET_S = 120


def write_junit(path: Path, suite: str, cases: list[tuple[str, float, str | None]]) -> None:
    """One ``testcase`` per (name, seconds, failure message or None), as pytest's --junitxml writes them."""
    failures = sum(1 for _, _, f in cases if f)
    root = ET.Element("testsuites")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)), failures=str(failures),
                       errors="0", skipped="0", time=f"{sum(t for _, t, _ in cases):.1f}")
    for name, seconds, failure in cases:
        case = ET.SubElement(ts, "testcase", classname=suite, name=name, time=f"{seconds:.1f}")
        if failure:
            ET.SubElement(case, "failure", message=failure.strip().splitlines()[-1][:500] if failure.strip() else "failed").text = failure
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
