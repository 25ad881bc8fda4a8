"""pvfront boot: an interactive shell in a target's guest, with the built modules in it."""

from __future__ import annotations

import argparse

from pvfront import commands
from pvfront.workspace import Workspace


def _run(args: argparse.Namespace) -> int:
    return commands.boot(
        Workspace.discover(),
        args.target,
        load=args.modules,
        disks=args.blk,
        net=args.net,
        in_tree_modules=tuple(args.in_tree or ()),
        use_image=args.image,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "boot",
        help="boot a target under QEMU with a shell on this terminal",
        description="Boot the target's kernel with busybox and build/<target>/*.ko copied to "
        "/lib/modules/<release>/extra/. Ctrl-A x quits; `exit` powers off.",
    )
    parser.add_argument(
        "--target", "-t", metavar="ID", help="the target to boot (default: the default target)"
    )
    parser.add_argument(
        "--modules", action="store_true", help="load the built modules at boot (dependency order)"
    )
    parser.add_argument(
        "--blk", type=int, default=0, metavar="N", help="attach N blank 64 MiB virtio-blk disks"
    )
    parser.add_argument(
        "--net", action="store_true", help="attach a virtio-net NIC on user networking"
    )
    parser.add_argument(
        "--in-tree",
        action="append",
        metavar="MODULE",
        help="also copy this in-tree module and its dependencies (repeatable)",
    )
    parser.add_argument(
        "--image",
        action="store_true",
        help="boot the target's Debian image (made first; `pvfront image`) "
        "through its boot loader instead, on a throw-away overlay",
    )
    parser.set_defaults(handler=_run)
