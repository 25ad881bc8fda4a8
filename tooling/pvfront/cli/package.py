"""pvfront package: gate on the symbol checks, then a .deb per target, the source package and
pvfront-dkms, and an apt repository of them."""

from __future__ import annotations

import argparse

from pvfront import commands
from pvfront.cli.common import add_target_options
from pvfront.package import Signing
from pvfront.workspace import Workspace


def _run(args: argparse.Namespace) -> int:
    return commands.package(
        Workspace.discover(),
        args.target,
        args.all_targets,
        signing=Signing.from_options(args.sign_key, args.sign_cert),
        exclusive=args.exclusive,
        repo_key=args.repo_key,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("package", help="symbol-check, then package per target")
    add_target_options(parser)
    parser.add_argument("--sign-key", metavar="PEM", help="private key for the kbuild sign-file")
    parser.add_argument("--sign-cert", metavar="PEM", help="the key's X.509 certificate")
    parser.add_argument(
        "--exclusive",
        action="store_true",
        help="ship a modprobe.d that keeps the in-tree virtio_pci off all devices",
    )
    parser.add_argument(
        "--repo-key",
        metavar="KEY",
        help="sign the apt repository with this key of your GnuPG keyring (gpg --local-user)",
    )
    parser.set_defaults(handler=_run)
