"""Dispatch `python -m evaluation.benchmark <subcommand> [args]` to its module."""

from __future__ import annotations

import importlib
import sys

from evaluation.benchmark import SUBCOMMANDS


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        lines = [f"  {name:<8} {text}" for name, text in SUBCOMMANDS.items()]
        print("usage: python -m evaluation.benchmark {" + ",".join(SUBCOMMANDS) + "} [options]\n")
        print("\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown subcommand {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(f"evaluation.benchmark.{argv[0].replace('-', '_')}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
