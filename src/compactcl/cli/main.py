"""`compactcl` entry point: wires one module per subcommand; each has add_parser() and run()."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import CompactCLError
from .common import CLIParser, DefaultsHelpFormatter

# Each module defines add_parser(subparsers) and run(args) -> int.
COMMANDS = ["run", "list", "quantize", "export", "prune", "sensitivity", "report", "compare", "predict"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compactcl", description="Class-incremental learning that stays small.")
    parser.formatter_class = DefaultsHelpFormatter
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CLIParser)
    for name in COMMANDS:
        importlib.import_module(f"compactcl.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CompactCLError as e:
        print(f"compactcl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user gave: a folder where a file goes, no permission, no space, ...
        where = f" {e.filename2 or e.filename}" if (e.filename2 or e.filename) else ""
        print(f"compactcl {args.command}: error: cannot use{where}: {e.strerror or e}; check the paths given "
              "(--out names a file to write, in a folder that exists)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed tasks are saved, continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
