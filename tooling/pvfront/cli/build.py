"""pvfront build: build kmod/ against each target's headers into build/<target>/."""

from __future__ import annotations

import argparse

from pvfront import commands
from pvfront.cli.common import add_target_options
from pvfront.workspace import Workspace


def _run(args: argparse.Namespace) -> int:
    results = commands.build(
        Workspace.discover(),
        args.target,
        args.all_targets,
        sparse=not args.no_sparse,
        test_hooks=args.test_hooks,
    )
    return commands.build_exit_code(results)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("build", help="build the modules for one or all targets")
    add_target_options(parser)
    parser.add_argument("--no-sparse", action="store_true", help="skip sparse (C=1)")
    parser.add_argument(
        "--test-hooks",
        action="store_true",
        help="with the QEMU tests' fault-injection parameters, into build/test-hooks/<target>/",
    )
    parser.set_defaults(handler=_run)
