"""`python -m bench NAME [options]`: run one benchmark (`python -m bench NAME --help` for its options)."""

import importlib
import sys
from pathlib import Path

NAMES = sorted(p.stem for p in Path(__file__).parent.glob("*.py") if not p.stem.startswith("_") and p.stem != "harness")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in NAMES:
        print(f"usage: python -m bench NAME [options]   (NAME: {', '.join(NAMES)})", file=sys.stderr)
        return 2
    doc = importlib.import_module(f"bench.{argv[0]}").main(argv[1:])
    missed = [g["goal"] for g in doc["goals"] if not g["passed"]]
    return 1 if missed and doc["check"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
