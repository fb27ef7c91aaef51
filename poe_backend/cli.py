"""``poe-backend`` command line. Each subcommand lives in its own module, which exposes
``register(subparsers)`` adding its parser with ``func=`` set; imports stay lazy so that
``poe-backend toy`` never loads diffusers."""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules that define subcommands, in help order.
COMMAND_MODULES = (
    "poe_backend.toy.cli",
    "poe_backend.tasks.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poe-backend", description="Product-of-Experts visual generation backend")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    return int(arguments.func(arguments) or 0)


if __name__ == "__main__":
    sys.exit(main())
