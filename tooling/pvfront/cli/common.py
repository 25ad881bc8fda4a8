"""Arguments shared by the subcommands."""

from __future__ import annotations

import argparse


def add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", "-t", metavar="ID", help="a target id (default: the default target)"
    )
    parser.add_argument("--all", action="store_true", dest="all_targets", help="every target")
