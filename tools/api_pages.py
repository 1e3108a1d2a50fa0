"""Write the "dlbook API" pages of the book from the package itself.

    python tools/api_pages.py          # (re)write book/api/*.md, their _toc.yml entries, the API-link cells
    python tools/api_pages.py check    # exit 1 if a page or a link cell is missing or stale

Each public module of dlbook (a module with ``__all__``) gets one page,
``book/api/<module>.md``, whose body is Sphinx's ``automodule``: the signatures and
docstrings are read from the code when the site is built, so the reference cannot
drift from it. The page opens with a link back to the chapter that builds the
concept. In the other direction, every chapter notebook gets a Markdown cell right
after its setup cell that links each dlbook name the notebook imports to its entry
in the reference. ``tests/test_api_reference.py`` checks that every module has its page,
every public name has a docstring, and every page is what this script writes.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "book" / "api"

# module -> (one line on what it is, the chapter page that builds or first uses it)
MODULES: dict[str, tuple[str, str]] = {
    "device": ("Device choice, seeding, threads and mixed precision.", "chapters/00_preliminaries/01_deep_networks"),
    "data": ("Offline datasets, tokenizers, loaders and checksummed optional downloads.",
             "chapters/00_preliminaries/01_deep_networks"),
    "plot": ("The shared figures.", "chapters/00_preliminaries/01_deep_networks"),
    "activations": ("Activation functions and their derivatives.", "chapters/00_preliminaries/02_activations"),
    "losses": ("Losses from scratch, in their numerically stable forms.", "chapters/00_preliminaries/03_losses"),
    "mlp": ("The multilayer perceptron and a manual forward pass.", "chapters/00_preliminaries/01_deep_networks"),
    "init": ("Initialization scales (LeCun, Xavier, He, PyTorch's default) and a network's depth profile.",
             "chapters/00_preliminaries/04_initialization"),
    "backprop": ("Backpropagation written out, and finite-difference gradient checks.",
                 "chapters/00_preliminaries/05_backprop"),
    "train": ("fit(): the one training loop, evaluation and checkpoints.", "chapters/01_sgd/01_minibatch_sgd"),
    "optim": ("Optimizers and schedules from scratch, equal to torch.optim.", "chapters/01_sgd/03_optimizers"),
    "distributed": ("Data-parallel training with torchrun and DDP.", "chapters/01_sgd/04_data_parallel"),
    "norm": ("Batch, layer, instance, group, RMS and weight normalization.",
             "chapters/02_normalization/01_what_normalization_does"),
    "models": ("Small models with a pluggable normalization layer.", "chapters/02_normalization/02_batchnorm_mlp_cnn"),
    "transformer": ("Attention, the Transformer block and a GPT in one file.", "chapters/03_transformers/02_attention"),
    "pretrain": ("Self-supervised objectives, an MLM encoder and transfer.", "chapters/04_pretraining/index"),
    "finetune": ("LoRA, adapters, prefix and prompt tuning, preference losses.", "chapters/04_pretraining/index"),
    "weights": ("Trained weights that ship with dlbook, for models a notebook cannot train within its budget.",
                "chapters/04_pretraining/01_transfer"),
    "regularization": ("Dropout, penalties, early stopping, smoothing, mixup, calibration.",
                       "chapters/05_regularization/index"),
    "compression": ("Size and latency, pruning, distillation and quantization.", "chapters/06_compression/index"),
    "interpret": ("Attributions, probes and adversarial examples.", "chapters/07_interpretability/index"),
    "privacy": ("Per-sample gradients, DP-SGD, accounting, attacks and secure aggregation.",
                "chapters/08_privacy/index"),
    "extras": ("Reference libraries a chapter installs only when missing.", "book/setup"),
    "grading": ("Graded exercises: the checker a learner calls and the tests' helpers.", "exercises/index"),
    "grading.hints": ("Seeded test data and hints that name a learner's likely mistake.", "exercises/index"),
    "grading.probes": ("Trusted operations (gradients, training steps) that exercise tests run on learner code.",
                       "book/instructors"),
}


def public_modules() -> list[str]:
    """Every dlbook module (under its short name) that declares ``__all__``, sorted."""
    import dlbook

    found = []
    for info in pkgutil.walk_packages(dlbook.__path__, "dlbook."):
        short = info.name.removeprefix("dlbook.")
        if short.startswith("exercises") or any(part.startswith("_") for part in short.split(".")):
            continue  # exercise tests are not API; private modules neither
        if short.startswith("grading.") and short not in ("grading.hints", "grading.probes"):
            continue  # the grader's machinery; its public face is dlbook.grading (and what set authors use)
        module = importlib.import_module(info.name)
        if hasattr(module, "__all__"):
            found.append(short)
    return sorted(found)


def _label(doc: str) -> str:
    """'chapters/02_normalization/01_what...' -> 'chapter 2', 'book/setup' -> 'Setup'."""
    parts = doc.split("/")
    if parts[0] == "chapters":
        return f"chapter {int(parts[1][:2])}"
    return parts[0].capitalize() if parts[0] == "exercises" else parts[-1].replace("_", " ").capitalize()


def page(short: str) -> str:
    summary, chapter = MODULES[short]
    return (
        f"# `dlbook.{short}`\n\n"
        f"{summary} Where the book teaches it: [{_label(chapter)}](../../{chapter}).\n\n"
        "<!-- Generated by tools/api_pages.py; the body is read from the docstrings at build time. -->\n\n"
        "```{eval-rst}\n"
        f".. automodule:: dlbook.{short}\n"
        "   :members:\n"
        "   :imported-members:\n"
        "```\n"
    )


def index_page(modules: list[str]) -> str:
    rows = "\n".join(f"| {{doc}}`dlbook.{m} <{m.replace('.', '_')}>` | {MODULES[m][0]} |" for m in modules)
    return (
        "# The dlbook API\n\n"
        "Every public function and class of the `dlbook` package, one page per module, generated from the\n"
        "docstrings when the site is built (so it always matches the code). Each page links back to the chapter\n"
        "that builds the concept, and each notebook links here for the names it uses. In a notebook, `help(fit)`\n"
        "or `fit?` shows the same text.\n\n"
        "| module | what it holds |\n|---|---|\n" + rows + "\n"
    )


def expected_pages() -> dict[Path, str]:
    modules = public_modules()
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        raise SystemExit(f"tools/api_pages.py: add {unknown} to MODULES (a summary and the chapter that builds it)")
    pages = {API / f"{m.replace('.', '_')}.md": page(m) for m in modules}
    pages[API / "index.md"] = index_page(modules)
    return pages


# ----------------------------------------------------------------------------- links from the chapters

LINK_MARK = "<!-- dlbook API links: written by tools/api_pages.py -->"


# Imported by every setup cell: linking them in every notebook would say nothing.
SETUP_NAMES = {("device", "info"), ("device", "seed_everything"), ("device", "set_threads"), ("extras", "ensure")}


def imported_names(nb) -> list[tuple[str, str]]:
    """(module, name) for every public dlbook name a notebook imports, in order of first import."""
    found: list[tuple[str, str]] = []  # name "" stands for the module itself
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        # IPython magics (the setup cell's %pip) are not Python: keep the indentation, drop the command.
        source = "\n".join(line[:len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("%", "!"))
                           else line for line in cell.source.splitlines())
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "dlbook":  # from dlbook import norm
                for alias in node.names:
                    if alias.name in MODULES and (alias.name, "") not in found:
                        found.append((alias.name, ""))
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dlbook."):
                short = node.module.removeprefix("dlbook.")
                if short not in MODULES:
                    continue
                public = set(getattr(importlib.import_module(node.module), "__all__", ()))
                for alias in node.names:
                    if alias.name in public and (short, alias.name) not in {*found, *SETUP_NAMES}:
                        found.append((short, alias.name))
    return found


def link_cell_source(names: list[tuple[str, str]]) -> str:
    links = ", ".join(f"{{py:mod}}`dlbook.{module}`" if not name else f"{{py:obj}}`{name} <dlbook.{module}.{name}>`"
                      for module, name in names)
    return (f"{LINK_MARK}\n**dlbook in this notebook:** {links}. Each name links to its entry in the "
            "[dlbook API](../../book/api/index): what it takes, returns and raises.")


def chapter_notebooks() -> list[Path]:
    return sorted((ROOT / "chapters").glob("*/*.ipynb"))


def sync_links(path: Path, write: bool) -> bool:
    """Put the link cell right after the setup cell; True if the notebook was (or would be) changed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    names = imported_names(nb)
    at = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith(LINK_MARK)]
    setup = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    if not names:
        changed = bool(at)
        for i in reversed(at):
            del nb.cells[i]
    else:
        source = link_cell_source(names)
        changed = at != [setup + 1] or nb.cells[setup + 1].source != source
        if changed:
            for i in reversed(at):
                del nb.cells[i]
            setup = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
            cell = nbformat.v4.new_markdown_cell(source)
            cell.id = "dlbook-api-links"
            nb.cells.insert(setup + 1, cell)
    if changed and write:
        nbformat.write(nb, path)
    return changed


