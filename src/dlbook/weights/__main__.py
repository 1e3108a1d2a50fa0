"""``python -m dlbook.weights train-weights NAME|all`` re-creates shipped weights; ``check`` verifies them."""

from __future__ import annotations

import argparse
import sys

from dlbook.pretrain.shipped import train_weights
from dlbook.weights import RECIPES, file_sha256, manifest, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlbook.weights", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train-weights", help="train a shipped model from scratch and write its file")
    train.add_argument("name", choices=[*RECIPES, "all"])
    sub.add_parser("check", help="compare every shipped file with its SHA-256")
    args = parser.parse_args(argv)
    if args.command == "check":
        bad = [n for n, e in manifest().items() if not path(n).is_file() or file_sha256(path(n)) != e["sha256"]]
        print("\n".join(f"{n}: {'MISMATCH' if n in bad else 'ok'}" for n in manifest()))
        return 1 if bad or set(manifest()) != set(RECIPES) else 0
    for name in RECIPES if args.name == "all" else [args.name]:
        print(f"{name}: training {RECIPES[name]} ...", file=sys.stderr, flush=True)
        metrics = train_weights(name)
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in metrics.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
