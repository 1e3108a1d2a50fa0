"""Check that every measured-looking number in a notebook's prose appears in what the notebook printed.

    python tools/check_prose_numbers.py                  # every executed chapter notebook in _build/executed/
    python tools/check_prose_numbers.py NB.ipynb ...     # executed notebooks given by path

When a default changes, the outputs change and the prose does not: this is what catches the drift,
on the machine that runs it. A *measured-looking* number in a Markdown cell is a decimal (``0.483``),
a percentage (``45%``, ``4.5%``) or a ratio (``1.55x``). Each must equal, at the precision the prose
states it, a number the notebook printed (a stream, or a cell's plain-text result) or a number written
in one of its code cells (a hyperparameter such as ``lr=3e-3`` is "0.003" in the prose). ``0.45`` matches
a printed 0.4499 or 0.4503, not 0.456; ``45%`` matches 0.452 or 45.2; ``1.55x`` matches 1.548.

Not checked, because they are not this notebook's measurements:

- math (``$...$``, ``$$...$$``), inline code, link targets, MyST roles and directives' options;
- a number in a sentence that cites its source (a ``{cite}`` role);
- a bound rather than a value: a number right after "above", "below", "over", "under", "at least",
  "at most", "more than", "less than", "within", "up to", "beyond", "exceeds", "<", ">" and the like;
- numbers listed in a marker comment in the same Markdown cell, which says why they are not in the
  output (derived by hand, quoted from elsewhere, measured on other kernel paths)::

      <!-- prose-numbers: 0.6 and 1.1 are the avx2 and default kernel paths' gaps (make portability) -->

  The comment is invisible on the site and in Jupyter.

Exit status 1 when any number is unmatched; each is printed with its notebook, cell and sentence.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXECUTED = ROOT / "_build" / "executed"

MARKER = re.compile(r"<!--\s*prose-numbers:(.*?)-->", re.S)
_MATH_BLOCK = re.compile(r"\$\$.*?\$\$", re.S)
_MATH_INLINE = re.compile(r"(?<!\\)\$[^$\n]+?(?<!\\)\$")
_CODE = re.compile(r"``?[^`]+``?")
_ROLE = re.compile(r"\{[a-z:]+\}`[^`]*`")        # {cite}`...`, {term}`...`, {py:obj}`...`
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_DIRECTIVE_OPTION = re.compile(r"^:[\w-]+:.*$", re.M)
_HTML_TAG = re.compile(r"<[^>]+>")

# A decimal, a percentage or a ratio; the look-arounds keep out parts of versions (2.13.0), of
# identifiers (x1.5) and of longer numbers.
NUMBER = re.compile(r"(?<![\w.\-/])(?P<num>\d+\.\d+|\d+)(?P<unit>%|x\b|×)?(?![\w.]?\d)")
BOUND_WORDS = ("above", "below", "over", "under", "at least", "at most", "more than", "less than", "within",
               "up to", "beyond", "exceeds", "exceed", "exceeding", "greater than", "smaller than", "larger than",
               "higher than", "lower than", "no more than", "no less than", "<", ">", "≤", "≥", "<=", ">=",
               "than", "as much as", "as little as", "threshold of", "target of",
               "budget of", "limit of", "tolerance of", "margin of", "cut-off", "cutoff")
_BOUND = re.compile(r"(?:" + "|".join(re.escape(w) for w in BOUND_WORDS) + r")\s*(?:about\s+|roughly\s+)?$",
                    re.I)
# Any number in code or output: plain, scientific, or with a thousands separator.
_ANY_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")
_WORD = re.compile(r"[A-Za-z_]")


def prose_text(source: str) -> str:
    """A Markdown cell's prose with math, code, roles, link targets, comments and tags blanked out."""
    for pattern in (_MATH_BLOCK, _COMMENT, _ROLE, _CODE, _MATH_INLINE, _LINK_TARGET, _DIRECTIVE_OPTION, _HTML_TAG):
        source = pattern.sub(lambda m: " " * len(m.group(0)), source)
    return source


