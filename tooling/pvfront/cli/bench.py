"""pvfront bench: pvfront against the in-tree and emulated devices, and the toolchain's speed."""

from __future__ import annotations

import argparse

from pvfront import bench
from pvfront.bench.plan import PARTS
from pvfront.workspace import Workspace


def _run(args: argparse.Namespace) -> int:
    return bench.bench_command(Workspace.discover(), args.quick, parts=args.only or PARTS)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure pvfront against the in-tree and emulated devices",
        description="Boot the default target under QEMU with pvf_blk/pvf_net, the in-tree "
        "virtio_blk/virtio_net and emulated AHCI, IDE and e1000; measure "
        "throughput (untraced boots) and notifications, device exits and "
        "interrupts per request or packet (traced boots); time the symbol check "
        "against depmod, the boot and `invoke setup build`. Prints a table with "
        "met/short per goal and writes build/bench/bench-<timestamp>.json, "
        "latest.json and a chart. Exit 0 when every measurement ran, 1 when one "
        "failed.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one boot per setup, shorter runs, no IDE (about 5 minutes)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        metavar="PART",
        help=f"measure only this part ({', '.join(PARTS)}); may be given more than once",
    )
    parser.set_defaults(handler=_run)
