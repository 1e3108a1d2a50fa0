"""Write the "dlbook API" pages of the book from the package itself.

    python tools/api_pages.py          # (re)write book/api/*.md, their _toc.yml entries, the API-link cells
    python tools/api_pages.py check    # exit 1 if a page or a link cell is missing or stale

Each public module of dlbook (a module with ``__all__``) gets one page,
``book/api/<module>.md`` (``privacy_dp_sgd.md`` for ``dlbook.privacy.dp_sgd``), whose body is
Sphinx's ``automodule``: the signatures and docstrings are read from the code when the site is
built, so the reference cannot drift from it. The page opens with a link back to the chapter
that builds the concept. A package whose names all live in its public modules (``dlbook.privacy``)
gets a page with its docstring and a table of those modules; each name is documented once, on
its module's page, and a notebook's link points there. In the other direction, every chapter notebook gets a Markdown cell right
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
    "pretrain.tokenizer": ("A tokenizer with the special tokens the objectives need.",
                           "chapters/04_pretraining/02_objectives"),
    "pretrain.corpus": ("The docstring task and the unlabelled pretraining corpus.",
                        "chapters/04_pretraining/01_transfer"),
    "pretrain.objectives": ("Masked-LM masking, span corruption and padding.", "chapters/04_pretraining/02_objectives"),
    "pretrain.representations": ("An MLM encoder, per-layer hidden states and pooling.",
                                 "chapters/04_pretraining/03_finetuning_choices"),
    "pretrain.classifier": ("A sequence classifier on a pretrained model, and its fine-tuning.",
                            "chapters/04_pretraining/01_transfer"),
    "pretrain.training": ("The pretraining loops of the three objectives.", "chapters/04_pretraining/02_objectives"),
    "pretrain.shipped": ("Re-creating the shipped weights, and re-running their first steps.",
                         "chapters/04_pretraining/01_transfer"),
    "pretrain.checkpoints": ("A fresh model per objective, and cached pretrained weights.",
                             "chapters/04_pretraining/01_transfer"),
    "finetune": ("LoRA, adapters, prefix and prompt tuning, preference losses.", "chapters/04_pretraining/index"),
    "finetune.trainable": ("Freezing a model and counting its trainable parameters.", "chapters/04_pretraining/06_lora"),
    "finetune.lora": ("LoRA: low-rank adaptation of linear layers, merged or not.", "chapters/04_pretraining/06_lora"),
    "finetune.adapters": ("Bottleneck adapters after attention and FFN.", "chapters/04_pretraining/07_peft_methods"),
    "finetune.prefix_tuning": ("Prefix tuning and prompt tuning.", "chapters/04_pretraining/07_peft_methods"),
    "finetune.preferences": ("Bradley-Terry and DPO losses, and sequence log-probabilities.",
                             "chapters/04_pretraining/09_rlhf_dpo"),
    "finetune.digit_tasks": ("The toy digit tasks the fine-tuning experiments adapt and measure.",
                             "chapters/04_pretraining/06_lora"),
    "weights": ("Trained weights that ship with dlbook, for models a notebook cannot train within its budget.",
                "chapters/04_pretraining/01_transfer"),
    "regularization": ("Dropout, penalties, early stopping, smoothing, mixup, calibration.",
                       "chapters/05_regularization/index"),
    "regularization.penalties": ("L1 and L2 penalties, soft thresholding and weight-decay groups.",
                                 "chapters/05_regularization/02_norm_penalties"),
    "regularization.dropout": ("Inverted dropout, as a function and a layer.", "chapters/05_regularization/04_dropout"),
    "regularization.early_stopping": ("Early stopping that keeps and restores the best weights.",
                                      "chapters/05_regularization/05_early_stopping_augmentation"),
    "regularization.augmentation": ("Shifts and rotations of small images, and loaders that map batches.",
                                    "chapters/05_regularization/05_early_stopping_augmentation"),
    "regularization.smoothing": ("Label smoothing.", "chapters/05_regularization/06_smoothing_mixup_calibration"),
    "regularization.mixup": ("Mixup.", "chapters/05_regularization/06_smoothing_mixup_calibration"),
    "regularization.calibration": ("Calibration error, reliability curves and MC-dropout uncertainty.",
                                   "chapters/05_regularization/06_smoothing_mixup_calibration"),
    "regularization.double_descent": ("Random ReLU features and ridge regression.",
                                      "chapters/05_regularization/07_double_descent"),
    "compression": ("Size and latency, pruning, distillation and quantization.", "chapters/06_compression/index"),
    "compression.size_and_latency": ("A model's size in bytes and its measured latency.",
                                     "chapters/06_compression/01_size_and_latency"),
    "compression.pruning": ("Magnitude pruning with masks, and removing whole neurons.",
                            "chapters/06_compression/02_pruning"),
    "compression.distillation": ("The distillation loss.", "chapters/06_compression/03_distillation"),
    "compression.quantization": ("Affine quantization: ranges, scales, zero points, fake quantization.",
                                 "chapters/06_compression/04_quantization"),
    "compression.quantized_linear": ("Quantized and int8 Linear layers, and swapping them into a model.",
                                     "chapters/06_compression/05_qat_and_binarization"),
    "interpret": ("Attributions, probes and adversarial examples.", "chapters/07_interpretability/index"),
    "interpret.gradient_attributions": ("Saliency, gradient x input, SmoothGrad and integrated gradients.",
                                        "chapters/07_interpretability/02_gradient_attributions"),
    "interpret.perturbation": ("Occlusion, permutation importance and deletion curves.",
                               "chapters/07_interpretability/03_perturbation_importance"),
    "interpret.comparison": ("Rank correlation of attribution maps.", "chapters/07_interpretability/04_sanity_checks"),
    "interpret.gpt_internals": ("Hidden states, attention weights and head outputs of a GPT.",
                                "chapters/07_interpretability/01_explaining_and_visualizing"),
    "interpret.probing": ("Linear probes on frozen features.", "chapters/07_interpretability/05_probing"),
    "interpret.adversarial": ("FGSM and PGD adversarial examples.", "chapters/07_interpretability/06_adversarial"),
    "privacy": ("Per-sample gradients, DP-SGD, accounting, attacks and secure aggregation.",
                "chapters/08_privacy/index"),
    "privacy.attacks": ("Membership inference, ROC curves and canary exposure.",
                        "chapters/08_privacy/01_what_a_model_leaks"),
    "privacy.mechanisms": ("The Laplace and Gaussian mechanisms.", "chapters/08_privacy/02_differential_privacy"),
    "privacy.dp_sgd": ("Per-example gradients, DP-SGD, the DPSGD optimizer and Poisson batches.",
                       "chapters/08_privacy/03_dp_sgd"),
    "privacy.accounting": ("The RDP accountant of the sampled Gaussian mechanism.", "chapters/08_privacy/04_accounting"),
    "privacy.paillier": ("A toy Paillier cryptosystem.", "chapters/08_privacy/05_secure_aggregation"),
    "privacy.secure_aggregation": ("Fixed-point encoding and pairwise masks for secure sums.",
                                   "chapters/08_privacy/05_secure_aggregation"),
    "privacy.federated": ("Federated averaging with secure aggregation in real processes.",
                          "chapters/08_privacy/05_secure_aggregation"),
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


def submodules(short: str) -> list[str]:
    """The public modules directly inside package ``short`` ("privacy" -> ["privacy.accounting", ...])."""
    order = list(MODULES)  # the order of MODULES: the chapter's order
    return sorted((m for m in public_modules() if m.rpartition(".")[0] == short),
                  key=lambda m: order.index(m) if m in order else len(order))


def is_split_package(short: str) -> bool:
    """A package whose every public name lives in (and is documented with) one of its public submodules."""
    module = importlib.import_module(f"dlbook.{short}")
    subs = submodules(short)
    if not hasattr(module, "__path__") or not subs:
        return False
    inside = {n for m in subs for n in importlib.import_module(f"dlbook.{m}").__all__}
    return set(module.__all__) <= inside


def home(short: str, name: str) -> str:
    """The module whose page documents ``name``: the submodule that defines it, for a split package."""
    if not is_split_package(short):
        return short
    return next(m for m in submodules(short) if name in importlib.import_module(f"dlbook.{m}").__all__)


def _label(doc: str) -> str:
    """'chapters/02_normalization/01_what...' -> 'chapter 2', 'book/setup' -> 'Setup'."""
    parts = doc.split("/")
    if parts[0] == "chapters":
        return f"chapter {int(parts[1][:2])}"
    return parts[0].capitalize() if parts[0] == "exercises" else parts[-1].replace("_", " ").capitalize()


def page(short: str) -> str:
    summary, chapter = MODULES[short]
    if is_split_package(short):  # the package's docstring, then a table of its modules, each with its page
        rows = "\n".join(f"| {{doc}}`dlbook.{m} <{m.replace('.', '_')}>` | {MODULES[m][0]} |" for m in submodules(short))
        return (
            f"# `dlbook.{short}`\n\n"
            f"{summary} Where the book teaches it: [{_label(chapter)}](../../{chapter}).\n\n"
            "<!-- Generated by tools/api_pages.py; the body is read from the docstrings at build time. -->\n\n"
            "```{eval-rst}\n"
            f".. automodule:: dlbook.{short}\n"
            "```\n\n"
            f"Every public name of these modules can also be imported from `dlbook.{short}` itself.\n\n"
            "| module | what it holds |\n|---|---|\n" + rows + "\n"
        )
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
                    if alias.name in public and (short, alias.name) not in SETUP_NAMES:
                        entry = (home(short, alias.name), alias.name)  # a split package's name: its module's page
                        if entry not in found:
                            found.append(entry)
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
