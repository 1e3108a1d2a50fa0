"""The chapter's data: a downstream task of standard-library docstrings and an unlabelled corpus.

``docstring_task`` labels each docstring (``module_docstrings``) by the family of its module
(``TASK_GROUPS``) and splits by docstring *before* pretraining; ``pretraining_text`` is the
unlabelled pretraining corpus, which holds none of the validation or test docstrings.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import dataclass

import torch

from dlbook.data import pydoc_text
from dlbook.pretrain.tokenizer import PretrainTokenizer

__all__ = [
    "DocTask", "docstring_task", "pretraining_text", "module_docstrings", "TASK_GROUPS",
]


TASK_GROUPS = {
    "text": ("re", "string", "textwrap", "difflib", "html", "html.parser", "codecs", "csv", "unicodedata",
             "shlex", "tokenize"),
    "containers": ("collections", "heapq", "bisect", "queue", "enum", "dataclasses", "array", "weakref", "copy",
                   "contextlib"),
    "files": ("os", "pathlib", "shutil", "glob", "tempfile", "zipfile", "tarfile", "io", "gzip", "fnmatch"),
    "numbers": ("random", "statistics", "math", "decimal", "fractions", "cmath", "numbers", "operator"),
}
"""The default module families of the downstream task (a docstring's label is its module's family)."""


_EXTRA_MODULES = ("abc", "argparse", "ast", "asyncio", "base64", "calendar", "datetime", "email.message",
                  "functools", "hashlib", "hmac", "http.client", "inspect", "ipaddress", "itertools", "json",
                  "logging", "pickle", "pprint", "socket", "sqlite3", "string.templatelib", "struct",
                  "subprocess", "threading", "time", "traceback", "typing", "unittest", "urllib.parse",
                  "urllib.request", "uuid", "warnings", "xml.dom.minidom", "zlib")
"""Modules whose docstrings join the unlabelled pretraining text (none is in the downstream task)."""


def _own_doc(obj) -> bool:
    """False for a data value (a list, an enum member) whose docstring is only its type's."""
    return isinstance(obj, type) or getattr(obj, "__doc__", None) != getattr(type(obj), "__doc__", None)


def _added_from_elsewhere(member, name: str) -> bool:
    """True for a function another package attached to a class later (transformers adds ``warning_once``
    and friends to ``logging.Logger`` when it is imported): its docstring depends on what else was imported."""
    module = getattr(member, "__module__", None)
    if not inspect.isroutine(member) or not module or module in (name, f"_{name}"):
        return False
    top = module.split(".")[0]
    return top not in sys.stdlib_module_names and top.lstrip("_") not in sys.stdlib_module_names


def module_docstrings(name: str, min_length: int = 100, methods: bool = True, data_values: bool = True) -> list[str]:
    """Distinct docstrings (``inspect.getdoc``) of a module's own functions and classes and, with
    ``methods``, of the classes' methods, of at least ``min_length`` characters, in a stable order.

    ``data_values=False`` leaves out values (a list, an enum member) whose docstring is only their
    type's, and methods that another package attached to a class after the fact: both come and go with
    what else was imported (pytest, Jupyter's kernel and transformers add some), so without them the
    result is the same in any process."""
    module = importlib.import_module(name)
    found: dict[str, None] = {}
    keep = (lambda v: True) if data_values else _own_doc
    for attr in sorted(dir(module)):
        obj = getattr(module, attr, None)
        # submodules are skipped: which of them are attributes depends on what else was imported
        if obj is None or inspect.ismodule(obj) or getattr(obj, "__module__", None) not in (name, f"_{name}", None):
            continue
        if not keep(obj):
            continue
        members = [obj] + ([v for _, v in sorted(vars(obj).items()) if not isinstance(v, (str, int, float))
                            and keep(v) and (data_values or not _added_from_elsewhere(v, name))]
                           if methods and isinstance(obj, type) else [])
        for member in members:
            doc = inspect.getdoc(member)
            if doc and len(doc) >= min_length:
                found.setdefault(doc)
    return list(found)


