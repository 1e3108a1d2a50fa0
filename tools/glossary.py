"""Read the bilingual glossary and link it from the chapters.

    python tools/glossary.py          # link each chapter's terms (index "Key terms" line, first use in notebooks)
    python tools/glossary.py check    # exit 1 if a link is missing or stale

``book/glossary.md`` holds one Sphinx ``glossary`` directive. Each entry is an English
term line, a Chinese term line (so either name is a target of ``{term}`` and of the
site's search), and an indented definition that links the chapter page where the
book builds or measures it. ``tests/test_glossary.py`` checks the entries; this script
keeps the chapters linked to them:

- each chapter's ``index.md`` gets a generated "Key terms" line with a ``{term}``
  link to every entry whose page is in that chapter;
- in each chapter's notebooks (in ``_toc.yml`` order), the first plain-prose use of
  an entry's English term becomes a ``{term}`` link (never inside headings, math,
  code or existing links).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GLOSSARY = ROOT / "book" / "glossary.md"
KEY_MARK = "<!-- key terms: written by tools/glossary.py -->"
CJK = re.compile(r"[\u4e00-\u9fff]")


@dataclass
class Entry:
    english: str
    chinese: str
    definition: str
    links: list[str] = field(default_factory=list)  # pages relative to the repository root, no suffix

    @property
    def chapters(self) -> list[str]:
        return sorted({p.split("/")[1] for p in self.links if p.startswith("chapters/")})


def entries(text: str | None = None) -> list[Entry]:
    """Parse the glossary directive: term lines, then an indented definition."""
    text = GLOSSARY.read_text() if text is None else text
    body = re.search(r"```\{glossary\}\n(.*?)\n```", text, re.S)
    if not body:
        raise ValueError("book/glossary.md has no ```{glossary} block")
    found = []
    for block in re.split(r"\n\s*\n", body.group(1).strip("\n")):
        lines = block.split("\n")
        terms = [line for line in lines if line and not line.startswith(" ")]
        definition = " ".join(line.strip() for line in lines if line.startswith(" "))
        english = next((t for t in terms if not CJK.search(t)), "")
        chinese = next((t for t in terms if CJK.search(t)), "")
        links = [re.sub(r"^\.\./", "", m) for m in re.findall(r"\]\(([^)#\s]+)", definition)]
        found.append(Entry(english, chinese, definition, links))
    return found


# ----------------------------------------------------------------------------- chapters

def chapter_pages() -> dict[str, list[Path]]:
    """chapter folder -> its notebooks in toc order."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages: dict[str, list[Path]] = {}

    def walk(items):
        for item in items or []:
            f = item.get("file", "")
            if f.startswith("chapters/") and (ROOT / f"{f}.ipynb").exists():
                pages.setdefault(f.split("/")[1], []).append(ROOT / f"{f}.ipynb")
            walk(item.get("sections"))

    for part in toc["parts"]:
        walk(part["chapters"])
    return pages


def key_terms_line(chapter: str, all_entries: list[Entry]) -> str:
    mine = [e.english for e in all_entries if chapter in e.chapters]
    links = ", ".join(f"{{term}}`{t}`" for t in sorted(mine, key=str.lower))
    return f"{KEY_MARK}\n**Key terms** (English and 中文 in the [glossary](../../book/glossary)): {links}."


def sync_index(chapter: str, all_entries: list[Entry], write: bool) -> bool:
    index = ROOT / "chapters" / chapter / "index.md"
    text = index.read_text()
    line = key_terms_line(chapter, all_entries)
    if KEY_MARK in text:
        new = re.sub(re.escape(KEY_MARK) + r"\n[^\n]*", lambda m: line, text)
    else:
        new = text.rstrip("\n") + "\n\n" + line + "\n"
    if new != text and write:
        index.write_text(new)
    return new != text


# Spans a term must never be linked inside: code, math, links, roles, HTML comments, and long
# italic phrases (the titles of cited papers).
_PROTECTED = re.compile(r"```.*?```|(?<!\*)\*[^*\n]{25,}?\*(?!\*)|\$\$.*?\$\$|\$[^$\n]+\$|`[^`]*`|\[[^\]]*\]\([^)]*\)|\{[a-z:]+\}`[^`]*`|<!--.*?-->", re.S)


def _link_first(text: str, term: str) -> str | None:
    """Link the first prose occurrence of ``term`` (or its plural) in ``text``; None if there is none."""
    pattern = re.compile(r"(?<![\w-])(" + re.escape(term) + r"s?)(?![\w-])", re.I)
    protected = [m.span() for m in _PROTECTED.finditer(text)]
    offset = 0
    for line in text.split("\n"):
        if not line.lstrip().startswith("#"):
            for m in pattern.finditer(line):
                start, end = offset + m.start(), offset + m.end()
                if not any(a <= start < b for a, b in protected):
                    return text[:start] + f"{{term}}`{m.group(1)} <{term}>`" + text[end:]
        offset += len(line) + 1
    return None


def sync_notebooks(chapter: str, notebooks: list[Path], all_entries: list[Entry], write: bool) -> bool:
    import nbformat

    books = [(p, nbformat.read(p, as_version=4)) for p in notebooks]
    linked = {m.lower() for _, nb in books for c in nb.cells if c.cell_type == "markdown"
              for m in re.findall(r"\{term\}`[^`<]*<([^>]+)>`", c.source)}
    changed: set[Path] = set()
    for entry in sorted(all_entries, key=lambda e: -len(e.english)):  # longest first: "batch size" before "batch"
        if entry.english.lower() in linked:
            continue
        for path, nb in books:
            cells = [c for c in nb.cells if c.cell_type == "markdown"][1:]  # never the title cell
            hit = next(((c, new) for c in cells if (new := _link_first(c.source, entry.english)) is not None), None)
            if hit:
                hit[0].source = hit[1]
                changed.add(path)
                break
    if write:
        for path, nb in books:
            if path in changed:
                nbformat.write(nb, path)
    return bool(changed)


def main(argv: list[str]) -> int:
    all_entries = entries()
    check = argv == ["check"]
    stale = []
    for chapter in sorted(p.name for p in (ROOT / "chapters").iterdir() if p.is_dir()):
        if sync_index(chapter, all_entries, write=not check):
            stale.append(f"chapters/{chapter}/index.md")
    for chapter, notebooks in chapter_pages().items():
        if sync_notebooks(chapter, notebooks, all_entries, write=not check):
            stale.append(f"chapters/{chapter} notebooks")
    if check and stale:
        print(f"glossary links are stale in {stale}: run python tools/glossary.py")
        return 1
    if not check:
        print(f"{len(all_entries)} entries; updated {stale or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
