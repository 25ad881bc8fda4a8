"""pvfront targets: list the kernel targets, fetch them into the cache."""

from __future__ import annotations

import argparse

from pvfront import commands
from pvfront.cli.common import add_target_options
from pvfront.workspace import Workspace


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("targets", help="list or fetch kernel targets")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every target, cached or not")
    listing.set_defaults(handler=lambda args: commands.targets_list(Workspace.discover()))
    fetch = actions.add_parser("fetch", help="download and extract target kernels")
    add_target_options(fetch)
    fetch.set_defaults(
        handler=lambda args: commands.targets_fetch(
            Workspace.discover(), args.target, args.all_targets
        )
    )