def sentences(source: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence (split at '. ', '? ', '! ', ': ' before a capital, and blank lines)."""
    bounds, start = [], 0
    for m in re.finditer(r"(?<=[.?!])\s+(?=[A-Z(\[*])|\n\s*\n|\n(?=\s*[-*|#] )", source):
        bounds.append((start, m.start()))
        start = m.end()
    bounds.append((start, len(source)))
    return bounds


def exempt_numbers(source: str) -> set[str]:
    """Numbers a marker comment lists, as written."""
    found: set[str] = set()
    for m in MARKER.finditer(source):
        found.update(n.group("num") for n in NUMBER.finditer(m.group(1)))
    return found


def claims(source: str) -> list[tuple[str, str, str]]:
    """[(number as written, unit, sentence)] for each measured-looking number in a Markdown cell."""
    exempt = exempt_numbers(source)
    text = prose_text(source)
    out = []
    for start, end in sentences(text):
        raw_sentence = source[start:end]
        if re.search(r"\{cite(:[a-z]+)?\}`", raw_sentence):
            continue
        sentence = text[start:end]
        for m in NUMBER.finditer(sentence):
            num, unit = m.group("num"), m.group("unit") or ""
            if "." not in num and not unit:
                continue  # a plain integer is a count or a setting, not a measured-looking figure
            if num in exempt:
                continue
            before = sentence[:m.start()]
            if _BOUND.search(before):
                continue
            if re.search(r"[A-Za-z]\s*$", before) and re.search(r"(?:version|Python|torch|numpy|v)\s*$", before):
                continue
            out.append((num, unit, " ".join(raw_sentence.split())))
    return out


def numbers_in(text: str) -> list[Decimal]:
    """Every number written in ``text`` (code or output), as exact decimals."""
    values = []
    for m in _ANY_NUMBER.finditer(text):
        token = m.group(0).replace(",", "")
        if not token or token in "+-." or not re.search(r"\d", token):
            continue
        end = m.end()
        if end < len(text) and _WORD.match(text[end]) and text[end] not in "eE":
            pass  # "3x", "64d": the number is still a number
        try:
            values.append(Decimal(token))
        except InvalidOperation:
            continue
    return values


def _places(num: str) -> int:
    return len(num.split(".")[1]) if "." in num else 0


def matches(num: str, unit: str, values: list[Decimal]) -> bool:
    """True when a printed value, rounded to the prose's precision, is the prose's number.

    Rounding is half-up or half-down: either is accepted (0.125 may be written 0.12 or 0.13).
    """
    target = Decimal(num)
    places = _places(num)
    step = Decimal(1).scaleb(-places)
    scales = [Decimal(1)]
    if unit == "%":
        scales.append(Decimal(100))     # 0.452 printed, "45%" written
    for value in values:
        for scale in scales:
            v = abs(value) * scale
            if abs(v - target) <= step / 2 + Decimal("1e-12"):
                return True
            if places == 0 and unit == "%" and abs(v - target) < 1:  # "45%" for 45.2% or 0.452
                return True
    return False


def code_and_output_numbers(nb: dict) -> list[Decimal]:
    values: list[Decimal] = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        values += numbers_in("".join(cell["source"]))
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text = out.get("text", "")
            elif out.get("output_type") in ("execute_result", "display_data"):
                data = out.get("data", {})
                text = "\n".join(_join(data.get(kind, "")) for kind in ("text/plain", "text/html", "text/markdown"))
            elif out.get("output_type") == "error":
                text = ""
            else:
                continue
            values += numbers_in(_join(text))
    return values


def _join(text) -> str:
    return "".join(text) if isinstance(text, list) else text


def check(nb: dict) -> list[tuple[int, str, str]]:
    """[(markdown cell index, number with unit, sentence)] for each prose number no output or code shows."""
    values = code_and_output_numbers(nb)
    problems = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        source = "".join(cell["source"])
        for num, unit, sentence in claims(source):
            if not matches(num, unit, values):
                problems.append((i, num + unit, sentence))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", help=f"executed notebooks (default: every one under {EXECUTED})")
    parser.add_argument("--junit", type=Path, help="also write a JUnit report, one test per notebook")
    args = parser.parse_args(argv)
    # The chapters' prose reports measurements; an exercise set's text states its questions' parameters
    # ("probability 0.15", "0.5 means guessing"), which no output repeats, so it is not checked by default.
    paths = [Path(p) for p in args.notebooks] or sorted((EXECUTED / "chapters").rglob("*.ipynb"))
    if not paths:
        print(f"no executed notebooks found (run tools/execute_notebooks.py first; it writes {EXECUTED})")
        return 1
    total = 0
    cases = []
    for path in paths:
        nb = json.loads(path.read_text())
        rel = str(path.relative_to(EXECUTED) if path.is_relative_to(EXECUTED) else path)
        if not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"):
            print(f"{rel}: not executed (no outputs); skipped")
            continue
        lines = [f"{rel} [cell {cell}]: {number} is in no output or code cell at that precision: {sentence[:240]}"
                 for cell, number, sentence in check(nb)]
        total += len(lines)
        print("\n".join(lines) if lines else f"ok {rel}")
        cases.append((rel, 0.0, "\n".join(lines) or None))
    print(f"prose numbers: {len(cases)} notebooks checked, {total} numbers unmatched")
    if args.junit:
        sys.path.insert(0, str(ROOT))
        from tools.reports import write_junit

        write_junit(args.junit, "prose", cases)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
