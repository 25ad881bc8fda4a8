"""pvfront setup: check the host tools, installing what is missing."""

from __future__ import annotations

import argparse

from pvfront import commands


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "setup", help="check host tools; install the missing ones as root"
    )
    parser.add_argument("--check", action="store_true", help="only check; never install")
    parser.set_defaults(handler=lambda args: commands.setup(install=not args.check))
