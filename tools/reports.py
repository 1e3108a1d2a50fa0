"""What the notebook stages of `make test` share: the per-notebook budgets and a small JUnit writer."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

# A notebook's hard limits, top to bottom: seconds of wall time, and seconds of CPU on one thread.
# The CPU budget is the one that leaves headroom: a notebook within 60 s of CPU stays within the 120 s
# wall budget on a machine running at half speed (a busy 2-core CI runner). CONTRIBUTING.md explains.
BUDGET_S = 120
CPU_BUDGET_S = 60

# Terminal colour and cursor sequences (a kernel's traceback is full of them), and the characters that
# XML 1.0 cannot hold at all (control characters other than tab, newline and carriage return; lone
# surrogates; U+FFFE and U+FFFF). Either one makes the report unreadable to every JUnit parser.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """``text`` without ANSI escape sequences and with every character XML 1.0 forbids replaced by '?'."""
    return _NOT_XML.sub("?", _ANSI.sub("", str(text)))


def error_line(error: str) -> str:
    """The line of a traceback that names the error (the last one with 'Error' or 'Exception'), cleaned."""
    lines = [ln.strip() for ln in xml_safe(error).splitlines() if ln.strip()]
    named = [ln for ln in lines if re.search(r"(Error|Exception|Timeout)\b", ln)]
    return ((named or lines or ["(no message)"])[-1])[:300]


def over_budget(wall: float, cpu: float | None) -> str | None:
    """Why a notebook's times break its budget, or None when they do not."""
    if wall > BUDGET_S:
        return f"took {wall:.0f} s of wall time, over the {BUDGET_S} s budget of a notebook"
    if cpu is not None and cpu > CPU_BUDGET_S:
        return f"used {cpu:.0f} s of CPU, over the {CPU_BUDGET_S} s CPU budget of a notebook"
    return None


def write_junit(path: Path, suite: str, cases: list[tuple[str, float, str | None]]) -> None:
    """One ``testcase`` per (name, seconds, failure message or None), as pytest's --junitxml writes them.

    Every string is passed through :func:`xml_safe` first, so a coloured traceback cannot make the
    report unparseable.
    """
    failures = sum(1 for _, _, f in cases if f)
    root = ET.Element("testsuites")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)), failures=str(failures),
                       errors="0", skipped="0", time=f"{sum(t for _, t, _ in cases):.1f}")
    for name, seconds, failure in cases:
        case = ET.SubElement(ts, "testcase", classname=suite, name=xml_safe(name), time=f"{seconds:.1f}")
        if failure:
            text = xml_safe(failure)
            message = text.strip().splitlines()[-1][:500] if text.strip() else "failed"
            ET.SubElement(case, "failure", message=message).text = text
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
