"""The `pvfront` command: a thin shell over the library, one module per subcommand group.

Each module in this package defines `register(subparsers)`, which adds its subcommand and sets
`handler` to a function taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse

from pvfront.cli import bench, boot, build, export, image, package, setup, symcheck, targets
from pvfront.errors import run_command

GROUPS = (setup, targets, build, image, boot, symcheck, package, bench, export)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="pvfront",
        description="Build, symbol-check, package and QEMU-test the pvfront virtio drivers.",
    )
    subparsers = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(subparsers)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command(lambda: args.handler(args))
