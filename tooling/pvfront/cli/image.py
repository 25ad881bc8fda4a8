"""pvfront image: a bootable Debian disk image of each target, the real guests' disk."""

from __future__ import annotations

import argparse

from pvfront import commands
from pvfront.cli.common import add_target_options
from pvfront.workspace import Workspace


def _run(args: argparse.Namespace) -> int:
    return commands.images(Workspace.discover(), args.target, args.all_targets)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "image",
        help="make the Debian guest image of one or all targets",
        description="mmdebstrap the target's suite with its kernel, systemd, udev, dkms and "
        "GRUB into a raw disk (root and swap partitions), cached by content.",
    )
    add_target_options(parser)
    parser.set_defaults(handler=_run)