TOC = ROOT / "_toc.yml"


def toc_with_api_sections(toc: str, pages: dict[Path, str]) -> str:
    """_toc.yml with the sections under book/api/index listing exactly the module pages, sorted."""
    lines = toc.split("\n")
    head = lines.index("      - file: book/api/index")
    end = head + 1
    while end < len(lines) and (lines[end] == "        sections:" or lines[end].startswith("          - file: book/api/")):
        end += 1
    stems = sorted(p.stem for p in pages if p.stem != "index")
    block = ["      - file: book/api/index", "        sections:"] + [f"          - file: book/api/{s}" for s in stems]
    return "\n".join(lines[:head] + block + lines[end:])


def main(argv: list[str]) -> int:
    pages = expected_pages()
    toc = TOC.read_text()
    new_toc = toc_with_api_sections(toc, pages)
    if argv == ["check"]:
        stale = [str(p.relative_to(ROOT)) for p, text in pages.items() if not p.exists() or p.read_text() != text]
        extra = [str(p.relative_to(ROOT)) for p in API.glob("*.md") if p not in pages]
        links = [str(p.relative_to(ROOT)) for p in chapter_notebooks() if sync_links(p, write=False)]
        if new_toc != toc:
            stale.append("_toc.yml (the API sections)")
        if stale or extra or links:
            print(f"stale or missing pages: {stale}; not a module any more: {extra}; notebooks whose API-link cell "
                  f"is stale: {links}. Run python tools/api_pages.py")
            return 1
        return 0
    API.mkdir(parents=True, exist_ok=True)
    for p in API.glob("*.md"):
        if p not in pages:
            p.unlink()
    for p, text in pages.items():
        p.write_text(text)
    TOC.write_text(new_toc)
    print(f"wrote {len(pages)} pages in {API.relative_to(ROOT)} and listed them in _toc.yml")
    for p in chapter_notebooks():
        if sync_links(p, write=True):
            print("updated the API links of", p.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
