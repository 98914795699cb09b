"""`compactcl` entry point: wires one module per subcommand; each has add_parser() and run()."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import CompactCLError

# Each module defines add_parser(subparsers) and run(args) -> int.
COMMANDS = ["run", "list", "quantize", "export", "prune", "sensitivity", "report", "compare", "predict"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compactcl", description="Class-incremental learning that stays small.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"compactcl.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"compactcl.cli.{name}":
                continue  # subcommand not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CompactCLError as e:
        print(f"compactcl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed tasks are saved, continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
