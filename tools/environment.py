"""Keep environment.yml (conda) in step with requirements/constraints.txt (pip).

    python tools/environment.py      # rewrite environment.yml from the constraints

The constraints file is the source of truth; ``tests/test_environment.py``
fails when the two disagree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
ENVIRONMENT = ROOT / "environment.yml"
PYTHON = "3.11"


def pins(text: str) -> dict[str, str]:
    """``{normalized name: version}`` for every ``name==version`` line."""
    found = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip().lstrip("- ").strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
        if m:
            found[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return found


def render() -> str:
    lines = [
        "# conda environment for dlbook: conda env create -f environment.yml && conda activate dlbook && pip install -e .",
        "# Generated from requirements/constraints.txt by tools/environment.py; a test checks they agree.",
        "name: dlbook",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        f"  - python={PYTHON}",
        "  - pip",
        "  - pip:",
    ]
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            lines.append(f"      - {line.strip()}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    ENVIRONMENT.write_text(render())
    print(f"wrote {ENVIRONMENT.relative_to(ROOT)} with {len(pins(ENVIRONMENT.read_text()))} pins")
    sys.exit(0)
