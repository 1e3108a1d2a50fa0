"""The bilingual glossary: complete entries, no duplicates, and linked from every chapter.

Each entry gives an English term, a Chinese term, a definition, and a link to a page
of the book where the idea is built or measured (book/glossary.md; tools/glossary.py
reads it). The browser stage checks the rendered page (Chinese glyphs, offline search).
"""

from __future__ import annotations

import re
import subprocess
import sys

import nbformat
import pytest

from tools.glossary import CJK, ROOT, entries

ENTRIES = entries()


def test_the_glossary_has_at_least_70_bilingual_entries():
    assert len(ENTRIES) >= 70, len(ENTRIES)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.english or "?" for e in ENTRIES])
def test_each_entry_has_both_terms_a_definition_and_a_chapter_link_that_exists(entry):
    assert entry.english and not CJK.search(entry.english), "an English term line"
    assert entry.chinese and CJK.search(entry.chinese), f"{entry.english}: a Chinese term line"
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", entry.definition) if s.strip()]
    assert len(sentences) >= 2, f"{entry.english}: a definition of two or three sentences"
    chapter_links = [link for link in entry.links if link.startswith("chapters/")]
    assert chapter_links, f"{entry.english}: link the chapter page where the book builds or measures it"
    for link in chapter_links:
        assert any((ROOT / f"{link}{ext}").exists() for ext in (".md", ".ipynb")), f"{entry.english}: {link} is missing"


def test_no_two_entries_share_a_term():
    seen: dict[str, str] = {}
    for entry in ENTRIES:
        for term in (entry.english, entry.chinese):
            key = term.lower()
            assert key not in seen, f"{term!r} is used by both {seen[key]!r} and {entry.english!r}"
            seen[key] = entry.english


def test_every_chapter_links_its_key_terms():
    """`python tools/glossary.py check` passes: each chapter index lists its entries, first uses are linked."""
    result = subprocess.run([sys.executable, "tools/glossary.py", "check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for chapter in sorted(p for p in (ROOT / "chapters").iterdir() if p.is_dir()):
        mine = [e.english for e in ENTRIES if chapter.name in e.chapters]
        index = (chapter / "index.md").read_text()
        assert mine, f"{chapter.name}: no glossary entry links this chapter"
        missing = [t for t in mine if f"{{term}}`{t}`" not in index]
        assert not missing, f"{chapter.name}/index.md does not link {missing}"


def test_every_term_link_in_a_chapter_names_an_entry():
    names = {t.lower() for e in ENTRIES for t in (e.english, e.chinese)}
    unknown = []
    for path in sorted((ROOT / "chapters").rglob("*.ipynb")):
        text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
        for role in re.findall(r"\{term\}`([^`]*)`", text):
            target = re.search(r"<([^>]+)>$", role)
            if (target.group(1) if target else role).lower() not in names:
                unknown.append(f"{path.relative_to(ROOT)}: {role}")
    assert not unknown, unknown