@dataclass(frozen=True)
class DocTask:
    """The downstream task, split by docstring: lists of texts and int labels per split.

    Attributes:
        classes: label names, index = label id.
        train: ``(texts, labels)`` of the training split.
        val: the same for the validation split.
        test: the same for the test split; no docstring text is in two splits.
    """

    classes: tuple[str, ...]
    train: tuple[list[str], list[int]]
    val: tuple[list[str], list[int]]
    test: tuple[list[str], list[int]]

    def tensors(self, tokenizer: PretrainTokenizer, max_len: int, split: str = "train"):
        """``(X (N, max_len) ids with [CLS] first, y (N,) labels)`` of one split."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        texts, labels = getattr(self, split)
        return tokenizer.encode_batch(texts, max_len), torch.tensor(labels, dtype=torch.long)


def docstring_task(groups: dict | None = None, val_frac: float = 0.15, test_frac: float = 0.35, seed: int = 0,
                   min_length: int = 100) -> DocTask:
    """Which module family a standard-library docstring comes from, split before any pretraining.

    Each distinct docstring text appears once (a text found in two modules is dropped, its
    label being ambiguous); the texts are shuffled with ``seed`` and split per class
    (stratified) into train / val / test.

    Args:
        groups: ``{class name: module names}``; default ``TASK_GROUPS`` (4 families of 39 modules).
            Docstrings come from ``module_docstrings`` (functions, classes and methods).
        val_frac, test_frac: fractions of each class for validation and test.
    """
    groups = TASK_GROUPS if groups is None else groups
    if not isinstance(groups, dict) or not groups:
        raise TypeError(f"groups must be a non-empty dict {{class name: module names}}, got {groups!r}")
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"val_frac and test_frac must be in (0, 1) with a sum below 1, got {val_frac}, {test_frac}")
    classes = tuple(groups)
    owner: dict[str, set] = {}
    for label, name in enumerate(classes):
        for module in groups[name]:
            for doc in module_docstrings(module, min_length):
                owner.setdefault(doc, set()).add(label)
    g = torch.Generator().manual_seed(seed)
    splits = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for label in range(len(classes)):
        docs = sorted(d for d, o in owner.items() if o == {label})
        docs = [docs[i] for i in torch.randperm(len(docs), generator=g).tolist()]
        n_test, n_val = round(len(docs) * test_frac), round(len(docs) * val_frac)
        for split, part in (("test", docs[:n_test]), ("val", docs[n_test:n_test + n_val]),
                            ("train", docs[n_test + n_val:])):
            splits[split][0].extend(part)
            splits[split][1].extend([label] * len(part))
    for split in splits.values():  # interleave the classes in a seeded order
        order = torch.randperm(len(split[0]), generator=g).tolist()
        split[0][:], split[1][:] = [split[0][i] for i in order], [split[1][i] for i in order]
    return DocTask(classes, *(tuple(splits[s]) for s in ("train", "val", "test")))


def pretraining_text(task: DocTask, extra_modules=_EXTRA_MODULES, include_train: bool = True) -> str:
    """Unlabelled pretraining text: Python's reference prose, docstrings of other modules and
    (``include_train``) the task's training docstrings *without* their labels.

    Paragraphs that contain a validation or test docstring, or equal one, are removed, so the
    downstream evaluation never sees text the model was pretrained on. Deterministic.
    """
    held_out = set(task.val[0]) | set(task.test[0])
    extra = [d for m in extra_modules if _importable(m) for d in module_docstrings(m, 50, data_values=False)]
    parts = [p for p in pydoc_text().split("\n\n")] + extra + (list(task.train[0]) if include_train else [])
    kept = [p for p in parts if p not in held_out and not any(h in p for h in held_out if len(h) <= len(p))]
    return "\n\n".join(kept)


def _importable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except Exception:  # noqa: BLE001 - an optional module (e.g. sqlite3) may be missing
        return False
