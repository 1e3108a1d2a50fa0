"""The command line: ``python -m dlbook.grading`` (installed as ``dlbook-grade``).

    python -m dlbook.grading generate [--check] [--root DIR]
    python -m dlbook.grading grade exercises/00_preliminaries.ipynb submissions/*.ipynb --out grades/
                                   [--extra-tests PATH_OR_MODULE] [--timeout S] [--cpu S] [--memory-mb MB] [--jobs N]
                                   [--isolation auto|rlimits|require]
    python -m dlbook.grading gradescope exercises/00_preliminaries.ipynb --out autograder.zip
                                   [--extra-tests PATH] [--timeout S] [--memory-mb MB] [--isolation MODE]

See book/instructors.md for what each writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _find_root(start: Path) -> Path:
    """The repository root: the nearest folder above ``start`` with ``exercises/_source``."""
    for folder in [start, *start.parents]:
        if (folder / "exercises" / "_source").is_dir():
            return folder
    raise SystemExit(f"no exercises/_source folder in {start} or above: run this from the repository, or pass --root")


def _generate(args) -> int:
    from dlbook.grading.student import generate_all

    root = Path(args.root).resolve() if args.root else _find_root(Path.cwd().resolve())
    changed = generate_all(root, check=args.check)
    for path in changed:
        print(("out of date: " if args.check else "wrote ") + str(path.relative_to(root)))
    if args.check and changed:
        print("run `python -m dlbook.grading generate` and commit the student versions", file=sys.stderr)
        return 1
    if not changed:
        print("every student version is up to date")
    return 0


def _grade(args) -> int:
    from dlbook.grading.batch import grade_class

    summary = grade_class(
        Path(args.exercise), [Path(p) for p in args.submissions], Path(args.out),
        extra_tests=args.extra_tests, timeout=args.timeout, cpu_seconds=args.cpu,
        memory_mb=args.memory_mb, jobs=args.jobs, isolation=args.isolation,
    )
    print(summary)
    return 0


def _gradescope(args) -> int:
    from dlbook.grading.gradescope import build_autograder

    path = build_autograder(args.set, Path(args.out), extra_tests=args.extra_tests, timeout=args.timeout,
                            memory_mb=args.memory_mb, isolation=args.isolation)
    print(f"wrote {path}: upload it as the assignment's autograder (Gradescope: Configure Autograder, zip file)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlbook-grade", description="dlbook's graded exercises.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write every student version exercises/NN_slug.ipynb from its source")
    gen.add_argument("--check", action="store_true", help="write nothing; exit 1 if a student version is out of date")
    gen.add_argument("--root", help="the repository root (default: found from the current folder)")
    gen.set_defaults(run=_generate)

    grade = sub.add_parser("grade", help="grade a class's submissions of one exercise set")
    grade.add_argument("exercise", help="the set's student notebook, exercises/NN_slug.ipynb (its name gives the set)")
    grade.add_argument("submissions", nargs="+", help="the submitted notebooks; a file's stem is the student's name")
    grade.add_argument("--out", required=True, help="folder for <student>.json and grades.csv")
    grade.add_argument("--extra-tests", action="append", default=[], metavar="PATH_OR_MODULE",
                       help="hidden tests: a .py file, a folder of .py files, or a module name (repeatable)")
    grade.add_argument("--timeout", type=float, default=120, help="wall-clock seconds per submission (default 120)")
    grade.add_argument("--cpu", type=float, default=None,
                       help="CPU seconds per submission (RLIMIT_CPU; default: the wall-clock timeout + 10)")
    grade.add_argument("--memory-mb", type=int, default=8192,
                       help="address-space limit per submission in MiB (RLIMIT_AS; default 8192, 0 = none)")
    grade.add_argument("--jobs", type=int, default=1, help="submissions graded at the same time (default 1)")
    grade.add_argument("--isolation", choices=["auto", "rlimits", "require"], default="auto",
                       help="auto: a sandbox of Linux namespaces where the system allows one, else resource "
                            "limits alone; rlimits: resource limits alone; require: never run a submission "
                            "without the sandbox (default auto)")
    grade.set_defaults(run=_grade)

    scope = sub.add_parser("gradescope", help="write a Gradescope autograder (setup.sh, run_autograder) for a set")
    scope.add_argument("set", help="the set: exercises/NN_slug.ipynb or NN_slug")
    scope.add_argument("--out", required=True, help="the zip to write, e.g. autograder.zip")
    scope.add_argument("--extra-tests", action="append", default=[], metavar="PATH",
                       help="hidden tests: a .py file or a folder of them (repeatable); bundled in the zip")
    scope.add_argument("--timeout", type=float, default=120, help="wall-clock seconds per submission (default 120)")
    scope.add_argument("--memory-mb", type=int, default=8192, help="memory per submission in MiB (default 8192)")
    scope.add_argument("--isolation", choices=["auto", "rlimits", "require"], default="auto",
                       help="as for grade (default auto: the sandbox where the image allows one)")
    scope.set_defaults(run=_gradescope)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as err:
        print(f"dlbook-grade: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
